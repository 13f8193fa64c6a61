"""Trial S: a synchronous service (WSGI under gunicorn, a batch job, a prefork worker)
uses MetricsManager, track_operation and the span exporter without any event loop.

Every test here failed on the code it was written against, for the reason its
docstring gives. Real threads, real processes (``multiprocessing`` with fork and
forkserver, run from a script so that what the parent imported is the script's own
choice), real batch files; faults only at the ``os`` call. Timeouts are hang guards.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager, QueueFullPolicy, track_operation

from ._faults import WRITER_THREAD, Fault, StalledDisk, on_regular_fd
from .conftest import load_records, numbered_records

CAP = 10.0  # hang guard for anything expected to end at once


def rids(storage: Path) -> list[Any]:
    return sorted(record.metadata["rid"] for record in load_records(storage))


def run_script(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )


# =====================================================================================
# DEFECT 1. A blocking call made on the manager's own writer thread (a logging handler
# run by the writer's warning about a failed write) waited for that very thread.
# =====================================================================================


class OnWriterThread(logging.Handler):
    """Runs ``action`` once, on the writer thread, the first time the writer logs."""

    def __init__(self, action: Callable[[], object]) -> None:
        super().__init__(logging.WARNING)
        self.action = action
        self.started = False
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.result: object = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.started or threading.current_thread().name != WRITER_THREAD:
            return
        self.started = True  # before the action, which may log again
        try:
            self.result = self.action()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
def on_writer_thread() -> Iterator[Callable[[Callable[[], object]], OnWriterThread]]:
    logger = logging.getLogger("otel_json_exporter")
    handlers: list[OnWriterThread] = []

    def attach(action: Callable[[], object]) -> OnWriterThread:
        handler = OnWriterThread(action)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    try:
        yield attach
    finally:
        for handler in handlers:
            logger.removeHandler(handler)


class TestBlockingCallsOnTheWritersOwnThread:
    """The writer logs a failed write (WARNING) on its own thread, so every logging
    handler runs there. A handler that flushed or stopped the manager (an alerting
    handler, say) waited for the writer, which is itself: ``flush_sync()`` returned
    False after its whole timeout (with no timeout it never returned, and no record was
    ever written again), and ``stop_sync()`` raised TimeoutError after its whole timeout,
    saying the records "may yet reach the disk". A handler that recorded an operation
    (``track_operation``, "block") while the queue was full waited for room that only
    that thread makes: every producer then waited, until something stopped the manager.
    """

    def test_flush_sync_there_raises_at_once(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        on_writer_thread: Callable[[Callable[[], object]], OnWriterThread],
    ) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=60, max_batch_size=2)
        Fault(monkeypatch, "fsync", errno.EIO, failures=1, match=on_regular_fd)
        handler = on_writer_thread(lambda: manager.flush_sync(CAP))
        manager.start_sync()
        try:
            manager.submit_records(numbered_records(2))
            assert handler.done.wait(CAP * 2), "the handler never ended"
            assert isinstance(handler.error, RuntimeError), handler.result
            assert "writer thread" in str(handler.error)
        finally:
            manager.stop_sync(CAP)
        assert rids(storage) == [0, 1]

    def test_stop_sync_there_raises_at_once_and_changes_nothing(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        on_writer_thread: Callable[[Callable[[], object]], OnWriterThread],
    ) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=60, max_batch_size=2)
        Fault(monkeypatch, "fsync", errno.EIO, failures=1, match=on_regular_fd)
        handler = on_writer_thread(lambda: manager.stop_sync(CAP))
        manager.start_sync()
        try:
            manager.submit_records(numbered_records(2))
            assert handler.done.wait(CAP * 2), "the handler never ended"
            assert isinstance(handler.error, RuntimeError), repr(handler.error)
            assert "writer thread" in str(handler.error)
            assert manager.is_running
            assert manager.flush_sync(CAP)
        finally:
            manager.stop_sync(CAP)
        assert rids(storage) == [0, 1]

    def test_a_record_made_there_with_the_queue_full_does_not_wait_for_room(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        on_writer_thread: Callable[[Callable[[], object]], OnWriterThread],
    ) -> None:
        manager = MetricsManager(
            storage, flush_interval_seconds=60, max_batch_size=2, max_queue_size=2
        )

        def record_the_warning() -> None:
            with track_operation(manager, "log", "warning"):
                pass

        Fault(monkeypatch, "fsync", errno.EIO, failures=1, match=on_regular_fd)
        handler = on_writer_thread(record_the_warning)
        manager.start_sync()
        try:
            manager.submit_records(numbered_records(2))  # the queue is full
            assert handler.done.wait(CAP), "the writer thread waited for room it alone makes"
            assert handler.error is None
            assert manager.flush_sync(CAP)
            # Under "block", dropped and counted: as if no room came within its timeout.
            assert manager.stats().total_dropped == 1
        finally:
            manager.stop_sync(CAP)
        assert rids(storage) == [0, 1]


# =====================================================================================
# DEFECT 2. A manager first imported and started in a multiprocessing child (fork or
# forkserver) lost every record it had not written when the child ended.
# =====================================================================================


CHILDREN_START_THEIR_OWN = """
    import json
    import multiprocessing
    import sys

    import otel_json_exporter  # imports no manager module: its names load when first used


    def work(storage: str, child: int) -> None:
        from otel_json_exporter import MetricsManager, QueueFullPolicy, track_operation

        manager = MetricsManager(storage, flush_interval_seconds=60)
        manager.start_sync()
        for number in range(50):
            with track_operation(manager, "job", "step", metadata={"rid": child * 100 + number}):
                pass
        # No stop_sync(): README says the exit flushes, also in a multiprocessing child.


    if __name__ == "__main__":
        storage, method = sys.argv[1], sys.argv[2]
        assert "otel_json_exporter.manager" not in sys.modules
        context = multiprocessing.get_context(method)
        children = [context.Process(target=work, args=(storage, child)) for child in range(2)]
        for child in children:
            child.start()
        for child in children:
            child.join(60)
        print(json.dumps([child.exitcode for child in children]))
