"""The ``otel-json-exporter`` command: look at batch files without writing code.

::

    otel-json-exporter summarize DIR [--by operation|type|name] [--since T] [--until T] [--json]
    otel-json-exporter validate DIR
    otel-json-exporter cleanup DIR --older-than 30d [--dry-run]
    otel-json-exporter schema

Exit codes: 0 fine; 1 findings (an invalid batch file, a file that could not be
deleted); 2 usage error (bad arguments, DIR is not a directory). Only exact
``metrics_YYYYMMDD_HHMMSS_ffffff.json`` names are batch files; every other file
is left alone. Nothing printed ever quotes a record's values: reasons for a bad
file name the place and the rule broken. Text read from a file or a directory
(names, keys, paths) is shown with every character that prints as nothing, or
not as itself, escaped (:func:`~otel_json_exporter.pii.escape_controls`);
``--json`` has it exact. A closed pipe (``| head``) ends a command quietly with
exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from otel_json_exporter import _batchfiles
from otel_json_exporter._sketch import DEFAULT_RELATIVE_ACCURACY
from otel_json_exporter._summary import PERCENTILES, GroupStats, Summary, summarize
from otel_json_exporter.pii import DEFAULT_POLICY, escape_controls
from otel_json_exporter.records import MetricsBatch, format_timestamp
from otel_json_exporter.writer import delete_expired_batches

__all__ = ["main"]

PROG = "otel-json-exporter"
EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2

_DURATION = re.compile(r"^([0-9]+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# An ISO-8601 date and time, as datetime.fromisoformat reads one from Python 3.11 on.
# 3.10's reads only the extended format (2025-12-16T08:00:00) with 3 or 6 fractional
# digits and an offset +HH:MM: it refuses the basic format (20251216T080000Z, as
# `date +%Y%m%dT%H%M%SZ` writes it), RFC 3339's nanoseconds (Go, kubectl), .NET's seven
# digits, date's %z (+0200) and week dates. Parsed here, so that every version reads
# the same times the same way:
# - a date: 2025-12-16 or 20251216; a week date, 2025-W51-2 or 2025W512 (2025-W51 is
#   its Monday);
# - then, after T, t, a space or "_" (20251216_080000, as this package's file names
#   and `date +%Y%m%d_%H%M%S` write it), a time: HH, HH:MM, HHMM, HH:MM:SS or HHMMSS, with a
#   fraction of a second after "." or "," of any number of digits (cut to
#   microseconds, as 3.11 does);
# - then Z (or z), or an offset +HH, +HH:MM, +HHMM, +HH:MM:SS or +HHMMSS, the seconds
#   with a fraction if any.
# Dashes are used throughout the date or not at all, and colons throughout the time
# and throughout the offset, as 3.11 requires. A fraction of an hour or a minute
# (08.5, 08:30.5), which 3.11 reads as one of a second, is refused, as is an offset
# after a date alone (2025-12-16+02:00, which 3.11 reads as the time 02:00), any other
# separator (3.11 takes any character there: 2025-12-16-08:00) and an offset's minutes
# or seconds over 59 (3.11 reads +02:60 as +03:00).
_ISO_TIME = re.compile(
    r"(?P<year>[0-9]{4})"
    r"(?:(?P<dash>-)?(?P<month>[0-9]{2})(?(dash)-)(?P<day>[0-9]{2})"
    r"|(?P<week_dash>-)?W(?P<week>[0-9]{2})(?:(?(week_dash)-)(?P<weekday>[0-9]))?)"
    r"(?:[Tt _](?P<hour>[0-9]{2})"
    r"(?:(?P<colon>:)?(?P<minute>[0-9]{2})"
    r"(?:(?(colon):)(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]+))?)?)?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<offset_hours>[0-9]{2})"
    r"(?:(?P<offset_colon>:)?(?P<offset_minutes>[0-9]{2})"
    r"(?:(?(offset_colon):)(?P<offset_seconds>[0-9]{2})"
    r"(?:[.,](?P<offset_fraction>[0-9]+))?)?)?)?)?"
)
_MAX_NAME_WIDTH = 48
# One character of a name as the table shows it: an escape escape_controls wrote (or
# that the name held), which a cut must not split, or any other character.
_SHOWN_CHARACTER = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[tnr])|.", re.DOTALL)
_ACCURACY_PERCENT = f"{DEFAULT_RELATIVE_ACCURACY:.0%}"

_DESCRIPTION = """\
Look at the JSON batch files written by otel-json-exporter.

