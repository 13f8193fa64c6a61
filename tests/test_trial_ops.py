"""An operator's trial: batch files on shared volumes, their consumers, and the command line.

Real managers, real batch files, real subprocesses for the command line and for several
writers. Faults are injected only at the OS call (``os.unlink``, ``os.fsync``, the wall
clock) or made real by running as root without the capabilities that bypass permissions
(``setpriv --bounding-set``), so that the same interpreter stays reachable.

The tests under "failing" fail on the code they were written against, for the reason each
docstring gives; those under "pinned" pass and hold behaviour that surprised but is right
(or documented).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import otel_json_exporter.writer as writer_module
from otel_json_exporter import MetricsManager, OperationRecord
from otel_json_exporter.records import batch_id_for
from otel_json_exporter.writer import BatchWriter

from ._faults import IS_ROOT, as_ordinary_user

HAVE_SETPRIV = shutil.which("setpriv") is not None

needs_root_and_setpriv = pytest.mark.skipif(
    not (IS_ROOT and HAVE_SETPRIV), reason="needs root and setpriv (files of another owner)"
)


def cli(*args: str | bytes | os.PathLike[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m otel_json_exporter ARGS`` in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "otel_json_exporter", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )


def batch_file(directory: Path, when: datetime, name: str = "n", **fields: Any) -> Path:
    """One batch file holding one record, written by the package's own writer."""
    record = OperationRecord(
        operation_type="t", operation_name=name, duration_ms=1.0, timestamp=when, **fields
    )
    path = BatchWriter(directory).write([record], now=when).path
    assert path is not None
    return path


def raw_batch_file(directory: Path, when: datetime, records: list[dict[str, Any]]) -> Path:
    """A batch file written by hand (another producer, an older or newer version)."""
    batch_id = batch_id_for(when)
    body = {
        "records": records,
        "batch_timestamp": when.isoformat(timespec="microseconds"),
        "batch_id": batch_id,
        "total_records": len(records),
    }
    path = directory / f"metrics_{batch_id}.json"
    path.write_text(json.dumps(body))
    return path


def shipped_records(directory: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("metrics_*.json")):
        out.extend(json.loads(path.read_bytes())["records"])
    return out


OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


# ======================================================================================
# failing
# ======================================================================================

# -- 1. retention gives up at the first batch file it may not delete ---------------------


async def test_retention_deletes_the_other_expired_files_when_one_cannot_be_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """README, Retention: ``retention_days`` "deletes batch files older than that at start()
    and then hourly". On a volume two services share (a sticky directory, each service its
    own uid) the other service's files cannot be deleted (EPERM). delete_expired_batches()
    goes oldest first and raises at the first refusal, so every expired file after it, the
    manager's own included, stays: the disk fills although retention is on. The warning
    ("retention clean-up failed: Operation not permitted") does not say which file.
    Temporary files, by contrast, are skipped one by one ("One that cannot be removed ...
    is left, with a warning")."""
    storage = tmp_path / "metrics"
    storage.mkdir()
    foreign = batch_file(storage, OLD)  # the oldest: another uid's
    for hours in (1, 2, 3):  # the manager's own, expired too
        batch_file(storage, OLD + timedelta(hours=hours))
    fresh = batch_file(storage, datetime.now(timezone.utc))
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.fspath(path) == str(foreign):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    manager = MetricsManager(storage, retention_days=30)
    with caplog.at_level("WARNING", logger="otel_json_exporter"):
        await manager.start()
        await manager.stop()

    left = sorted(p.name for p in storage.glob("metrics_*.json"))
    assert left == sorted([foreign.name, fresh.name]), (
        f"expired files it may delete are kept: {left}; log: {caplog.text!r}"
    )
    assert foreign.name in caplog.text, caplog.text


@needs_root_and_setpriv
def test_retention_in_a_shared_sticky_directory_real(tmp_path: Path) -> None:
    """The same with nothing injected: a 1777 directory owned by uid 1000, one expired
    file of uid 2000, three expired files of the manager's own; the manager runs as root
    without CAP_FOWNER, so the sticky bit refuses it the other uid's file only.
    Seen: all three own files kept, and the log says only
    ``retention clean-up failed: Operation not permitted``."""
    storage = tmp_path / "shared"
    storage.mkdir()
    foreign = batch_file(storage, OLD)
    own = [batch_file(storage, OLD + timedelta(hours=h)) for h in (1, 2, 3)]
    os.chown(storage, 1000, 1000)
    storage.chmod(0o1777)
    os.chown(foreign, 2000, 2000)
    code = textwrap.dedent(
        f"""
        import logging
        logging.basicConfig(level=logging.WARNING)
        from otel_json_exporter import MetricsManager
        m = MetricsManager({str(storage)!r}, retention_days=30)
        m.start_sync(); m.stop_sync()
        """
    )
    result = as_ordinary_user([sys.executable, "-c", code])
    assert result.returncode == 0, result.stderr[-600:]
    kept = [p.name for p in own if p.exists()]
    assert kept == [], f"own expired files kept: {kept}; stderr: {result.stderr!r}"
    assert foreign.exists()