"""


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_a_manager_a_multiprocessing_child_imports_and_starts_is_flushed_when_it_ends(
    tmp_path: Path, storage: Path, method: str
) -> None:
    """README: "A child forked by ``multiprocessing`` ends with ``os._exit``, which skips
    ``atexit``: the manager flushes there from ``multiprocessing``'s own exit finalizers
    instead." That finalizer was set up only in children forked after the manager module
    was imported: in the parent, or in the forkserver process. The package's names load
    when first used, so a parent that imported ``otel_json_exporter`` (or nothing) and
    children that made their own managers lost all 100 records, silently; spawn children
    (which end by ``sys.exit``) kept theirs.
    """
    done = run_script(tmp_path, CHILDREN_START_THEIR_OWN, str(storage), method)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, 0], done.stderr
    assert rids(storage) == [*range(50), *range(100, 150)]


# =====================================================================================
# DEFECT 3. Spans ended in a multiprocessing child stayed in its BatchSpanProcessor
# when the child ended: never written.
# =====================================================================================


SPANS_IN_CHILDREN = """
    import json
    import multiprocessing
    import sys
    from concurrent.futures import ProcessPoolExecutor

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from otel_json_exporter import OperationSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OperationSpanExporter(sys.argv[1], flush_interval_seconds=60))
    )
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("trial")


    def work(child: int) -> int:
        for number in range(20):
            with tracer.start_as_current_span("step", attributes={"rid": child * 100 + number}):
                pass
        return child


    if __name__ == "__main__":
        work(0)  # the parent's own spans, still in its processor when the children fork
        context = multiprocessing.get_context("fork")
        process = context.Process(target=work, args=(1,))
        process.start()
        process.join(60)
        with ProcessPoolExecutor(2, mp_context=context) as pool:
            results = list(pool.map(work, [2, 3]))
        provider.shutdown()
        print(json.dumps([process.exitcode, results]))
