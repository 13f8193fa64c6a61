"""Review of the asyncio trial's and the operator trial's fixes (6b2ac87, 1f956f6).

Each test asserts what the README promises and fails on the code as reviewed; its
docstring says what was seen. Faults are injected at the ``os`` call only (a stalled or
failing ``os.fsync``); everything else runs for real: real files under ``tmp_path``,
real event loops, a real writer process, subprocesses where a process must end.
Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import otel_json_exporter
from otel_json_exporter import MetricsManager
from otel_json_exporter.tracking import track_operation

from ._faults import WRITER_THREAD, StalledDisk, full_queue_on_a_stalled_disk
from .conftest import load_records

CAP = 10.0  # hang guard for anything expected to end at once
# A script run in a subprocess imports this package, not one installed elsewhere.
PACKAGE_ROOT = Path(otel_json_exporter.__file__).resolve().parent.parent


# -- helpers -------------------------------------------------------------------------


async def eventually(check: Any, what: str) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), CAP)  # a hang guard
    assert check(), what


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "otel_json_exporter" and record.levelno >= logging.WARNING
    ]


# =====================================================================================
# track_operation
# =====================================================================================


async def test_a_failed_block_recorded_later_is_not_also_counted_as_dropped(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """README, Timing your own code: "An async block that raised does not wait for room:
    its record is queued at once if there is room, else (under "block") it waits in a
    task of its own". ``__aexit__`` first tries ``submit_records(timeout=0)``, which, on a
    full queue, drops the record *and counts it* in ``total_dropped`` (and counts the
    address it masked in ``pii_redacted``); then the task records the same operation
    again with ``record_operation``, which counts its masking once more. One operation,
    written once, is reported as dropped and as masked twice."""
    manager = await full_queue_on_a_stalled_disk(tmp_path / "m", stalled_disk)
    try:
        with pytest.raises(LookupError):
            async with track_operation(manager, "database_query", "SELECT user"):
                raise LookupError("no row for alice@example.com")
        stalled_disk.release()
        await eventually(lambda: manager.stats().total_recorded == 2, "never recorded")
        await manager.flush(timeout=CAP)
    finally:
        stalled_disk.release()
        await asyncio.wait_for(manager.stop(), CAP)
    written = [r for r in load_records(tmp_path / "m") if r.operation_type == "database_query"]
    assert [(r.success, r.error_message) for r in written] == [
        (False, "LookupError: no row for [REDACTED]")
    ]
    stats = manager.stats()
    assert (stats.total_dropped, stats.pii_redacted) == (0, 1), (
        f"the one record written is counted as dropped {stats.total_dropped} time(s) and "
        f"its one address as masked {stats.pii_redacted} times"
    )


async def test_a_failed_block_whose_record_is_refused_is_refused_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README: "If recording itself fails, that error is ... only logged after a failing
    one". With metadata the PII rule refuses and a queue with room, a failed async block
    is refused twice: ``_submit`` returns False for *any* recording error (not only a
    full queue), so ``__aexit__`` also starts ``_record_later``, whose
    ``record_operation`` refuses it again. Seen: ``total_rejected`` 2 and two warnings
    for one operation; the sync ``with`` block, and the same block without the error,
    count 1."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    try:
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            with pytest.raises(ValueError, match="boom"):
                async with track_operation(manager, "job", "send", metadata={"email": "x"}):
                    raise ValueError("boom")
            for _ in range(20):  # let a background task, if any, run to its end
                await asyncio.sleep(0)
    finally:
        await manager.stop()
    assert (manager.stats().total_rejected, len(warnings_of(caplog))) == (1, 1), (
        f"one refused operation: total_rejected={manager.stats().total_rejected}, "
        f"warnings {warnings_of(caplog)}"
    )


async def test_a_failed_block_after_stop_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same root as above: with the manager stopped, a failed async block's
    ``submit_records`` raises RuntimeError (logged), ``_submit`` returns False, and
    ``_record_later`` starts a task whose ``record_operation`` raises RuntimeError again
    (logged again): two warnings, and a task, for one operation that was never going to
    be recorded."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    await manager.stop()
    with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
        with pytest.raises(ValueError, match="boom"):
            async with track_operation(manager, "job", "send"):
                raise ValueError("boom")
        for _ in range(20):
            await asyncio.sleep(0)
    assert warnings_of(caplog) == [
        "track_operation could not record a failed operation: RuntimeError"
    ]


def test_a_failed_blocks_record_made_during_asyncio_run_shutdown_is_not_lost_silently(
    tmp_path: Path,
) -> None:
    """A worker task's clean-up on cancellation (asyncio.run's shutdown) runs a tracked
    block that fails, with the queue full at that moment. ``_record_later`` creates its
    task while asyncio.run is already cancelling and gathering the remaining tasks: it is
    never cancelled, never awaited, and the loop closes with it pending (held for ever in
    ``tracking._recording``). Seen: the record is in no file, nothing is logged by the
    package (no "could not record"), and no "Task was destroyed" either; the task stays
    PENDING. README: "If recording itself fails, that error is ... only logged"."""
    storage = tmp_path / "m"
    script = tmp_path / "script.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, logging, os, sys, threading
            from otel_json_exporter import MetricsManager, track_operation
            import otel_json_exporter.tracking as tracking

            logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
            go = threading.Event()
            real_fsync = os.fsync

            def fsync(fd):  # a disk that stalls for a moment (injected at the os call)
                if threading.current_thread().name == {WRITER_THREAD!r}:
                    go.wait(30)
                real_fsync(fd)

            os.fsync = fsync
            manager = MetricsManager({str(storage)!r}, flush_interval_seconds=60,
                                     max_queue_size=1, max_batch_size=1)

            async def worker():
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    try:
                        async with track_operation(manager, "cleanup", "close_connection"):
                            raise ConnectionError("peer gone")
                    except ConnectionError:
                        pass
                    raise

            async def main():
                await manager.start()
                await manager.record_operation("fill", "fill", 1.0)
                await asyncio.sleep(0.2)  # the writer is in its stalled fsync
                asyncio.get_running_loop().create_task(worker())
                await asyncio.sleep(0.05)

            asyncio.run(main())
            go.set()
            manager.stop_sync(10)
            print("pending:", sum(not task.done() for task in tracking._recording))
            """
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    names = [r.operation_name for r in load_records(storage)]
    recorded = "close_connection" in names
    logged = "could not record" in result.stderr
    assert recorded or logged, (
        f"on disk {names}; stdout {result.stdout.strip()!r}; stderr {result.stderr!r}"
    )