# -- 2. the command line on a directory whose name is not UTF-8 -----------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["validate"],
        ["cleanup", "--older-than", "1h", "--dry-run"],
        ["cleanup", "--older-than", "1h"],
    ],
)
def test_a_directory_name_that_is_not_utf8_gives_no_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    """A volume mounted from an older system has a Latin-1 directory name
    (``b"m\\xe9triques"``). Under a UTF-8 locale such as en_US.UTF-8 (here
    PYTHONIOENCODING=utf-8, the same strict stdout), validate prints DIR in its report
    line and cleanup prints each path: ``UnicodeEncodeError: 'utf-8' codec can't encode
    character '\\udce9' ... surrogates not allowed``, a traceback and exit code 1 (which
    the README reserves for findings). ``cleanup`` without --dry-run deletes the files
    first and then dies before saying what it deleted."""
    directory = tmp_path / os.fsdecode(b"m\xe9triques")
    directory.mkdir()
    batch_file(directory, datetime.now(timezone.utc) - timedelta(days=1))
    arguments: list[str | bytes] = [command[0], os.fsencode(directory), *command[1:]]
    result = cli(*arguments, PYTHONIOENCODING="utf-8")
    assert "Traceback" not in result.stderr, result.stderr[-500:]
    assert result.returncode == 0, (result.stdout, result.stderr)
    if command[-1] == "1h":  # the real cleanup: it must also say what it deleted
        assert "deleted 1 batch file" in result.stdout, result.stdout


# -- 3. validate and the schema accept a record without keys the writer always writes ---------


def test_validate_reports_a_record_without_success(tmp_path: Path) -> None:
    """README, validate: the model "checks the JSON, the keys and types"; "A file is
    checked as it is written, not as the model would accept it"; File format: each record
    line is exactly ``model_dump_json()`` (all seven keys). A record from another producer
    (or hand-edited) without ``success`` passes validate (exit 0) because the model fills
    in its default, True: summarize then counts a record that carries an error_message as
    a success (0 errors), while DuckDB reads the same file with no success column at
    all."""
    raw_batch_file(
        tmp_path,
        OLD,
        [
            {
                "operation_type": "api_request",
                "operation_name": "GET /x",
                "duration_ms": 1.0,
                "timestamp": "2020-01-01T00:00:00.000000+00:00",
                "error_message": "ValueError: boom",
                "metadata": {},
            }
        ],
    )
    result = cli("validate", tmp_path)
    assert result.returncode == 1, result.stdout
    assert "records.0.success" in result.stdout, result.stdout


def test_the_schema_requires_every_key_a_batch_file_holds() -> None:
    """`schema` is for "other tools to validate against". Its OperationRecord requires
    only operation_type, operation_name, duration_ms and timestamp: success, error_message
    and metadata (always written) may be missing, so a consumer validating with it accepts
    records whose success is absent (read as NULL, or as the default true)."""
    result = cli("schema")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)["$defs"]["OperationRecord"]
    assert set(record["required"]) == set(record["properties"]), record["required"]


# -- 4. a failed write to standard output ---------------------------------------------------