"""


def test_spans_a_multiprocessing_child_ended_are_written_when_it_ends(
    tmp_path: Path, storage: Path
) -> None:
    """README, "Fork": "spans ended in the child are written by the child, once". A
    ``multiprocessing`` child ends with ``os._exit``: no ``atexit`` hook runs, so the
    SDK never shut its tracer provider down there, and the child's spans stayed in the
    ``BatchSpanProcessor`` (which exports every 5 s) when it ended. The manager was
    flushed there (README: "the manager flushes there from multiprocessing's own exit
    finalizers"), but those spans had not reached it: the 60 spans of a
    ``multiprocessing.Process`` and a ``ProcessPoolExecutor`` (fork) were all lost; the
    parent's 20 were written once. The SIGTERM handler already flushed the tracer
    provider before the managers; the child's exit now does too.
    """
    done = run_script(tmp_path, SPANS_IN_CHILDREN, str(storage))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [0, [2, 3]], done.stderr
    expected = [child * 100 + number for child in range(4) for number in range(20)]
    assert rids(storage) == expected


# =====================================================================================
# DEFECT 4. The blocking calls said "not running" and nothing of what to do.
# =====================================================================================


def test_the_blocking_calls_say_how_to_start_a_manager(storage: Path) -> None:
    """A synchronous service that wrote ``manager.start()`` (a coroutine: nothing ran,
    and Python warns only once it is collected) then recorded got "MetricsManager is not
    running" from ``submit_records``, ``flush_sync`` and a tracked block, naming no way
    to start it; ``record_operation``'s own message says "await start() first", which a
    thread with no event loop cannot do. They now name ``start_sync()``.
    """
    manager = MetricsManager(storage)
    pending = manager.start()  # the mistake: a coroutine, never awaited
    pending.close()
    with pytest.raises(RuntimeError, match=r"not running; .*start_sync\(\)"):
        manager.submit_records(numbered_records(1))
    with pytest.raises(RuntimeError, match=r"not running; .*start_sync\(\)"):
        manager.flush_sync()
    with (
        pytest.raises(RuntimeError, match=r"not running; .*start_sync\(\)"),
        track_operation(manager, "job", "step"),
    ):
        pass


# =====================================================================================
# MISSING API. No way to record one operation from a thread with no event loop.
# =====================================================================================


class TestRecordOperationSync:
    """``record_operation`` is a coroutine; its blocking counterparts covered every method
    but it. A thread recording one operation whose duration it already knows (a WSGI view
    timing a call it made, a worker reporting a job's outcome) had ``submit_records``, with
    an ``OperationRecord`` it had to build and stamp itself, validated twice, and dropped at
    once when the queue was full whatever ``queue_full_policy`` said; ``track_operation``,
    which times a block and cannot be given a duration, or a failure that raised nothing;
    or ``asyncio.run(manager.record_operation(...))``, an event loop per record.
    ``record_operation_sync`` takes ``record_operation``'s arguments and applies the same
    checks, timestamp and policy, waiting for room on the calling thread under "block".
    """

    def test_records_from_threads_land_once_with_what_they_were_given(self, storage: Path) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=60, max_batch_size=100)
        manager.start_sync()

        def produce(thread: int) -> None:
            for number in range(200):
                rid = thread * 1000 + number
                manager.record_operation_sync(
                    "job",
                    "step",
                    duration_ms=float(number),
                    success=number % 10 != 0,
                    error_message="TimeoutError: upstream" if number % 10 == 0 else None,
                    metadata={"rid": rid},
                )

        threads = [threading.Thread(target=produce, args=(thread,)) for thread in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CAP * 3)
            assert not thread.is_alive()
        manager.stop_sync(CAP)
        records = load_records(storage)
        assert sorted(r.metadata["rid"] for r in records) == [
            thread * 1000 + number for thread in range(8) for number in range(200)
        ]
        for record in records:
            number = record.metadata["rid"] % 1000
            assert record.duration_ms == float(number)
            assert record.success is (number % 10 != 0)
            assert record.error_message == (None if record.success else "TimeoutError: upstream")
            assert record.timestamp.tzinfo is not None

    def test_the_checks_of_record_operation(self, storage: Path) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=60)
        with pytest.raises(RuntimeError, match=r"start_sync\(\)"):
            manager.record_operation_sync("job", "step", 1.0)
        manager.start_sync()
        try:
            with pytest.raises(ValueError, match="duration_ms"):
                manager.record_operation_sync("job", "step", -1.0)
            with pytest.raises(ValueError, match="'email'"):
                manager.record_operation_sync("job", "step", 1.0, metadata={"email": "x"})
            manager.record_operation_sync(
                "job", "mail jean.tremblay@example.com", 1.0, metadata={"rid": 1}
            )
            assert manager.stats().total_rejected == 2
        finally:
            manager.stop_sync(CAP)
        with pytest.raises(RuntimeError, match="not running"):
            manager.record_operation_sync("job", "step", 1.0)
        [record] = load_records(storage)
        assert record.operation_name == "mail [REDACTED]"
        assert manager.stats().pii_redacted == 1


def _full(storage: Path, disk: StalledDisk, policy: QueueFullPolicy) -> MetricsManager:
    """A running manager whose one-record queue is full while its writer is stuck in fsync."""
    manager = MetricsManager(
        storage,
        flush_interval_seconds=60,
        max_queue_size=1,
        max_batch_size=1,
        queue_full_policy=policy,
    )
    manager.start_sync()
    manager.record_operation_sync("fill", "fill", 1.0, metadata={"rid": -1})
    assert disk.entered.wait(CAP), "the writer never began its write"
    return manager


def _producer(manager: MetricsManager) -> tuple[threading.Thread, list[BaseException]]:
    """A thread recording one operation (rid 1), started and given 0.2 s to wait for
    room; what it raised goes to the list."""
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            manager.record_operation_sync("job", "step", 1.0, metadata={"rid": 1})
        except BaseException as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(0.2)
    return producer, errors


class TestRecordOperationSyncWithTheQueueFull:
    def test_block_waits_for_room_then_records_once(
        self, storage: Path, stalled_disk: StalledDisk
    ) -> None:
        manager = _full(storage, stalled_disk, "block")
        producer, errors = _producer(manager)
        assert producer.is_alive(), "it did not wait for room"
        stalled_disk.release()
        producer.join(CAP)
        assert not producer.is_alive()
        assert errors == []
        manager.stop_sync(CAP)
        assert rids(storage) == [-1, 1]
        assert manager.stats().total_dropped == 0

    def test_block_gets_runtime_error_when_the_manager_stops_meanwhile(
        self, storage: Path, stalled_disk: StalledDisk
    ) -> None:
        manager = _full(storage, stalled_disk, "block")
        producer, errors = _producer(manager)
        stopping = threading.Thread(target=manager.stop_sync, args=(CAP,))
        stopping.start()
        producer.join(CAP)
        assert not producer.is_alive(), "stop() did not wake the waiting producer"
        stalled_disk.release()
        stopping.join(CAP)
        assert [type(error) for error in errors] == [RuntimeError]
        assert rids(storage) == [-1]

    def test_raise_raises_queue_full_and_drop_counts(
        self, storage: Path, stalled_disk: StalledDisk
    ) -> None:
        raising = _full(storage / "raise", stalled_disk, "raise")
        dropping = _full(storage / "drop", stalled_disk, "drop")
        try:
            with pytest.raises(asyncio.QueueFull, match="full"):
                raising.record_operation_sync("job", "step", 1.0, metadata={"rid": 1})
            dropping.record_operation_sync("job", "step", 1.0, metadata={"rid": 1})
            # As record_operation: "raise" tells the caller, "drop" counts.
            assert raising.stats().total_dropped == 0
            assert dropping.stats().total_dropped == 1
        finally:
            stalled_disk.release()
            raising.stop_sync(CAP)
            dropping.stop_sync(CAP)
        assert rids(storage / "raise") == rids(storage / "drop") == [-1]

    def test_on_the_writer_thread_block_does_not_wait_for_itself(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        on_writer_thread: Callable[[Callable[[], object]], OnWriterThread],
    ) -> None:
        manager = MetricsManager(
            storage, flush_interval_seconds=60, max_batch_size=2, max_queue_size=2
        )
        Fault(monkeypatch, "fsync", errno.EIO, failures=1, match=on_regular_fd)
        handler = on_writer_thread(lambda: manager.record_operation_sync("log", "warning", 0.0))
        manager.start_sync()
        try:
            manager.submit_records(numbered_records(2))  # the queue is full
            assert handler.done.wait(CAP), "the writer thread waited for room it alone makes"
            assert handler.error is None
            assert manager.flush_sync(CAP)
            assert manager.stats().total_dropped == 1
        finally:
            manager.stop_sync(CAP)
        assert rids(storage) == [0, 1]