async def test_a_cancel_of_a_block_waiting_for_room_stays_a_cancel_when_stop_comes_first(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """README: "an async one cancelled while it waits is recorded if there is room by
    then, and the cancellation goes on". A successful block waits for room; ``stop()``
    begins (a shutdown hook) and the task is cancelled in the same loop pass (the
    server cancels its handlers). ``__aexit__`` catches the CancelledError and calls
    ``_submit``, whose ``submit_records`` raises RuntimeError (not running); for a block
    that succeeded ``_unless_hiding`` raises it, from inside ``except CancelledError``:
    the task ends with RuntimeError("MetricsManager is not running") and the
    cancellation is gone (a TaskGroup or asyncio.timeout no longer sees it)."""
    manager = await full_queue_on_a_stalled_disk(tmp_path / "m", stalled_disk)
    entered = asyncio.Event()

    async def handler() -> None:
        async with track_operation(manager, "api_request", "GET /orders"):
            entered.set()
        await asyncio.sleep(3600)

    task = asyncio.ensure_future(handler())
    await entered.wait()
    for _ in range(5):
        await asyncio.sleep(0)  # now in __aexit__, waiting for room
    stopping = asyncio.ensure_future(manager.stop(timeout=CAP))
    await asyncio.sleep(0)  # stop() has begun: not accepting, waiters woken
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=CAP)
        assert done
        error = None if task.cancelled() else task.exception()
        outcome = (
            "cancelled" if error is None else f"{error!r} (its context: {error.__context__!r})"
        )
    finally:
        stalled_disk.release()
        await asyncio.wait_for(stopping, CAP)
    assert outcome == "cancelled", f"the cancelled task ended with {outcome}"


