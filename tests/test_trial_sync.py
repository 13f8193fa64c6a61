"""Trial S: a synchronous service (WSGI under gunicorn, a batch job, a prefork worker)
uses MetricsManager, track_operation and the span exporter without any event loop.

Every test here failed on the code it was written against, for the reason its
docstring gives. Real threads, real processes (``multiprocessing`` with fork and
forkserver, run from a script so that what the parent imported is the script's own
choice), real batch files; faults only at the ``os`` call. Timeouts are hang guards.
"""

from __future__ import annotations

import errno
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
