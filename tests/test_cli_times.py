"""``--since`` and ``--until`` read the same ISO-8601 times on every Python version.

On Python 3.10 they refused the basic format (``20251216T080000Z``, ``20251216``,
``+0200`` after it) and week dates, which 3.11's ``datetime.fromisoformat`` reads: the
same command worked on 3.11 and was a usage error on 3.10. The command line now parses
the times itself. Every test here passes, unchanged and unskipped, on 3.10 to 3.13:
each asserts the time read, and where the running Python's own ``fromisoformat``
reads the text too, that it reads the same instant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_json_exporter.cli import _timestamp, main
from otel_json_exporter.records import OperationRecord
from otel_json_exporter.writer import BatchWriter

UTC = timezone.utc


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


def fromisoformat_reading(text: str) -> datetime | None:
    """What this Python's own ``datetime.fromisoformat`` reads, in UTC; None if it refuses."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


ACCEPTED = [
    # The basic format, as `date -u +%Y%m%dT%H%M%SZ`, file names and S3 keys write it.
    ("20251216T080000", utc(2025, 12, 16, 8)),
    ("20251216T080000Z", utc(2025, 12, 16, 8)),
    ("20251216T080000+0200", utc(2025, 12, 16, 6)),
    ("20251216", utc(2025, 12, 16)),
    # With fractions of any length, cut to microseconds, after "." or ",".
    ("20251216T080000.123456789Z", utc(2025, 12, 16, 8, 0, 0, 123456)),
    ("20251216T080000,5+0200", utc(2025, 12, 16, 6, 0, 0, 500000)),
    ("20251216T080000.1234567-0130", utc(2025, 12, 16, 9, 30, 0, 123456)),
    ("20251216T080000.1", utc(2025, 12, 16, 8, 0, 0, 100000)),
    # Hours alone, hours and minutes; t, a space or "_" (the batch files' names) for T.
    ("20251216t0800", utc(2025, 12, 16, 8)),
    ("20251216 08", utc(2025, 12, 16, 8)),
    ("20251216_080000", utc(2025, 12, 16, 8)),
    ("2025-12-16T08+01", utc(2025, 12, 16, 7)),
    # A basic date with an extended time, and the other way round, as 3.11 reads them.
    ("20251216T08:00:00+02", utc(2025, 12, 16, 6)),
    ("2025-12-16T080000+02:00", utc(2025, 12, 16, 6)),
    # Offsets with seconds, and a fraction of one.
    ("20251216T080000+020030", utc(2025, 12, 16, 5, 59, 30)),
    ("2025-12-16T08:00:00+05:30:15.5", utc(2025, 12, 16, 2, 29, 44, 500000)),
    ("2025-12-16T08:00:00-00:00", utc(2025, 12, 16, 8)),
    # Week dates: the Tuesday of week 51, week 51's Monday, and a week 53.
    ("2025-W51-2", utc(2025, 12, 16)),
    ("2025W512T080000Z", utc(2025, 12, 16, 8)),
    ("2025-W51", utc(2025, 12, 15)),
    ("2020-W53-5T12:00+01:00", utc(2021, 1, 1, 11)),
    ("20240229T235959.999999-0000", utc(2024, 2, 29, 23, 59, 59, 999999)),
    # What the command line read before on every version, still read so.
    ("2025-12-16T08:00:00.123456789Z", utc(2025, 12, 16, 8, 0, 0, 123456)),
    ("2025-12-16T10:00:00+0200", utc(2025, 12, 16, 8)),
    ("2025-12-16 08:00:00,25", utc(2025, 12, 16, 8, 0, 0, 250000)),
    ("2025-12-16", utc(2025, 12, 16)),
    ("2025-12-16T08:00:00z", utc(2025, 12, 16, 8)),  # a lower-case z, fromisoformat's not
    (" 20251216T080000Z\n", utc(2025, 12, 16, 8)),  # white space around, as pasted
]


@pytest.mark.parametrize(("text", "moment"), ACCEPTED, ids=[text for text, _ in ACCEPTED])
def test_the_iso_times_users_write_are_read_alike_on_every_version(
    text: str, moment: datetime
) -> None:
    """Python 3.10: every basic-format time and week date here was "not an ISO-8601
    time", exit 2 (3.11 read them)."""
    assert _timestamp(text) == moment
    reading = fromisoformat_reading(text)
    assert reading is None or reading == moment


# Refused by fromisoformat on every version, and so here: mixed dashes or colons, digits
# too many or too few, out-of-range fields, full-width digits, no time after the T.
GARBAGE = [
    "2025-1216",
    "202512-16",
    "2025-W512",
    "2025W51-2",
    "2025121",
    "202512160",
    "20251216T08:0000",
    "20251216T0800:00",
    "20251216T080000.",
    "20251216T0800001",
    "20251216T08000",
    "20251216T080000+02000",
    "20251216T080000+2",
    "20251216T080000Z+0200",
    "20251216T080000+2400",
    "20251316",
    "20250229",
    "20251216T240000",
    "20251216T086000",
    "20251216T080060",
    "2025-W53-1",
    "2025-W00-1",
    "2025-W51-0",
    "2025-W51-8",
    "\uff12\uff10\uff12\uff15\uff11\uff12\uff11\uff16",
    "20251216T",
    "20251216Z",
    "2025-12-16Z",
    "2025-12-16T08:00:00+02:00Z",
    "noon",
    "",
]
# Read by 3.11's fromisoformat, but not as they say: refused here on every version.
MISREAD = [
    "2025-12-16T08.5",  # half past eight to ISO 8601; 3.11 reads 08:00:00.5
    "20251216T0800.5",
    "2025-12-16T08:30.5",  # half a minute to ISO 8601; 3.11 reads half a second
    "2025-12-16+02:00",  # a date at +02:00 to its writer; 3.11 reads 02:00 UTC
    "20251216+0200",
    "20251216T080000+0260",  # 3.11 reads +03:00
    "20251216T080000+0200.5",
    "2025-12-16-08:00",  # 3.11 takes any character between date and time
    "2025-12-16T08:00:00.+02:00",
    "20251216T080000 +0200",
]