async def test_under_raise_a_failed_async_blocks_full_queue_is_logged_as_queue_full(
    tmp_path: Path, stalled_disk: StalledDisk, caplog: pytest.LogCaptureFixture
) -> None:
    """README, Queue full: ``"raise"`` raises ``asyncio.QueueFull`` at once, ``"drop"``
    drops and counts in ``total_dropped``; and "If recording itself fails, that error is
    ... only logged after a failing one". Under "raise", a failed async block now goes
    through ``submit_records(timeout=0)`` only: the record is counted in
    ``total_dropped`` (record_operation's "raise" never counts) and nothing is logged,
    i.e. "drop". Before 6b2ac87 it was logged as QueueFull and not counted; the sync
    ``with`` block failing in the same place still logs QueueFull."""
    manager = await full_queue_on_a_stalled_disk(
        tmp_path / "m", stalled_disk, queue_full_policy="raise"
    )
    try:
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            with pytest.raises(ConnectionError):
                async with track_operation(manager, "job", "charge_card"):
                    raise ConnectionError("gateway down")
            for _ in range(20):
                await asyncio.sleep(0)
    finally:
        stalled_disk.release()
        await asyncio.wait_for(manager.stop(), CAP)
    assert (warnings_of(caplog), manager.stats().total_dropped) == (
        ["track_operation could not record a failed operation: QueueFull"],
        0,
    )


# =====================================================================================
# writer: a failed directory fsync, and the retry that syncs instead of writing again
# =====================================================================================

# Runs the writer process's own command with ``os.fsync`` of a directory failing (EIO)
# until the file ``<storage>.fsync-ok`` exists: the fault at the os call, in the child.
_CHILD_WITH_FAULT = textwrap.dedent(
    """
    import errno, os, stat, sys

    real_fsync = os.fsync
    healed = sys.argv[-1] + ".fsync-ok"

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode) and not os.path.exists(healed):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    os.fsync = fsync
    assert sys.argv[1:3] == ["-I", "-c"], sys.argv
    code = sys.argv[3]
    sys.argv = ["-c", *sys.argv[4:]]
    exec(compile(code, "<writer process>", "exec"), {"__name__": "__main__"})
    """
)