Only exact metrics_YYYYMMDD_HHMMSS_ffffff.json names are batch files; every
other file (metrics_latest.json, notes.txt, temporary files) is left alone.

exit codes: 0 fine, 1 findings (invalid batch files, a failed deletion),
2 usage error."""

_SUMMARIZE_HELP = f"""\
Per group of records: count, errors and error rate, p50 / p95 / p99 and maximum
duration, first and last timestamp; then totals. Files are read one at a time,
so memory does not grow with the number of records.

percentiles: each group keeps a log-bucketed histogram (the DDSketch scheme),
so p50 / p95 / p99 are within {_ACCURACY_PERCENT} of the exact value (the value at rank
floor(q * (n - 1)) of the sorted durations). Memory per group is one counter per
2%-wide band of durations seen: at most 1,260 for anything between 1 us and a
day. Counts, errors, maximum and timestamps are exact.

Invalid batch files are skipped with a warning on stderr; the summary of the
valid ones is still printed, and the exit code is then 1."""

_VALIDATE_HELP = """\
Check every batch file: valid JSON, the keys and types of the format, the
timestamp format (2025-12-16T08:00:00.000000+00:00), total_records equal to the
number of records, batch_id equal to the batch_timestamp's and to the file
name's. Prints one line per bad file, saying why (never a record's values),
and exits 1 if any file is bad."""

_CLEANUP_HELP = """\
Delete batch files whose batch_id (the time in the name, UTC) is older than
--older-than; the file's modification time plays no part. Only exact batch
file names are considered. If a file cannot be deleted, says which and how
many were deleted before it, and exits 1."""

_SCHEMA_HELP = """\
Print the JSON Schema (draft 2020-12) of a batch file, generated from the
pydantic models. JSON Schema cannot say that total_records equals the number
of records nor that batch_id is the batch_timestamp's: `validate` checks those."""


class _UsageError(Exception):
    """A bad argument found after parsing; exit code 2."""


def _directory(text: str) -> Path:
    path = Path(text)
    try:
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            raise argparse.ArgumentTypeError(f"{_shown(text)} {what}")
    except OSError as exc:  # a parent that cannot be searched (EACCES), a loop of links
        raise argparse.ArgumentTypeError(f"{_shown(text)}: {exc.strerror or exc}") from None
    return path


