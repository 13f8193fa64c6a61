"""Trial S: a synchronous service (WSGI under gunicorn, a batch job, a prefork worker)
uses MetricsManager, track_operation and the span exporter without any event loop.

Every test here failed on the code it was written against, for the reason its
docstring gives. Real threads, real processes (``multiprocessing`` with fork and
forkserver, run from a script so that what the parent imported is the script's own
choice), real batch files; faults only at the ``os`` call. Timeouts are hang guards.
"""

from __future__ import annotations

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

from otel_json_exporter import MetricsManager, track_operation

from ._faults import WRITER_THREAD, Fault, on_regular_fd
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
        from otel_json_exporter import MetricsManager, track_operation

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