@pytest.mark.parametrize("text", GARBAGE)
def test_what_fromisoformat_refuses_is_refused(text: str) -> None:
    assert fromisoformat_reading(text) is None
    with pytest.raises(argparse.ArgumentTypeError, match="is not an ISO-8601 time"):
        _timestamp(text)


@pytest.mark.parametrize("text", MISREAD)
def test_what_fromisoformat_misreads_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="is not an ISO-8601 time"):
        _timestamp(text)


def test_a_time_beyond_the_range_of_datetime_in_utc_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for text in ("00010101T000000+0100", "99991231T235959-0100"):
        with pytest.raises(SystemExit) as exited:
            main(["summarize", str(tmp_path), "--since", text])
        assert exited.value.code == 2
        assert f"{text!r} is not an ISO-8601 time" in capsys.readouterr().err


@st.composite
def written_times(draw: st.DrawFn) -> tuple[str, datetime]:
    """A time written in one of the forms read, and the instant it names."""
    moment = draw(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)))
    precision = draw(st.sampled_from(["hours", "minutes", "seconds"]))
    digits = draw(st.integers(0, 9)) if precision == "seconds" else 0
    if precision != "seconds":
        moment = moment.replace(second=0, microsecond=0)
    if precision == "hours":
        moment = moment.replace(minute=0)
    micro = f"{moment.microsecond:06d}"
    fraction = micro[:digits] + "7" * (digits - 6)
    moment = moment.replace(microsecond=int(fraction[:6].ljust(6, "0")) if digits else 0)
    basic = draw(st.booleans())
    week = draw(st.booleans())
    if week:
        year, number, weekday = moment.isocalendar()
        day = f"{year:04d}-W{number:02d}-{weekday}"
    else:
        day = moment.strftime("%Y-%m-%d")
    time = {"hours": "%H", "minutes": "%H:%M", "seconds": "%H:%M:%S"}[precision]
    time = moment.strftime(time)
    if basic:
        day, time = day.replace("-", ""), time.replace(":", "")
    if digits:
        time += draw(st.sampled_from(".,")) + fraction
    form = draw(st.sampled_from(["none", "Z", "+HH", "+HHMM", "+HH:MM", "+HHMMSS", "+HH:MM:SS"]))
    seconds = draw(st.integers(-(24 * 3600 - 1), 24 * 3600 - 1)) if form[0] == "+" else 0
    if form in ("+HH", "+HHMM", "+HH:MM"):  # whole hours or minutes, toward zero
        unit = 3600 if form == "+HH" else 60
        seconds = int(seconds / unit) * unit
    sign, size = ("-" if seconds < 0 else "+"), abs(seconds)
    hours, minutes, rest = size // 3600, size // 60 % 60, size % 60
    offset = {
        "none": "",
        "Z": "Z",
        "+HH": f"{sign}{hours:02d}",
        "+HHMM": f"{sign}{hours:02d}{minutes:02d}",
        "+HH:MM": f"{sign}{hours:02d}:{minutes:02d}",
        "+HHMMSS": f"{sign}{hours:02d}{minutes:02d}{rest:02d}",
        "+HH:MM:SS": f"{sign}{hours:02d}:{minutes:02d}:{rest:02d}",
    }[form]
    separator = draw(st.sampled_from("Tt _"))
    text = f"{day}{separator}{time}{offset}"
    return text, (moment - timedelta(seconds=seconds)).replace(tzinfo=UTC)


@given(written_times())
def test_every_form_names_the_instant_it_was_written_for(written: tuple[str, datetime]) -> None:
    text, moment = written
    assert _timestamp(text) == moment
    reading = fromisoformat_reading(text)
    assert reading is None or reading == moment


def record(moment: datetime) -> OperationRecord:
    return OperationRecord(
        operation_type="job", operation_name="step", duration_ms=1.0, timestamp=moment
    )


def test_the_window_in_the_basic_format_through_the_command(tmp_path: Path) -> None:
    moments = [utc(2025, 12, 16, hour) for hour in (8, 9, 10)]
    written = BatchWriter(tmp_path).write([record(moment) for moment in moments])
    assert written.path is not None
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "otel_json_exporter",
            "summarize",
            str(tmp_path),
            "--json",
            "--since",
            "20251216T0830Z",
            "--until",
            "20251216T113000.5+0200",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["since"] == "2025-12-16T08:30:00.000000+00:00"
    assert report["until"] == "2025-12-16T09:30:00.500000+00:00"
    assert report["totals"]["count"] == 1
    assert report["totals"]["first_timestamp"] == "2025-12-16T09:00:00.000000+00:00"