def _timestamp(text: str) -> datetime:
    """An ISO-8601 time (see _ISO_TIME); a trailing Z means UTC, and a time without
    offset is UTC."""
    try:
        moment = _parse_iso_time(text.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        return moment.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time (e.g. 2025-12-16, 2025-12-16T08:00:00, "
            "2025-12-16T08:00:00+02:00, 20251216T080000Z)"
        ) from None


def _parse_iso_time(text: str) -> datetime:
    """``text`` as _ISO_TIME reads it, naive if it has no offset; ValueError if it is
    none, or names no real date, time or offset."""
    match = _ISO_TIME.fullmatch(text)
    if match is None:
        raise ValueError(text)
    number = _numbers(match)
    if match["week"] is not None:
        day = date.fromisocalendar(number("year"), number("week"), number("weekday", 1))
    else:
        day = date(number("year"), number("month"), number("day"))
    tzinfo = None
    if match["utc"] is not None:
        tzinfo = timezone.utc
    elif match["sign"] is not None:
        minutes, seconds = number("offset_minutes"), number("offset_seconds")
        if minutes > 59 or seconds > 59:
            raise ValueError(text)
        offset = timedelta(
            hours=number("offset_hours"),
            minutes=minutes,
            seconds=seconds,
            microseconds=_microseconds(match["offset_fraction"]),
        )
        tzinfo = timezone(-offset if match["sign"] == "-" else offset)  # under 24 h
    return datetime(
        day.year,
        day.month,
        day.day,
        number("hour"),
        number("minute"),
        number("second"),
        _microseconds(match["fraction"]),
        tzinfo=tzinfo,
    )


def _numbers(match: re.Match[str]) -> Callable[..., int]:
    def number(group: str, default: int = 0) -> int:
        digits = match[group]
        return default if digits is None else int(digits)

    return number


def _microseconds(fraction: str | None) -> int:
    """A fraction of a second in microseconds: digits past the sixth are cut, as 3.11 does."""
    return int(f"{fraction[:6]:0<6}") if fraction else 0


def _age(text: str) -> timedelta:
    """A whole number and a unit: 90s, 90m, 12h, 30d, 4w."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: use a whole number and one of s, m, h, d, w "
            "(e.g. 30d, 12h, 90m)"
        )
    amount, unit = int(match.group(1)), match.group(2)
    if amount == 0:
        raise argparse.ArgumentTypeError("the age must be more than 0")
    try:
        age = timedelta(**{_UNITS[unit]: amount})
        datetime.now(timezone.utc) - age
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} reaches before the year 1") from None
    return age


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    window = "(ISO-8601; UTC unless it has an offset)"

    summarize_cmd = _add_command(
        commands,
        _summarize,
        "per-operation counts, error rates and duration percentiles",
        _SUMMARIZE_HELP,
    )
    summarize_cmd.add_argument(
        "--by",
        choices=("operation", "type", "name"),
        default="operation",
        help="group by operation type and name together (default), by type, or by name",
    )
    summarize_cmd.add_argument(
        "--since",
        type=_timestamp,
        metavar="TIME",
        help=f"only records with timestamp >= TIME {window}",
    )
    summarize_cmd.add_argument(
        "--until",
        type=_timestamp,
        metavar="TIME",
        help=f"only records with timestamp < TIME {window}",
    )
    summarize_cmd.add_argument(
        "--json", action="store_true", help="print one JSON document (stable keys) instead"
    )

    _add_command(commands, _validate, "check every batch file against the format", _VALIDATE_HELP)

    cleanup_cmd = _add_command(
        commands, _cleanup, "delete batch files older than an age", _CLEANUP_HELP
    )
    cleanup_cmd.add_argument(
        "--older-than",
        type=_age,
        required=True,
        metavar="AGE",
        help="a whole number and a unit: s (seconds), m (minutes), h (hours), d (days), "
        "w (weeks); e.g. 30d, 12h, 90m",
    )
    cleanup_cmd.add_argument(
        "--dry-run", action="store_true", help="list what would be deleted, delete nothing"
    )

    _add_command(
        commands, _schema, "print the JSON Schema of a batch file", _SCHEMA_HELP, directory=False
    )
    return parser


def _add_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    handler: Callable[[argparse.Namespace], int],
    summary: str,
    description: str,
    *,
    directory: bool = True,
) -> argparse.ArgumentParser:
    """A sub-command named after its handler (``_summarize`` -> ``summarize``)."""
    command = commands.add_parser(
        handler.__name__.lstrip("_"),
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if directory:
        command.add_argument(
            "directory", type=_directory, metavar="DIR", help="the directory the batch files are in"
        )
    command.set_defaults(handler=handler)
    return command


def _shown(path: str | os.PathLike[str]) -> str:
    """A path as printed: every character that shows nothing or not itself escaped (a
    directory other users named, a file name that is not UTF-8: \\udce9)."""
    return escape_controls(os.fspath(path))


def _files(count: int) -> str:
    return f"{count} batch file{'' if count == 1 else 's'}"


def _version() -> str:
    try:
        return metadata.version("otel-json-exporter")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (argparse exits 2 on bad usage)."""
    for stream in (sys.stdout, sys.stderr):
        # A path that is not UTF-8 (a directory named in Latin-1) holds lone
        # surrogates, which a strict stream refuses: they are shown escaped (\udce9).
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except _UsageError as exc:
        _tell(f"{PROG} {args.command}: error: {exc}")
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (| head): stop quietly.
        _drop_standard_output()
        return EXIT_FINDINGS
    except OSError as exc:
        if exc.filename is None:  # writing the output failed (a full disk, /dev/full): the
            # standard output's, since what goes to standard error never raises (_tell)
            _drop_standard_output()
            what = "cannot write to standard output"
        else:  # the directory itself cannot be listed
            what = _shown(exc.filename)
        _tell(f"{PROG} {args.command}: error: {what}: {exc.strerror}")
        return EXIT_FINDINGS
    return code


def _tell(message: str) -> None:
    """Print ``message`` on standard error; a failure to is not the command's (the
    report on standard output goes on, and the exit code says what was found)."""
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


def _drop_standard_output() -> None:
    """Send what is left of standard output nowhere, so that Python's flush at exit
    does not fail (and print a traceback) a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# -- summarize -------------------------------------------------------------------


def _summarize(args: argparse.Namespace) -> int:
    if args.since and args.until and args.since >= args.until:
        raise _UsageError("--since must be earlier than --until")

    def warn(bad: _batchfiles.InvalidBatchFile) -> None:
        _tell(f"{PROG}: warning: skipped {_shown(bad.path)}: {escape_controls(bad.reason)}")

    summary = summarize(
        args.directory, group_by=args.by, since=args.since, until=args.until, on_invalid=warn
    )
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(_render_table(summary))
    return EXIT_FINDINGS if summary.invalid_files else EXIT_OK


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _when(moment: datetime | None) -> str:
    # isoformat, not strftime: "%Y" leaves a year before 1000 unpadded ("999-01-02").
    return moment.replace(tzinfo=None).isoformat(" ", "milliseconds") if moment else "-"


def _clip(text: str | None) -> str:
    """A name for the table, masked already: every character that shows nothing or not
    itself escaped (a newline would forge a row, an escape sequence rewrite the
    terminal, a zero-width space make two names print alike), masked once more as
    shown, and cut with an ASCII "..." to fit, never inside an escape."""
    text = DEFAULT_POLICY.redact(escape_controls(text or ""))[0]
    if len(text) <= _MAX_NAME_WIDTH:
        return text
    cut = 0
    for character in _SHOWN_CHARACTER.finditer(text):
        if character.end() > _MAX_NAME_WIDTH - 3:
            break
        cut = character.end()
    return text[:cut] + "..."


def _percent(part: int, whole: int) -> str:
    """``part`` of ``whole`` in percent, one decimal, or as many more as it takes not to
    show a share that is there as 0.0, or one that is not all as 100.0."""
    percent = 100 * part / whole
    text = f"{percent:.1f}"
    # Bounded: beyond a float's precision more digits change nothing (whole > 10**16).
    for digits in range(2, _MAX_PERCENT_DIGITS + 1):
        if not ((part > 0 and float(text) == 0) or (part < whole and float(text) == 100)):
            break
        text = f"{percent:.{digits}f}"
    return text


_MAX_PERCENT_DIGITS = 17


def _stat_cells(stats: GroupStats) -> list[str]:
    sketch = stats.durations
    rate = _percent(stats.errors, stats.count) if stats.count else "-"
    cells = [str(stats.count), str(stats.errors), rate]
    cells += [_ms(sketch.quantile(p / 100)) for p in PERCENTILES]
    cells += [_ms(sketch.max if stats.count else None), _when(stats.first), _when(stats.last)]
    return cells


def _render_table(summary: Summary) -> str:
    """An aligned table: one row per group, then a totals row, then what was read."""
    keys = {"operation": ["type", "name"], "type": ["type"], "name": ["name"]}[summary.group_by]
    stat_headers = ["count", "errors", "error %"]
    stat_headers += [f"p{p} ms" for p in PERCENTILES] + ["max ms", "first (UTC)", "last (UTC)"]
    rows = []
    for (op_type, op_name), stats in summary.sorted_groups():
        labels = {"type": _clip(op_type), "name": _clip(op_name)}
        rows.append([labels[key] for key in keys] + _stat_cells(stats))
    total_row = ["TOTAL"] + [""] * (len(keys) - 1) + _stat_cells(summary.totals())
    headers = keys + stat_headers
    widths = [max(len(row[i]) for row in [headers, *rows, total_row]) for i in range(len(headers))]
    # Labels and timestamps read left to right; numbers line up on the right.
    numeric = range(len(keys), len(keys) + len(stat_headers) - 2)

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers)]
    out += [line(row) for row in rows] if rows else ["(no records)"]
    out += ["-" * len(line(headers)), line(total_row), ""]
    out.append(_footer(summary))
    return "\n".join(out)


def _footer(summary: Summary) -> str:
    read = f"{_files(summary.files_read)} read"
    if summary.invalid_files:
        read += f", {len(summary.invalid_files)} invalid skipped (see warnings)"
    window = ""
    if summary.since or summary.until:
        start = format_timestamp(summary.since) if summary.since else "the start"
        end = format_timestamp(summary.until) if summary.until else "the end"
        window = f"; records from {start} until {end}"
    accuracy = f"; percentiles within {_ACCURACY_PERCENT} (log-bucketed histogram)"
    return read + window + accuracy


# -- validate --------------------------------------------------------------------


def _validate(args: argparse.Namespace) -> int:
    valid = invalid = records = 0
    for batch in _batchfiles.read_all(args.directory):
        if isinstance(batch, _batchfiles.InvalidBatchFile):
            print(f"{_shown(batch.path)}: {escape_controls(batch.reason)}")
            invalid += 1
            continue
        valid += 1
        records += batch.total_records
    others = sum(1 for _ in _batchfiles.other_metrics_names(args.directory))
    checked = valid + invalid
    report = (
        f"{_files(checked)} checked in {_shown(args.directory)}: "
        f"{valid} valid ({records} records), {invalid} invalid"
    )
    if others:
        report += f"; {others} other metrics_*.json name{'s' if others != 1 else ''} left alone"
    print(report)
    return EXIT_FINDINGS if invalid else EXIT_OK


# -- cleanup ---------------------------------------------------------------------


def _cleanup(args: argparse.Namespace) -> int:
    now = datetime.now(timezone.utc)
    before = format_timestamp(now - args.older_than)
    if args.dry_run:
        expired = delete_expired_batches(args.directory, args.older_than, now=now, dry_run=True)
        for path in expired:
            print(f"would delete {_shown(path)}")
        print(f"dry run: {_files(len(expired))} written before {before} would be deleted")
        return EXIT_OK
    failed: list[tuple[Path, OSError]] = []
    deleted = delete_expired_batches(
        args.directory,
        args.older_than,
        now=now,
        on_error=lambda path, exc: failed.append((path, exc)),  # the others go on
    )
    for path in deleted:
        print(f"deleted {_shown(path)}")
    if not failed:
        print(f"deleted {_files(len(deleted))} written before {before}")
        return EXIT_OK
    for path, exc in failed:
        _tell(f"{PROG}: error: cannot delete {_shown(path)}: {exc.strerror}")
    expired_now = len(deleted) + len(failed)
    print(f"deleted {len(deleted)} of {_files(expired_now)} written before {before}")
    return EXIT_FINDINGS


# -- schema ----------------------------------------------------------------------


def _schema(args: argparse.Namespace) -> int:
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema"}
    schema.update(MetricsBatch.model_json_schema(mode="serialization"))  # a file, as written
    schema["$comment"] = (
        "Also required, and checked by `otel-json-exporter validate`: total_records equals "
        "the number of records, batch_id is the YYYYMMDD_HHMMSS_ffffff of batch_timestamp, "
        "and the file is named metrics_<batch_id>.json."
    )
    print(json.dumps(schema, indent=2))
    return EXIT_OK
