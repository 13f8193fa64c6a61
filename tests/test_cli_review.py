"""The command line and the files it reads, as a review found them (on 34029aa's code).

Each test failed there, for the reason its docstring gives, and passes since the fix. The
permission tests run the command as root without the capabilities that override file
permissions (``setpriv``, ``_faults.as_ordinary_user``); one of them needs root.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager, _batchfiles
from otel_json_exporter.cli import main
from otel_json_exporter.records import OperationRecord, batch_id_for, parse_batch_id
from otel_json_exporter.writer import BatchWriter, iter_batch_files

from ._faults import IS_ROOT, as_ordinary_user

REPO = Path(__file__).resolve().parent.parent
NOBODY = 65534
HAVE_SETPRIV = shutil.which("setpriv") is not None


def run(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_json_exporter", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


needs_unprivileged = pytest.mark.skipif(
    IS_ROOT and not HAVE_SETPRIV, reason="running as root without setpriv"
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is 0700 for root)."""
    path = Path(tempfile.mkdtemp(prefix="rv-cli-"))
    path.chmod(0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def one_batch(directory: Path, name: str = "n", *, when: datetime | None = None) -> Path:
    moment = when or datetime.now(timezone.utc)
    record = OperationRecord(
        operation_type="t", operation_name=name, duration_ms=1.0, timestamp=moment
    )
    path = BatchWriter(directory).write([record], now=moment).path
    assert path is not None
    return path


# -- 1. exit codes and error messages ------------------------------------------------------


@needs_unprivileged
@pytest.mark.parametrize("command", ["validate", "summarize", "cleanup"])
def test_dir_behind_an_untraversable_parent_is_a_clear_error_not_a_traceback(
    shared_tmp: Path, command: str
) -> None:
    """`_directory()` calls Path.is_dir(), which re-raises EACCES; argparse does not catch
    PermissionError, and main() calls parse_args() outside its try: a raw traceback, exit 1."""
    locked = shared_tmp / "locked"
    target = locked / "metrics"
    target.mkdir(parents=True)
    one_batch(target)
    locked.chmod(0o000)  # no one without the override capabilities can traverse it
    extra = ["--older-than", "30d"] if command == "cleanup" else []
    result = as_ordinary_user(
        [sys.executable, "-m", "otel_json_exporter", command, str(target), *extra]
    )
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode in (1, 2)
    assert "Permission denied" in result.stderr


# -- 2. a running manager makes validate/summarize invent foreign names -----------------------


def test_new_batch_files_are_not_counted_as_other_names_injected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """other_metrics_names() lists the directory twice (iter_batch_files, then
    os.listdir): a batch file the running manager links in between is in the second
    listing only, and is reported as a foreign metrics_*.json name."""
    one_batch(tmp_path, when=datetime.now(timezone.utc) - timedelta(seconds=5))
    real_listdir = os.listdir

    def listdir(path: Any = ".") -> list[str]:
        one_batch(Path(path))  # the manager writes its next batch right now
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    assert main(["validate", str(tmp_path)]) == 0
    out, _ = capsys.readouterr()
    assert "other metrics_*.json" not in out, out


def test_new_batch_files_are_not_counted_as_other_names_real_manager(tmp_path: Path) -> None:
    """The same, with nothing injected: a real MetricsManager writing in another process.
    On the reviewed code about half of the runs report foreign names that do not exist."""
    script = (
        "import asyncio, sys, time\n"
        "from otel_json_exporter import MetricsManager\n"
        "async def main():\n"
        "    m = MetricsManager(sys.argv[1], flush_interval_seconds=0.01, max_batch_size=20)\n"
        "    await m.start()\n"
        "    end = time.time() + float(sys.argv[2])\n"
        "    i = 0\n"
        "    while time.time() < end:\n"
        "        await m.record_operation('t', 'n', 1.0); i += 1\n"
        "        if i % 20 == 0: await asyncio.sleep(0.001)\n"
        "    await m.stop()\n"
        "asyncio.run(main())\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), "30"])
    try:
        while not list(tmp_path.glob("metrics_*.json")):
            time.sleep(0.05)
        reports = []
        for _ in range(10):
            result = run("summarize", tmp_path, "--json")
            report = json.loads(result.stdout)
            reports.append(report["files"]["other_metrics_names"])
            if report["files"]["other_metrics_names"]:
                break
    finally:
        writer.kill()
        writer.wait()
    assert not any(reports), f"phantom foreign names reported: {reports}"


# -- 3. a batch file deleted by retention/cleanup mid-run is called invalid ------------------


def test_a_batch_file_deleted_concurrently_is_not_reported_invalid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """iter_batch_files() lists, then _batchfiles.read() opens: a file that the manager's
    hourly retention (or `cleanup`) deleted in between became 'cannot read: No such file
    or directory', counted invalid, exit code 1 (a false alarm for a cron'd validate)."""
    now = datetime.now(timezone.utc)
    old = one_batch(tmp_path, when=now - timedelta(days=40))
    one_batch(tmp_path, when=now)
    real_iter = iter_batch_files

    def listed_then_deleted(directory: Path) -> Iterator[tuple[Path, str]]:
        listing = list(real_iter(directory))
        old.unlink()  # retention runs right after the listing
        yield from listing

    monkeypatch.setattr(_batchfiles, "iter_batch_files", listed_then_deleted)
    code = main(["validate", str(tmp_path)])
    out, _ = capsys.readouterr()
    assert "cannot read" not in out, out
    assert code == 0, out


# -- 4. an undeletable stale temporary file stops start() ------------------------------------


def test_start_survives_a_stale_temp_file_it_may_not_remove_injected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """remove_stale_temp_files() suppresses only FileNotFoundError around os.unlink, and
    start_sync() does not catch it either (retention's OSError is caught and logged):
    one leftover it may not delete (another user's, in a sticky shared directory) makes
    start() raise a raw PermissionError although the directory is perfectly writable."""
    stale = tmp_path / ".metrics_999999_abcdef.tmp"  # its writer is long dead
    stale.write_text("x")
    real_unlink = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(os.fspath(path)).name == stale.name:
            raise PermissionError(errno.EPERM, "Operation not permitted", os.fspath(path))
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    manager = MetricsManager(tmp_path, flush_interval_seconds=0.05)
    manager.start_sync()  # raises PermissionError on the reviewed code
    try:
        assert (
            manager.submit_records(
                [
                    OperationRecord(
                        operation_type="t",
                        operation_name="n",
                        duration_ms=1.0,
                        timestamp=datetime.now(timezone.utc),
                    )
                ]
            )
            == 1
        )
        manager.flush_sync()
    finally:
        manager.stop_sync()
    assert list(tmp_path.glob("metrics_*.json"))


@needs_unprivileged
def test_start_survives_a_stale_temp_file_it_may_not_remove_real(shared_tmp: Path) -> None:
    """The same without any mock: a sticky, world-writable directory (mode 1777) of
    another user, holding a dead writer's temporary file of that user, which the manager
    (root without the capabilities that override permissions) may not remove."""
    if not IS_ROOT:
        pytest.skip("needs two users: run as root")
    storage = shared_tmp / "shared"
    storage.mkdir()
    storage.chmod(0o1777)
    stale = storage / ".metrics_999999_abcdef.tmp"  # its writer dead
    stale.write_text("x")
    os.chown(stale, NOBODY, NOBODY)
    os.chown(storage, NOBODY, NOBODY)
    script = (
        "import asyncio, sys\n"
        "from otel_json_exporter import MetricsManager\n"
        "async def main():\n"
        "    m = MetricsManager(sys.argv[1])\n"
        "    await m.start()\n"
        "    await m.record_operation('t', 'n', 1.0)\n"
        "    await m.stop()\n"
        "asyncio.run(main())\n"
    )
    result = as_ordinary_user([sys.executable, "-c", script, str(storage)])
    assert result.returncode == 0, result.stderr[-400:]
    assert list(storage.glob("metrics_*.json"))
    assert stale.exists()  # it could not be removed: start() went on regardless


# -- 5. control characters in names reach the terminal raw -----------------------------------


def test_table_does_not_print_control_characters_from_names(tmp_path: Path) -> None:
    """_render_table() prints operation names as they are (after PII masking, which
    ignores C0 controls): a newline forges a table row (a second TOTAL line), CR and ESC
    rewrite the operator's terminal, and a NUL inside an address (``bob\\x00@example.com``)
    is not masked but renders as ``bob@example.com``. The pipeline itself accepts all of
    these names, so this needs no foreign file."""

    async def write() -> None:
        manager = MetricsManager(tmp_path)
        await manager.start()
        for name in ("GET /a\nTOTAL   999999", "x\r\x1b[2Jy", "mail bob\x00@example.com"):
            await manager.record_operation("t", name, 1.0)
        await manager.stop()

    asyncio.run(write())
    result = run("summarize", tmp_path)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert sum(line.startswith("TOTAL") for line in lines) == 1, result.stdout
    for control in ("\x00", "\r", "\x1b"):
        assert control not in result.stdout, repr(control)


# -- 6. a non-UTF-8 stdout crashes the table -------------------------------------------------


def test_table_on_an_ascii_terminal_does_not_crash(tmp_path: Path) -> None:
    """The table clips names longer than 48 characters with U+2026 '…', which an ASCII
    (or Latin-1) stdout cannot encode: UnicodeEncodeError traceback, exit 1, even
    though every name in the files is plain ASCII."""
    one_batch(tmp_path, "GET /api/v1/" + "segment/" * 6)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    result = run("summarize", tmp_path, env=env)
    assert "Traceback" not in result.stderr, result.stderr[-300:]
    assert result.returncode == 0


# -- 7. an error rate that is there, shown as none -------------------------------------------


def test_error_rate_is_not_shown_as_zero_when_there_are_errors(tmp_path: Path) -> None:
    """_stat_cells() formatted the rate with '.1f': 1 error in 3,000 records printed
    'error % 0.0' (and 2,999 of 3,000 printed '100.0')."""
    now = datetime.now(timezone.utc)
    records = [
        OperationRecord(
            operation_type="t",
            operation_name="n",
            duration_ms=1.0,
            timestamp=now,
            success=index != 0,
        )
        for index in range(3000)
    ]
    BatchWriter(tmp_path).write(records, now=now)
    result = run("summarize", tmp_path)
    row = next(line for line in result.stdout.splitlines() if line.startswith("t "))
    cells = row.split()
    assert cells[3] == "1"  # errors
    assert cells[4] == "0.03", row


# -- 8. left from the review, fixed since (on c02eaca) ----------------------------------------


def _foreign_batch(directory: Path, record: dict[str, Any]) -> None:
    batch = {
        "records": [record],
        "batch_timestamp": "2025-12-16T08:00:05.123456+00:00",
        "batch_id": "20251216_080005_123456",
        "total_records": 1,
    }
    (directory / "metrics_20251216_080005_123456.json").write_text(json.dumps(batch))


def test_validate_refuses_an_error_message_the_manager_never_writes(tmp_path: Path) -> None:
    """The model cuts a long error_message to 1,000 characters, and validate read the file
    through it: a record of 1,001 characters passed, though no manager writes one."""
    record = {
        "operation_type": "t",
        "operation_name": "n",
        "duration_ms": 1.0,
        "timestamp": "2025-12-16T08:00:00.000000+00:00",
        "success": False,
        "error_message": "x" * 1001,
        "metadata": {},
    }
    _foreign_batch(tmp_path, record)
    result = run("validate", tmp_path)
    assert result.returncode == 1
    assert "records.0.error_message: String should have at most 1000 characters" in (
        result.stdout + result.stderr
    )
    record["error_message"] = "x" * 1000
    _foreign_batch(tmp_path, record)
    assert run("validate", tmp_path).returncode == 0


def test_a_year_before_1000_is_zero_padded(tmp_path: Path) -> None:
    """The table formatted times with strftime's %Y, which leaves the year 999 as "999";
    batch_id_for did too, making a name ("9990102_...") that no reader matches."""
    when = datetime(999, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    record = OperationRecord(
        operation_type="t", operation_name="n", duration_ms=1.0, timestamp=when
    )
    BatchWriter(tmp_path).write([record], now=datetime.now(timezone.utc))
    result = run("summarize", tmp_path)
    assert "0999-01-02 03:04:05.000" in result.stdout, result.stdout
    assert batch_id_for(when) == "09990102_030405_000000"
    assert parse_batch_id(batch_id_for(when)) == when