@pytest.mark.parametrize("command", [["summarize"], ["validate"], ["schema"]])
def test_a_failed_write_to_standard_output_says_so(tmp_path: Path, command: list[str]) -> None:
    """``summarize DIR > /full/disk/report.txt``: main() catches the OSError of the write
    to stdout and prints ``exc.filename``, which is None there:
    ``otel-json-exporter summarize: error: None: No space left on device``. The message
    should say that standard output could not be written, not name a file "None"."""
    batch_file(tmp_path, datetime.now(timezone.utc))
    args = [*command, str(tmp_path)] if command != ["schema"] else command
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [sys.executable, "-m", "otel_json_exporter", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 1
    assert "No space left on device" in result.stderr, result.stderr
    assert "None" not in result.stderr, result.stderr


# -- 6. a storage directory that cannot be listed ---------------------------------------------


def test_exporter_on_a_directory_it_cannot_list_raises_storage_error(tmp_path: Path) -> None:
    """README, OpenTelemetry exporter: "a storage directory that cannot be used raises
    StorageError there, saying whether the path came from the argument, the environment or
    the default". A drop-box directory (mode 0333: write and search, no read) passes the
    writability probe, then the temp-file sweep's scandir raises a bare
    ``PermissionError: [Errno 13] Permission denied: '...'``: not a StorageError (so
    ``except StorageError`` misses it) and no word of OTEL_EXPORTER_OPERATION_JSON_PATH."""
    storage = tmp_path / "dropbox"
    storage.mkdir()
    storage.chmod(0o333)
    code = textwrap.dedent(
        """
        from otel_json_exporter import OperationSpanExporter
        from otel_json_exporter.writer import StorageError
        try:
            OperationSpanExporter()
        except StorageError as exc:
            print("StorageError:", exc)
        except OSError as exc:
            print("other:", type(exc).__name__, exc)
        else:
            print("started")
        """
    )
    env_code = f"import os; os.environ['OTEL_EXPORTER_OPERATION_JSON_PATH'] = {str(storage)!r}\n"
    try:
        result = as_ordinary_user([sys.executable, "-c", env_code + code])
    finally:
        storage.chmod(0o755)
    assert result.returncode == 0, result.stderr[-500:]
    out = result.stdout.strip()
    assert out.startswith("StorageError:"), out
    assert "OTEL_EXPORTER_OPERATION_JSON_PATH" in out, out


# -- 7. one wrong reading of the clock names every later batch in the future ------------------


class _Clock(datetime):
    """The wall clock as the writer reads it, moved by ``skew`` (an NTP step, a bad RTC)."""

    skew = timedelta(0)

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return datetime.now(tz) + cls.skew


async def test_batch_names_follow_the_clock_again_once_it_is_set_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node boots with its clock a day ahead and NTP steps it back while the service
    runs. The writer keeps names increasing (``moment <= last`` -> last + 1 µs), so after
    one batch written in the wrong day every later batch of that process is named, and its
    batch_timestamp set, a day ahead, one microsecond apart, for as long as the process
    lives (after a jump of years, for good): retention and ``cleanup --older-than``, which
    judge age by the name, do not delete them when they expire, and consumers partition
    them into the wrong day. Seen (one year ahead): 20961119_142256_764883, then
    ..._764884, _764885, _764886 on the corrected clock."""
    monkeypatch.setattr(writer_module, "datetime", _Clock)
    storage = tmp_path / "metrics"
    manager = MetricsManager(storage, flush_interval_seconds=0.1)
    await manager.start()
    try:
        _Clock.skew = timedelta(days=1)
        await manager.record_operation("job", "while-wrong", 1.0)
        await manager.flush(timeout=30)
        _Clock.skew = timedelta(0)  # NTP steps the clock back
        await manager.record_operation("job", "after-fix", 1.0)
        await manager.flush(timeout=30)
    finally:
        _Clock.skew = timedelta(0)
        await manager.stop()
    stamps = {}
    for path in storage.glob("metrics_*.json"):
        batch = json.loads(path.read_bytes())
        stamps[batch["records"][0]["operation_name"]] = datetime.fromisoformat(
            batch["batch_timestamp"]
        )
    now = datetime.now(timezone.utc)
    assert abs(stamps["after-fix"] - now) < timedelta(minutes=5), (
        f"written {now.isoformat()} but named {stamps['after-fix'].isoformat()}"
    )


# ======================================================================================
# pinned (pass): surprising, but right or documented
# ======================================================================================


async def test_a_glob_never_matches_the_temporary_file_of_a_write_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer globbing ``*.json`` or ``metrics_*.json`` while a batch is being written
    sees nothing of it: the temporary file is ``.metrics_<pid>_n<space>_<random>.tmp``
    (hidden, and not .json), and the final name appears by a hard link, complete."""
    storage = tmp_path / "metrics"
    real_fsync = os.fsync
    during: list[tuple[list[str], list[str], list[str]]] = []

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode) and not during:
            during.append(
                (
                    sorted(os.listdir(storage)),
                    glob.glob(str(storage / "*.json")),
                    [str(p) for p in storage.glob("metrics_*.json")],
                )
            )
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    manager = MetricsManager(storage, flush_interval_seconds=0.1)
    await manager.start()
    await manager.record_operation("job", "a", 1.0)
    await manager.flush(timeout=30)
    await manager.stop()
    (listing, star_json, metrics_json) = during[0]
    assert any(n.startswith(".metrics_") and n.endswith(".tmp") for n in listing), listing
    assert star_json == []
    assert metrics_json == []
    assert len(list(storage.glob("metrics_*.json"))) == 1