@pytest.fixture
def child_directory_fsync_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The writer process's directory fsyncs fail until ``heal(storage)``; the storage."""
    inject = tmp_path / "inject.py"
    inject.write_text(_CHILD_WITH_FAULT)
    python = tmp_path / "python-with-fault"
    python.write_text(f'#!/bin/sh\nexec {sys.executable} -I {inject} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    return tmp_path / "metrics"


def heal(storage: Path) -> None:
    Path(f"{storage}.fsync-ok").touch()


def rids_on_disk(storage: Path) -> list[int]:
    return [record.metadata["rid"] for record in load_records(storage)]


async def test_process_writer_a_grown_retry_after_a_failed_directory_fsync_doubles_nothing(
    child_directory_fsync_fails: Path,
) -> None:
    """README, File format: "when the directory's fsync fails, the file stays ... and
    the retry syncs the directory again rather than writing the batch under a second
    name"; writer="process": records may be in two files only "If the child dies".
    A flush writes a partial batch (rids 0-2); the directory fsync fails; 20 more
    records come. The retry sends rids 0-9 and, ahead, 10-19; the child syncs the old
    file and answers "3 records", then writes 10-19 (sent ahead). The parent takes 3,
    finds the batch in flight no longer at the head of its queue, drops that answer and
    sends 3-12, then 13-22: rids 10-19 land in two files. The thread writer, given the
    same faults, writes each rid once."""
    storage = child_directory_fsync_fails
    manager = MetricsManager(
        storage, flush_interval_seconds=60, max_batch_size=10, writer="process"
    )
    await manager.start()
    try:
        for rid in range(3):
            await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
        flushing = asyncio.ensure_future(manager.flush())  # a partial batch, written now
        await eventually(lambda: manager.stats().write_errors >= 1, "no failed write")
        flushing.cancel()  # the writer still drains it
        for rid in range(3, 23):
            await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
        errors = manager.stats().write_errors
        await eventually(lambda: manager.stats().write_errors > errors, "no grown retry")
        heal(storage)
        await manager.flush(timeout=30)
    finally:
        heal(storage)
        await manager.stop(timeout=30)
    on_disk = rids_on_disk(storage)
    doubled = sorted({rid for rid in on_disk if on_disk.count(rid) > 1})
    assert sorted(on_disk) == list(range(23)), (
        f"rids in two files: {doubled}; total_persisted={manager.stats().total_persisted}"
    )


async def test_process_writer_a_grown_retry_holding_an_unmappable_span_loses_no_span(
    child_directory_fsync_fails: Path,
) -> None:
    """README, Reliability: "every record that was accepted ends up in exactly one valid
    batch file". Spans exported to a writer="process" manager: span "first" is written
    and the directory fsync fails; then "second" and a span the child cannot map come.
    The retry (all three) syncs the old file and answers records=1 (the old batch) with
    rejected=1 (counted in the grown batch); the parent takes records + rejected = 2
    items off its queue: "first" and "second". "second" was never written, and the
    unmappable span, still queued, is rejected a second time. Seen: only "first" on
    disk, total_rejected 2."""
    from opentelemetry.sdk.trace import ReadableSpan

    from otel_json_exporter import OperationSpanExporter

    def span(name: str, start_time: int = 1) -> ReadableSpan:
        return ReadableSpan(
            name=name, attributes={}, start_time=start_time, end_time=start_time + 1
        )

    storage = child_directory_fsync_fails
    manager = MetricsManager(storage, flush_interval_seconds=60, writer="process")
    await manager.start()
    exporter = OperationSpanExporter(manager=manager)
    try:
        exporter.export([span("first")])
        flushing = asyncio.ensure_future(manager.flush())
        await eventually(lambda: manager.stats().write_errors >= 1, "no failed write")
        flushing.cancel()
        # Past the year 9999: read by export(), refused by the child's mapping.
        exporter.export([span("second"), span("far", start_time=10**21)])
        errors = manager.stats().write_errors
        await eventually(lambda: manager.stats().write_errors > errors, "no grown retry")
        heal(storage)
        await manager.flush(timeout=30)
    finally:
        heal(storage)
        await manager.stop(timeout=30)
    stats = manager.stats()
    names = [record.operation_name for record in load_records(storage)]
    assert (names, stats.total_rejected) == (["first", "second"], 1), (
        f"on disk {names}; total_persisted={stats.total_persisted}, "
        f"total_rejected={stats.total_rejected}, queue_size={stats.queue_size}"
    )


def test_names_still_increase_when_the_clock_goes_back_exactly_one_second(
    tmp_path: Path,
) -> None:
    """README, File format: "A writer's names increase ... unless the wall clock is set
    back by more than a second: names then follow the clock". ``write_rows`` keeps names
    increasing only for ``last - 1 s < moment``: a step back of exactly one second is
    followed, and the second batch is named before the first."""
    from otel_json_exporter import OperationRecord
    from otel_json_exporter.writer import BatchWriter

    moment = datetime(2025, 12, 16, 8, 0, 5, 123456, tzinfo=timezone.utc)

    def one(name: str) -> list[OperationRecord]:
        return [
            OperationRecord(
                operation_type="t", operation_name=name, duration_ms=1.0, timestamp=moment
            )
        ]

    writer = BatchWriter(tmp_path)
    first = writer.write(one("first"), now=moment)
    second = writer.write(one("second"), now=moment - timedelta(seconds=1))
    assert first.batch_id is not None
    assert second.batch_id is not None
    assert second.batch_id > first.batch_id, (first.batch_id, second.batch_id)


# =====================================================================================
# command line
# =====================================================================================


def test_summarize_with_standard_error_unwritable_still_prints_its_report(
    tmp_path: Path,
) -> None:
    """``main()`` now takes every OSError without a file name for a failed write to
    standard output, says "cannot write to standard output" and sends stdout to
    /dev/null. ``summarize DIR > report.txt 2>>/full/disk/errors.log`` with one invalid
    file: the warning's write to *stderr* fails (ENOSPC), and the report, whose stdout
    works, is thrown away: report.txt is empty (exit 1). The README's exit code 1 is for
    findings, and the table was the finding to print."""
    from otel_json_exporter import OperationRecord
    from otel_json_exporter.writer import BatchWriter

    directory = tmp_path / "metrics"
    directory.mkdir()
    now = datetime.now(timezone.utc)
    BatchWriter(directory).write(
        [OperationRecord(operation_type="t", operation_name="n", duration_ms=1.0, timestamp=now)]
    )
    (directory / "metrics_20200101_000000_000000.json").write_text('{"records":[')  # cut short
    report = tmp_path / "report.txt"
    with open(report, "w") as stdout, open("/dev/full", "w") as stderr:
        result = subprocess.run(
            [sys.executable, "-m", "otel_json_exporter", "summarize", str(directory)],
            stdout=stdout,
            stderr=stderr,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)},
        )
    assert result.returncode == 1
    assert "TOTAL" in report.read_text(), f"report.txt: {report.read_text()!r}"