async def test_a_restarted_containers_start_keeps_the_dead_containers_young_temp_file(
    tmp_path: Path,
) -> None:
    """README: another process space's temporary file "is removed only once it is 10
    minutes old", and only by a start(). In Kubernetes a container killed mid-write (OOM)
    is restarted within seconds, in a new PID namespace: its start() leaves the dead
    container's file (young, another space), and no later hourly pass looks at temp files,
    so it stays until a start() 10 minutes or more after the crash (the next restart).
    A crash-looping pod leaves one such file per crash, invisible to ``*.json`` globs and
    to the command line."""
    storage = tmp_path / "metrics"
    storage.mkdir()
    other_space = ".metrics_7_nfeedface0123456789ab_0123456789ab.tmp"
    leftover = storage / other_space
    leftover.write_bytes(b'{"records":[\n')
    manager = MetricsManager(storage)
    await manager.start()
    await manager.stop()
    assert leftover.exists()  # young: kept
    old = datetime.now(timezone.utc).timestamp() - 11 * 60
    os.utime(leftover, (old, old))
    await manager.start()
    await manager.stop()
    assert not leftover.exists()  # ten minutes on, the next start() removes it


def test_several_processes_one_directory_while_cleanup_and_validate_run(tmp_path: Path) -> None:
    """Three writer processes with tiny batches into one directory while the command line
    validates it and runs cleanup (nothing old enough) again and again: every record is
    in exactly one file, every command exits 0, nothing is deleted."""
    storage = tmp_path / "shared"
    storage.mkdir()
    code = textwrap.dedent(
        """
        import asyncio, sys
        from otel_json_exporter import MetricsManager
        async def main(path, tag):
            m = MetricsManager(path, flush_interval_seconds=0.01, max_batch_size=2)
            await m.start()
            for i in range(150):
                await m.record_operation("job", tag, 1.0, metadata={"i": i})
                if i % 3 == 0:
                    await asyncio.sleep(0.002)
            await m.stop()
        asyncio.run(main(sys.argv[1], sys.argv[2]))
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(storage), tag]) for tag in "abc"]
    results = []
    try:
        while any(w.poll() is None for w in writers):
            results.append(cli("validate", storage))
            results.append(cli("cleanup", storage, "--older-than", "1h"))
    finally:
        for w in writers:
            w.wait(timeout=120)
    assert [w.returncode for w in writers] == [0, 0, 0]
    assert all(r.returncode == 0 for r in results), [r.stdout + r.stderr for r in results]
    assert all("deleted 0 batch files" in r.stdout for r in results if "cleanup" in r.args)
    seen = [(r["operation_name"], r["metadata"]["i"]) for r in shipped_records(storage)]
    assert sorted(seen) == sorted((tag, i) for tag in "abc" for i in range(150))
    assert cli("validate", storage).returncode == 0


def test_a_file_with_a_key_from_a_newer_format_is_invalid(tmp_path: Path) -> None:
    """No version in the format, and unknown keys refused (README: validate checks "the
    keys"): during a rolling upgrade that added a field, an older CLI calls every newer
    file invalid and summarize skips them (exit 1). Documented; an operator should know."""
    record = {
        "operation_type": "t",
        "operation_name": "n",
        "duration_ms": 1.0,
        "timestamp": "2020-01-01T00:00:00.000000+00:00",
        "success": True,
        "error_message": None,
        "metadata": {},
        "trace_id": "abc",
    }
    raw_batch_file(tmp_path, OLD, [record])
    result = cli("validate", tmp_path)
    assert result.returncode == 1
    assert "records.0.trace_id: Extra inputs are not permitted" in result.stdout
    summary = cli("summarize", tmp_path, "--json")
    assert summary.returncode == 1
    assert json.loads(summary.stdout)["files"]["invalid"] == 1


def test_storage_error_type_for_an_unwritable_directory_is_kept(tmp_path: Path) -> None:
    """Beside test 6: a directory that is not writable at all (0555) is a StorageError
    from the exporter, naming where the path came from, as documented."""
    storage = tmp_path / "readonly"
    storage.mkdir()
    storage.chmod(0o555)
    code = textwrap.dedent(
        f"""
        import os
        os.environ['OTEL_EXPORTER_OPERATION_JSON_PATH'] = {str(storage)!r}
        from otel_json_exporter import OperationSpanExporter
        from otel_json_exporter.writer import StorageError
        try:
            OperationSpanExporter()
        except StorageError as exc:
            print("StorageError:", exc)
        """
    )
    try:
        result = as_ordinary_user([sys.executable, "-c", code])
    finally:
        storage.chmod(0o755)
    assert result.stdout.startswith("StorageError:"), (result.stdout, result.stderr[-400:])
    assert "OTEL_EXPORTER_OPERATION_JSON_PATH" in result.stdout
