"""``MetricsManager``: validation and PII check, the queue, the writer thread, stats.

Producers (coroutines on any event loop, or plain threads such as the OTel SDK's
export thread) validate a record, check it against the PII rule and append it
to one bounded, lock-protected queue. One writer thread per manager takes
batches from the head of that queue and hands them to
:class:`~otel_json_exporter.writer.BatchWriter`. A record leaves the queue only
once its batch is on disk, so a failed write loses nothing and memory stays
bounded by ``max_queue_size``.

The writer is a plain thread, not a task on an event loop nor a job in a
thread pool: blocking ``fsync`` never stalls the application's loop, and
writes still work at interpreter exit, when thread pools refuse new work.
Coroutines that must wait (for room in the queue, for a flush, for ``stop``)
park a future that the writer thread resolves through
``loop.call_soon_threadsafe``: :meth:`MetricsManager._wait_async` and
:meth:`MetricsManager._wake_waiters` are the one place where threads meet an
event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import logging
import math
import multiprocessing.util
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from itertools import islice
from pathlib import Path
from typing import Any, Literal, NoReturn, cast

from pydantic import ValidationError

from otel_json_exporter import _sigterm
from otel_json_exporter._plain import plain_row
from otel_json_exporter._process_writer import ProcessBatchWriter, QueuedItem, WriterProcessError
from otel_json_exporter._span_rows import SpanSnapshot
from otel_json_exporter.pii import (
    DEFAULT_POLICY,
    PiiPolicy,
    mask_database_values,
    safe_validation_message,
)
from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    MetricsStats,
    OperationRecord,
    QueuedRow,
    RecordRow,
    build_row,
    queued_row,
    row_of,
    text_of,
)
from otel_json_exporter.writer import (
    MAX_RETENTION_DAYS,
    BatchWriter,
    delete_expired_batches,
    remove_stale_temp_files,
)

__all__ = ["MetricsManager", "QueueFullPolicy", "WriterKind", "flush_on_sigterm"]

logger = logging.getLogger("otel_json_exporter")

WriterKind = Literal["thread", "process"]
"""Where batches are encoded and written.

``"thread"`` (default): in the manager's writer thread. ``"process"``: in a
child process that the writer thread hands batches to
(:mod:`otel_json_exporter._process_writer`); same files and guarantees, but
the encoding and disk work no longer share the application's GIL, which
raises throughput when producers are busy. A child that dies has its batches
in flight written again, which may double those records.
"""

QueueFullPolicy = Literal["block", "raise", "drop"]
"""What ``record_operation`` does when the queue is full.

``"block"`` (default) waits for room (backpressure); ``"raise"`` raises
``asyncio.QueueFull`` at once; ``"drop"`` drops the record, counts it in
``total_dropped`` and returns.
"""

_INITIAL_BACKOFF = 0.1
_MAX_BACKOFF = 30.0
_MAX_DOUBLINGS = 16  # 0.1 * 2**16 is well past the cap, and 2**n never overflows
_URGENT_RETRY = 0.05  # flush() and stop() retry at once, but never spin on a dead disk
_FAILURE_LOG_EVERY = 30.0  # a failing disk's warning, repeated at most this often
_POISON_AFTER = 3  # unexpected failures of one batch in a row before records are checked alone
_RETENTION_EVERY = 3600.0
_EXIT_FLUSH_TIMEOUT = 10.0

_MANAGERS: weakref.WeakSet[MetricsManager] = weakref.WeakSet()
_exiting = False  # the interpreter's exit flush has begun (_flush_at_exit)

# The blocking calls' error: a thread with no event loop starts a manager with start_sync().
_NOT_RUNNING = "MetricsManager is not running; start it first: start_sync(), or await start()"


def bounded_timeout(timeout: float | None) -> float | None:
    """A timeout that ``threading`` accepts: a huge or infinite one means no timeout."""
    return None if timeout is None or timeout >= threading.TIMEOUT_MAX else max(timeout, 0.0)


def _check_timeout(timeout: object, *, none_allowed: bool) -> None:
    """TypeError for a timeout that is no number of seconds, ValueError for NaN or below 0.

    Checked before anything changes. NaN would reach the event loop's timer heap, where
    it compares false with every other time.
    """
    if timeout is None and none_allowed:
        return
    if not _is_number(timeout):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:  # type: ignore[arg-type, operator]  # a number
        raise ValueError("timeout must be a number of seconds, at least 0")


def _is_number(value: object) -> bool:
    """An int or a float, not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _undeletable(path: Path, exc: OSError) -> None:
    """Retention's word on an expired batch file it may not delete; it goes on."""
    logger.warning("retention: cannot delete %s: %s", path.name, exc.strerror or type(exc).__name__)


class MetricsManager:
    """Collects operation records and writes them in atomic JSON batch files.

    >>> async def main() -> None:  # doctest: +SKIP
    ...     manager = MetricsManager("./metrics")
    ...     await manager.start()
    ...     await manager.record_operation("api_request", "GET /users", 42.5)
    ...     await manager.stop()

    A batch is written as soon as ``max_batch_size`` records wait (or the queue
    is full), and at the latest every ``flush_interval_seconds``; a file never
    holds more than ``max_batch_size`` records. ``queue_full_policy`` says what
    ``record_operation`` does when ``max_queue_size`` records wait (see
    :data:`QueueFullPolicy`). ``pii_policy`` adds blocked or allowed keys to the
    PII rule. With ``retention_days``, batch files older than that are deleted
    at start and hourly.

    Lifecycle: ``start`` twice raises RuntimeError; ``stop`` when not running
    does nothing; recording when not running raises RuntimeError; a stopped
    manager can be started again, and records it still held are written then.
    All methods may be called from any thread and any event loop.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str],
        flush_interval_seconds: float = 5.0,
        max_batch_size: int = 1000,
        max_queue_size: int = 10000,
        *,
        queue_full_policy: QueueFullPolicy = "block",
        pii_policy: PiiPolicy | None = None,
        retention_days: float | None = None,
        writer: WriterKind = "thread",
    ) -> None:
        if not (_is_number(flush_interval_seconds) and flush_interval_seconds > 0):
            raise ValueError("flush_interval_seconds must be a positive number")
        if not math.isfinite(flush_interval_seconds):
            raise ValueError("flush_interval_seconds must be finite")
        for label, size in (("max_batch_size", max_batch_size), ("max_queue_size", max_queue_size)):
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"{label} must be a positive integer")
        if queue_full_policy not in ("block", "raise", "drop"):
            raise ValueError("queue_full_policy must be 'block', 'raise' or 'drop'")
        if writer not in ("thread", "process"):
            raise ValueError("writer must be 'thread' or 'process'")
        if retention_days is not None and not (
            _is_number(retention_days) and 0 < retention_days <= MAX_RETENTION_DAYS
        ):
            raise ValueError(
                f"retention_days must be a positive number of days, at most {MAX_RETENTION_DAYS}"
            )
        path = os.fspath(storage_path)
        if not isinstance(path, str) or not path:
            raise ValueError("storage_path must be a non-empty path")
        # Made absolute now, as logging.FileHandler does: a later os.chdir() must not
        # move the batches, or retention, to another directory.
        self.storage_path = Path(os.path.abspath(path))
        self.flush_interval_seconds = float(flush_interval_seconds)
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        # A full queue is written at once too: blocked producers must not wait for the timer.
        self._write_at = min(max_batch_size, max_queue_size)
        self.queue_full_policy: QueueFullPolicy = queue_full_policy
        self.pii_policy = pii_policy or DEFAULT_POLICY
        self.retention_days = retention_days
        self.writer: WriterKind = writer
        self._batch_writer: BatchWriter | ProcessBatchWriter = (
            BatchWriter(self.storage_path)
            if writer == "thread"
            else ProcessBatchWriter(
                self.storage_path, self._following, self.pii_policy, self._ending
            )
        )
        self._reset_state()
        # Rows (a third of a model's memory), and spans the writer process maps.
        self._buffer: deque[QueuedItem] = deque()
        _MANAGERS.add(self)

    def _reset_state(self) -> None:
        """(Re)create the lock, the counters and the thread handle: at init and after fork."""
        # Re-entrant: a signal handler runs on the main thread between two bytecodes,
        # maybe while record_operation holds the lock, and a handler that calls
        # stop_sync() (on SIGTERM) must not wait for a lock its own thread holds. Its
        # wait releases the lock for the writer, as any Condition wait does.
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._async_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._worker_alive = False
        self._accepting = False
        self._stop_deadline: float | None = None
        self._stop_waiters = 0  # stop() calls waiting now (a cancelled one waits no more)
        self._stop_tried = False  # the writer has made an attempt for the latest stop()
        # Counts stop() calls, so that a write begun before the latest one is not taken
        # for its attempt; _taken_for_stop is the count a batch was taken under (-1: running).
        self._stop_generation = 0
        self._taken_for_stop = -1
        self._writing = 0  # rows of the batch the writer has taken and not yet answered
        self._drain_to = 0  # write until this many records have left the queue
        self._urgent_waiters = 0  # flush() calls waiting: retry at once, not after the backoff
        self._accepted = 0
        self._persisted = 0
        self._settled = 0  # records that left the queue: persisted, or dropped as unencodable
        # Records dropped as unencodable behind records still queued, as [records still
        # ahead, records dropped]: counted as settled only once those ahead have left,
        # so that _settled always counts a prefix of the records in the order accepted
        # (what flush() compares its target with).
        self._settled_later: list[list[int]] = []
        self._batches = 0
        self._dropped = 0
        self._rejected = 0
        self._write_errors = 0
        self._worker_errors = 0
        self._bytes = 0
        self._redacted = 0
        self._last_flush: datetime | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the writer thread. RuntimeError if already running.

        Creates ``storage_path`` if needed and raises OSError (a
        :class:`~otel_json_exporter.writer.StorageError`) at once when it cannot
        be used. Removes temporary files that dead writers left behind, and
        expired batch files with ``retention_days``. This is brief blocking
        file-system work, done once, on the caller's thread: errors belong to
        ``start()``, not to a background task.
        """
        self.start_sync()

    def start_sync(self) -> None:
        """Blocking :meth:`start`, for code that runs on no event loop."""
        with self._lock:
            self._check_startable()
        self._batch_writer.prepare()
        try:
            for path in remove_stale_temp_files(self.storage_path):
                logger.info("removed stale temporary file %s", path.name)
            self._apply_retention()
        except BaseException:
            with self._lock:
                idle = not self._worker_alive
            if idle:  # a process writer's child, started for nothing: end it
                self._batch_writer.close()
            raise
        with self._lock:
            self._check_startable()  # again: another thread may have started it meanwhile
            self._accepting = True
            self._stop_deadline = None
            self._drain_to = self._accepted  # everything queued, and dropped behind it
            if self._worker_alive:
                # A stop() that gave up (or is still waiting) left its writer finishing
                # an attempt: that writer goes on, and the waiting stop() returns.
                self._cond.notify_all()
            else:
                self._start_worker()
        self._wake_waiters()
        _sigterm.install(_flush_managers, _stop_for_sigterm, _a_lock_held_here)
        if multiprocessing.parent_process() is not None:
            # A multiprocessing child ends with os._exit: flushed by its finalizers,
            # even when this module was first imported after the child began.
            _flush_when_a_multiprocessing_child_exits(None)

    def _check_startable(self) -> None:
        if self._accepting:
            raise RuntimeError("MetricsManager is already running")
        if _ending.is_set():
            raise RuntimeError("the process is ending (SIGTERM): no manager starts any more")

    def _start_worker(self) -> None:
        self._worker_alive = True
        self._thread = threading.Thread(
            target=self._run, name="otel-json-exporter-writer", daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            # No thread (Python 3.12 refuses one at interpreter exit): none is alive.
            self._worker_alive = False
            self._thread = None
            raise

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting records, write everything accepted, stop the writer.

        Raises ``asyncio.TimeoutError`` naming how many records are not on disk
        when that takes longer than ``timeout`` seconds: those of a batch being
        written may yet land (the message counts them), the others stay in memory
        and are written by ``start()`` or ``stop()`` again. Does nothing when not
        running; while another ``stop()`` is under way, waits with its own timeout,
        and the later deadline holds.
        """
        if self._begin_stop(timeout):
            try:
                await self._wait_async(self._stopped, timeout)
            finally:
                self._stop_waited()
            self._end_stop(timeout)

    def stop_sync(self, timeout: float = 10.0) -> None:
        """Blocking :meth:`stop`, for code that runs on no event loop.

        RuntimeError on the manager's own writer thread (a logging handler), which it
        would wait for; nothing changes then. The same goes for the flushes.
        """
        if self._begin_stop(timeout):
            try:
                self._wait_sync(self._stopped, timeout)
            finally:
                self._stop_waited()
            self._end_stop(timeout)

    def _begin_stop(self, timeout: float) -> bool:
        # Checked before anything changes: a bad timeout must not leave a half-stopped manager.
        _check_timeout(timeout, none_allowed=False)
        self._refuse_on_writer_thread("stop")
        with self._lock:
            if self._accepting:
                self._accepting = False
            elif self._worker_alive:
                pass  # a stop() is under way: the later of the two deadlines holds
            elif self._buffer:
                # A stop() that gave up left records: this one tries again.
                self._start_worker()
            else:
                self._thread = None
                return False
            deadline = time.monotonic() + timeout
            if self._stop_deadline is not None and self._stop_waiters:
                # A stop() with a shorter timeout must not cut another one short (one
                # that was cancelled waits no more: its deadline does not hold).
                deadline = max(deadline, self._stop_deadline)
            self._stop_deadline = deadline
            self._stop_waiters += 1
            self._stop_tried = False  # at least one attempt, even with a zero timeout
            self._stop_generation += 1
            self._drain_to = self._accepted
        # Every waiter, on every loop too: a producer waiting for room gets RuntimeError
        # now, not once a stuck write returns.
        self._wake_waiters()
        return True

    def _stop_waited(self) -> None:
        with self._lock:
            self._stop_waiters -= 1

    def _holds_records(self) -> bool:
        """Whether records wait in memory, or a writer still runs (a stop() under way)."""
        with self._lock:
            return bool(self._buffer) or self._worker_alive

    def _stopped(self) -> bool:
        # Started again meanwhile also ends a stop(): nothing it held is lost.
        return not self._worker_alive or self._accepting

    def _end_stop(self, timeout: float) -> None:
        with self._lock:
            if self._accepting:
                return
            left = len(self._buffer)
            if self._stopped():
                self._thread = None
            writing = self._writing if self._worker_alive else 0
            going_on = self._worker_alive and self._stop_waiters > 0 and not self._stop_expired()
            # A batch the writer took before this stop() is not its attempt: the writer
            # makes that attempt after it, deadline or not (see _next_batch).
            attempt_due = (
                self._worker_alive
                and not self._stop_tried
                and self._taken_for_stop != self._stop_generation
            )
        writing = min(writing, left)
        attempt = min(self.max_batch_size, left - writing) if attempt_due else 0
        if left:
            if going_on:
                detail = "; another stop() with a later deadline is still writing them"
            elif writing and attempt:
                detail = (
                    f"; {writing} of them are in a batch still being written, and up to "
                    f"{attempt} more in the stop's one attempt after it, which may yet "
                    "reach the disk"
                )
            elif writing:
                detail = (
                    f"; {writing} of them are in a batch still being written, "
                    "which may yet reach the disk"
                )
            elif attempt:
                detail = (
                    f"; up to {attempt} of them, the stop's one attempt, may yet reach the disk"
                )
            else:
                detail = ""
            logger.error(
                "stop: %d records were not persisted within %.3gs%s", left, timeout, detail
            )
            raise asyncio.TimeoutError(
                f"MetricsManager.stop: {left} records were not persisted within {timeout}s{detail}"
            )

    # -- producing -----------------------------------------------------------------

    async def record_operation(
        self,
        operation_type: str,
        operation_name: str,
        duration_ms: float,
        success: bool = True,
        error_message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Validate one operation and queue it; O(1) while the queue has room.

        Raises ValueError when the record is invalid or its metadata holds PII
        (the message names the key, never the value), RuntimeError when the
        manager is not running, and ``asyncio.QueueFull`` under the ``"raise"``
        policy. E-mail addresses in ``operation_name`` and ``error_message`` are
        replaced by ``[REDACTED]``; ``error_message`` is cut to 1,000 characters.
        """
        if not self._accepting:
            raise RuntimeError("MetricsManager is not running; await start() first")
        now_us = time.time_ns() // 1000
        row = plain_row(
            operation_type,
            operation_name,
            duration_ms,
            now_us,
            success,
            error_message,
            metadata,
            self.pii_policy.plain_keys,
        )
        if row is None:  # not the plain common case: the full checks, masking, errors
            row = self._build_row(
                operation_type,
                operation_name,
                duration_ms,
                now_us,
                success,
                error_message,
                metadata,
            )
        # Queued here, not in a method of its own: a call costs a sixth of queueing.
        # ``with`` rather than acquire() and release(), which cost half as much: a
        # KeyboardInterrupt between acquire() and ``try`` would leave the lock held.
        buffer = self._buffer
        while True:
            with self._lock:
                if not self._accepting:
                    raise RuntimeError("MetricsManager is not running")
                if len(buffer) < self.max_queue_size:
                    buffer.append(row)
                    self._accepted += 1
                    # Only the writer waits for a full batch, and it checks the length
                    # before it waits: waking it when the queue reaches a batch is
                    # enough, and notify_all on every later record cost a third of
                    # queueing.
                    if len(buffer) == self._write_at:
                        self._cond.notify_all()
                    return
                if self.queue_full_policy == "drop":
                    self._dropped += 1
                    return
            if self.queue_full_policy == "raise":
                raise asyncio.QueueFull(f"metrics queue is full ({self.max_queue_size} records)")
            await self._wait_async(self._has_room, None)

    def record_operation_sync(
        self,
        operation_type: str,
        operation_name: str,
        duration_ms: float,
        success: bool = True,
        error_message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Blocking :meth:`record_operation`, for code that runs on no event loop.

        The same checks, masking, timestamp and errors. A full queue is handled by
        ``queue_full_policy`` as there: ``"block"`` waits for room on the calling thread
        (RuntimeError if the manager stops meanwhile), ``"raise"`` raises
        ``asyncio.QueueFull``, ``"drop"`` drops the record and counts it. On the
        manager's own writer thread (a logging handler), which alone makes room,
        ``"block"`` drops and counts instead of waiting for itself.
        """
        if not self._accepting:
            raise RuntimeError(_NOT_RUNNING)
        now_us = time.time_ns() // 1000
        row = plain_row(
            operation_type,
            operation_name,
            duration_ms,
            now_us,
            success,
            error_message,
            metadata,
            self.pii_policy.plain_keys,
        )
        if row is None:  # not the plain common case: the full checks, masking, errors
            row = self._build_row(
                operation_type,
                operation_name,
                duration_ms,
                now_us,
                success,
                error_message,
                metadata,
            )
        with self._cond:
            while True:
                if not self._accepting:
                    raise RuntimeError(_NOT_RUNNING)
                if len(self._buffer) < self.max_queue_size:
                    self._buffer.append(row)
                    self._accepted += 1
                    if len(self._buffer) == self._write_at:
                        self._cond.notify_all()
                    return
                if self.queue_full_policy == "raise":
                    full = f"metrics queue is full ({self.max_queue_size} records)"
                    raise asyncio.QueueFull(full)
                if self.queue_full_policy == "drop" or threading.current_thread() is self._thread:
                    self._dropped += 1
                    return
                # Woken by the writer after each batch, and by stop().
                self._cond.wait()

    def _build_row(
        self,
        operation_type: str,
        operation_name: str,
        duration_ms: float,
        timestamp_us: int,
        success: bool,
        error_message: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> QueuedRow:
        operation_type, operation_name, error_message, redacted = self._mask_texts(
            operation_type, operation_name, error_message
        )
        problem = None
        try:
            row = build_row(
                operation_type,
                operation_name,
                duration_ms,
                timestamp_us,
                success,
                error_message,
                metadata,
            )
            self.pii_policy.check_metadata(row[6])
            queued = queued_row(row)
        except ValidationError as exc:
            problem = safe_validation_message(exc, policy=self.pii_policy)
        except ValueError as exc:
            problem = str(exc)
        except RuntimeError:  # "dictionary changed size during iteration"
            problem = (
                "metadata changed while it was being recorded; pass a dict no other thread changes"
            )
        if problem is not None:
            # Raised outside the except block, so no exception holding the input
            # (pydantic's keeps it) is chained to the error as its __context__.
            self._count_rejected()
            raise ValueError(problem)
        if redacted:
            with self._lock:
                self._redacted += redacted
        return queued

    def _mask_texts(
        self, operation_type: Any, operation_name: Any, error_message: Any
    ) -> tuple[Any, Any, Any, int]:
        """The free texts of a record with their PII masked, not refused; and the count.

        The error message also loses the row values a database error quotes, and is
        cut to its length after masking, so that a cut never leaves half of what the
        check refuses.
        """
        operation_type, in_type = self._mask_emails(operation_type)
        operation_name, in_name = self._mask_emails(operation_name)
        in_values = 0
        if isinstance(error_message, str):
            # First: the other masking would take "(name)=(Jean" for a name=value.
            error_message, in_values = mask_database_values(text_of(error_message))
        error_message, in_error = self._mask_emails(error_message)
        in_error += in_values
        if isinstance(error_message, str) and len(error_message) > MAX_ERROR_MESSAGE_LENGTH:
            error_message = self.pii_policy.fit(error_message, MAX_ERROR_MESSAGE_LENGTH)
        return operation_type, operation_name, error_message, in_type + in_name + in_error

    def _mask_emails(self, text: Any) -> tuple[Any, int]:
        # Names and error messages are free text: an address there is masked, not refused.
        if isinstance(text, str):
            if type(text) is not str:
                text = text_of(text)  # what is checked is what is written
            if self.pii_policy.contains_pii(text):
                return self.pii_policy.mask_free_text(text)  # as a span's texts are
        return text, 0

    def _count_rejected(self) -> None:
        with self._lock:
            self._rejected += 1

    def _has_room(self) -> bool:
        return len(self._buffer) < self.max_queue_size or not self._accepting

    def submit_records(
        self,
        records: Iterable[OperationRecord],
        *,
        timeout: float = 0.0,
    ) -> int:
        """Queue validated records from any thread, without an event loop.

        PII in their names and error messages is masked, as ``record_operation``
        masks it. Their metadata is checked against the PII rule: if any holds a
        PII key, an e-mail address or credentials, ValueError says where (never
        the value) and none is queued. Waits at most ``timeout`` seconds for room;
        records that still do not fit, or that were still waiting when the
        manager stopped, are dropped and counted in ``total_dropped``. Returns
        how many were accepted. Raises RuntimeError when the manager is not
        running. The span exporter, which masks PII rather than refusing it,
        hands records over the same way, as rows.
        """
        pending = list(records)
        rows: list[RecordRow] = []
        masked_in: list[int] = []  # each row's masked parts
        for index, record in enumerate(pending):
            # Validated again: a record built with model_construct, or changed since,
            # may hold anything. This also copies its metadata.
            problem = None
            try:
                kind, name, duration, timestamp, success, error, metadata = row_of(record)
                kind, name, error, masked = self._mask_texts(kind, name, error)
                rows.append(build_row(kind, name, duration, timestamp, success, error, metadata))
                masked_in.append(masked)
            except ValidationError as exc:
                problem = safe_validation_message(exc, policy=self.pii_policy)
            except Exception as exc:
                problem = f"not a valid OperationRecord ({type(exc).__name__})"
            if problem is not None:
                self._refuse(len(pending), 0, 0, f"record {index}: {problem}")
        accepted = self._submit_rows(rows, timeout=timeout, redacted=0, rejected=0)
        # Counted once queued: a refused batch, and rows dropped for want of room (the
        # last ones: rows are queued in order), wrote nothing they masked.
        redacted = sum(masked_in[:accepted])
        if redacted:
            with self._lock:
                self._redacted += redacted
        return accepted

    def _refuse(self, count: int, redacted: int, rejected: int, problem: str) -> NoReturn:
        """Count ``count`` items refused (and the caller's counts), then raise ValueError."""
        with self._lock:
            if not self._accepting:
                raise RuntimeError(_NOT_RUNNING)
            self._redacted += redacted
            self._rejected += rejected + count
        raise ValueError(f"submit_records: none queued: {problem}")

    def _submit_rows(
        self,
        pending: Sequence[RecordRow | QueuedRow],
        *,
        timeout: float,
        redacted: int,
        rejected: int,
    ) -> int:
        """:meth:`submit_records` for rows: the span exporter's way in, without models.

        A row whose metadata is already JSON (``bytes``) comes from
        :func:`~otel_json_exporter._span_rows.plain_queued_row`, which checked it
        as :meth:`PiiPolicy.check_row` does; the others are checked against the PII
        rule and encoded here. The first row that fails refuses them all; the
        message says which row and why, never a value.
        """
        queued: list[QueuedRow] = []
        for index, row in enumerate(pending):
            if type(row[6]) is bytes:
                queued.append(row)
                continue
            unchecked = cast("RecordRow", row)
            try:
                self.pii_policy.check_row(unchecked)
                queued.append(queued_row(unchecked))
            except ValueError as exc:
                self._refuse(len(pending), redacted, rejected, f"record {index}: {exc}")
        return self._enqueue(queued, timeout=timeout, redacted=redacted, rejected=rejected)

    def _submit_spans(
        self, pending: list[SpanSnapshot], *, timeout: float, redacted: int, rejected: int
    ) -> int:
        """Queue spans not yet mapped; the writer process maps and checks them.

        The span exporter's way in when ``writer="process"``: the mapping and the
        PII rule (:func:`~otel_json_exporter._span_rows.rows_of`) then cost the
        application nothing. A span that cannot become a record there is counted
        in ``total_rejected`` once its batch is written.
        """
        if self.writer != "process":
            raise RuntimeError("only a writer process maps spans; map them before queueing")
        return self._enqueue(pending, timeout=timeout, redacted=redacted, rejected=rejected)

    def _enqueue(
        self,
        pending: Sequence[QueuedItem],
        *,
        timeout: float,
        redacted: int,
        rejected: int,
    ) -> int:
        """Append checked items, waiting at most ``timeout`` for room; how many fit."""
        accepted = 0
        deadline = time.monotonic() + timeout
        with self._cond:
            if not self._accepting:
                raise RuntimeError(_NOT_RUNNING)
            self._redacted += redacted
            self._rejected += rejected
            while accepted < len(pending):
                room = self.max_queue_size - len(self._buffer)
                if room <= 0:
                    self._cond.notify_all()
                    remaining = bounded_timeout(deadline - time.monotonic())
                    if threading.current_thread() is self._thread:
                        remaining = 0.0  # the writer (a logging handler) would wait for itself
                    waited = self._cond.wait_for(self._has_room, remaining)
                    if not (waited and self._accepting):
                        self._dropped += len(pending) - accepted
                        break
                    continue
                # As many as fit, in one call (counted at once: waiting releases the lock)
                fitting = min(room, len(pending) - accepted)
                self._buffer.extend(islice(pending, accepted, accepted + fitting))
                self._accepted += fitting
                accepted += fitting
            if len(self._buffer) >= self._write_at:
                self._cond.notify_all()
        return accepted

    # -- flushing and stats --------------------------------------------------------

    async def flush(self, timeout: float | None = None) -> None:
        """Write everything accepted so far; return once it is on disk.

        Raises ``asyncio.TimeoutError`` if ``timeout`` seconds pass first, and
        RuntimeError when the manager is not running, or stops (a ``stop()``
        that gave up) before the records are written. TypeError or ValueError for
        a ``timeout`` that is not None or a number of seconds, at least 0.
        """
        _check_timeout(timeout, none_allowed=True)
        target = self._request_flush()
        try:
            finished = await self._wait_async(lambda: self._flush_over(target), timeout)
        finally:
            self._end_flush()
        if not self._flushed(target, finished):
            raise asyncio.TimeoutError(f"flush did not finish within {timeout}s")

    def flush_sync(self, timeout: float | None = None) -> bool:
        """Blocking :meth:`flush` for any thread; False when it did not finish in time."""
        _check_timeout(timeout, none_allowed=True)
        target = self._request_flush()
        try:
            finished = self._wait_sync(lambda: self._flush_over(target), timeout)
        finally:
            self._end_flush()
        try:
            return self._flushed(target, finished)
        except RuntimeError:
            return False

    def _request_flush(self) -> int:
        self._refuse_on_writer_thread("flush")
        with self._lock:
            if not self._accepting:
                raise RuntimeError(_NOT_RUNNING)
            target = self._accepted
            self._drain_to = max(self._drain_to, target)
            self._urgent_waiters += 1
            self._cond.notify_all()
            return target

    def _flush_over(self, target: int) -> bool:
        # Written, or no writer left to write it: either way, stop waiting.
        return self._settled >= target or not self._worker_alive

    def _end_flush(self) -> None:
        with self._lock:
            self._urgent_waiters -= 1

    def _refuse_on_writer_thread(self, call: str) -> None:
        """RuntimeError for a wait on this manager's writer thread, which would wait for itself.

        Application code runs there through logging: the writer logs a failed write,
        and every handler of the ``otel_json_exporter`` logger runs on its thread.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"MetricsManager {call} called on the manager's own writer thread (from a "
                "logging handler?), which would wait for itself: call it from another thread"
            )

    def _flushed(self, target: int, finished: bool) -> bool:
        """True when written; False on timeout; RuntimeError when the writer is gone."""
        if self._settled >= target:
            return True
        if finished:
            raise RuntimeError(
                f"MetricsManager stopped before the flush finished: "
                f"{target - self._settled} records are not on disk"
            )
        return False

    async def get_stats(self) -> MetricsStats:
        """A snapshot of the counters (see :class:`MetricsStats`)."""
        return self.stats()

    def stats(self) -> MetricsStats:
        """Synchronous :meth:`get_stats`."""
        with self._lock:
            return MetricsStats(
                total_recorded=self._accepted,
                total_persisted=self._persisted,
                queue_size=len(self._buffer),
                batches_written=self._batches,
                last_flush_timestamp=self._last_flush,
                avg_batch_size=self._persisted / self._batches if self._batches else 0.0,
                is_running=self._accepting,
                total_dropped=self._dropped,
                total_rejected=self._rejected,
                write_errors=self._write_errors,
                bytes_written=self._bytes,
                worker_errors=self._worker_errors,
                pii_redacted=self._redacted,
            )

    @property
    def is_running(self) -> bool:
        """Whether the manager accepts records."""
        return self._accepting

    # -- where threads meet the event loop -------------------------------------------

    async def _wait_async(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        """Wait on the caller's event loop until ``predicate()`` holds; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            with self._lock:
                if predicate():
                    return True
                future: asyncio.Future[None] = loop.create_future()
                self._async_waiters.append((loop, future))
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return predicate()
            # asyncio.wait, not wait_for: on Python 3.10 and 3.11, wait_for returns the
            # result instead of raising CancelledError when the future is resolved in
            # the loop pass that cancels the caller, and the cancel is lost.
            done, _ = await asyncio.wait((future,), timeout=remaining)
            if not done:
                return predicate()

    def _wait_sync(self, predicate: Callable[[], bool], timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, bounded_timeout(timeout))

    def _wake_waiters(self) -> None:
        """Wake every waiter so it re-checks its condition; from any thread."""
        with self._lock:
            self._cond.notify_all()
            waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        now = time.monotonic()
        self._next_timed = now + self.flush_interval_seconds
        self._next_retention = now + _RETENTION_EVERY
        self._retry_at = 0.0
        self._failures = 0
        self._unlogged_failures = 0  # failed writes since the last warning said so
        self._failure_logged = ("", 0.0)  # that warning's reason, and when
        self._unexpected_in_row = 0
        while True:
            try:
                if not self._step():
                    return
            except Exception:
                # The writer must never die silently: log, count, and go on.
                with self._lock:
                    self._worker_errors += 1
                logger.exception("unexpected error in the metrics writer; it goes on")
                time.sleep(_URGENT_RETRY)
            except BaseException:
                # SystemExit and the like (raised by the application's code, a value's
                # __str__ read here): the writer ends, as the thread would, but says so
                # first. Nothing more is accepted (RuntimeError, as after stop()), and no
                # flush(), stop() or producer waiting for room waits for it forever. The
                # records stay queued; a later stop() tries to write them once more.
                logger.exception("the metrics writer stopped; records stay queued")
                with contextlib.suppress(Exception):
                    self._batch_writer.close()  # a writer process's child and pipes go with it
                with self._lock:
                    self._worker_errors += 1
                    self._worker_alive = False
                    self._accepting = False
                self._wake_waiters()
                return

    def _step(self) -> bool:
        """Wait for work and do it once; False when the writer should exit."""
        with self._cond:
            batch = self._next_batch()
            exiting = batch is None and self._batch_writer.closed
            if exiting:
                self._worker_alive = False
        if exiting:
            self._wake_waiters()
            return False
        if batch is None:
            # A process writer's child is ended before the writer thread is seen gone,
            # so that a stop() that returns in time finds it exited; outside the lock,
            # since a stuck child takes seconds. Then decide again: start() may have
            # come meanwhile.
            self._batch_writer.close()
            return True
        if not batch:
            self._apply_retention()
            return True
        written = self._write(batch)
        with self._lock:
            self._writing = 0
            if not self._accepting and self._taken_for_stop == self._stop_generation:
                self._stop_tried = True
        if written:
            if self._failures:
                logger.info(
                    "batch writes to %s succeed again, after %d failed attempts",
                    self.storage_path,
                    self._failures,
                )
                self._unlogged_failures = 0
            self._failures = 0
            self._retry_at = 0.0
        else:
            self._failures += 1
            urgent = not self._accepting or self._urgent_waiters > 0
            doublings = min(self._failures - 1, _MAX_DOUBLINGS)
            delay = min(_INITIAL_BACKOFF * 2**doublings, _MAX_BACKOFF)
            self._retry_at = time.monotonic() + (_URGENT_RETRY if urgent else delay)
        self._wake_waiters()
        return True

    def _next_batch(self) -> list[QueuedItem] | None:
        """Wait (lock held) for work: a batch to write, ``[]`` for retention, None to exit."""
        while True:
            now = time.monotonic()
            if now >= self._next_timed:
                self._drain_to = max(self._drain_to, self._accepted)
                self._next_timed = now + self.flush_interval_seconds
            stopping = not self._accepting
            # Rows the process writer sent ahead head the queue: their answer is next.
            in_flight = self._batch_writer.in_flight > 0
            # A stop writes whatever is queued, counted or not: a signal handler's
            # stop_sync() may land between a record's append and its count.
            ready = in_flight or (
                bool(self._buffer)
                and (
                    stopping
                    or len(self._buffer) >= self._write_at
                    or self._settled < self._drain_to
                )
            )
            if (
                stopping
                and not in_flight
                and (not ready or (self._stop_expired() and self._stop_tried))
            ):
                return None
            if stopping and not self._stop_tried:
                self._retry_at = 0.0  # the first attempt of a stop() waits for no backoff
            if stopping or self._urgent_waiters > 0:
                # flush() or stop() is waiting: retry at once, not after the backoff
                self._retry_at = min(self._retry_at, now + _URGENT_RETRY)
            if ready and now >= self._retry_at:
                # A batch a process writer sent ahead may have gone before the stop().
                fresh = stopping and not in_flight
                self._taken_for_stop = self._stop_generation if fresh else -1
                batch = list(islice(self._buffer, self.max_batch_size))
                self._writing = len(batch)
                return batch
            if now >= self._next_retention:
                self._next_retention = now + _RETENTION_EVERY
                return []
            wake = min(self._next_timed, self._next_retention)
            if ready:
                wake = min(wake, self._retry_at)
            if self._stop_deadline is not None:
                wake = min(wake, self._stop_deadline)
            self._cond.wait(max(wake - now, 0.0))

    def _ending(self) -> bool:
        """Whether the manager stops or the interpreter exits: a process writer then starts
        no child for the last batches, and writes them in this process if none runs."""
        return not self._accepting or _exiting

    def _following(self, taken: int) -> list[QueuedItem] | None:
        """The batch after the first ``taken`` queued rows, if it is due now (process writer)."""
        with self._lock:
            waiting = len(self._buffer) - taken
            if waiting <= 0 or (not self._accepting and self._stop_expired()):
                return None
            if waiting < self._write_at and self._settled + taken >= self._drain_to:
                return None  # a partial batch that nothing asks to write yet
            return list(islice(self._buffer, taken, taken + self.max_batch_size))

    def _log_failure(self, records: int, reason: str) -> None:
        """Warn of a failed write: the first of a run, a new reason, then every 30 s at most.

        A dead disk is retried every 50 ms while flush() or stop() waits: a line per
        attempt would flood the log. The next line counts those left out (and
        ``write_errors`` counts them all).
        """
        now = time.monotonic()
        reason_logged, logged_at = self._failure_logged
        if (
            self._unlogged_failures
            and reason == reason_logged
            and now < logged_at + _FAILURE_LOG_EVERY
        ):
            self._unlogged_failures += 1
            return
        left_out = max(self._unlogged_failures - 1, 0)
        logger.warning(
            "batch write of %d records to %s failed (%s); they stay queued and will be retried%s",
            records,
            self.storage_path,
            reason,
            f" ({left_out} failed attempts since the last warning)" if left_out else "",
        )
        self._unlogged_failures = 1
        self._failure_logged = (reason, now)

    def _stop_expired(self) -> bool:
        return self._stop_deadline is not None and time.monotonic() >= self._stop_deadline

    def _write(self, batch: list[QueuedItem]) -> bool:
        try:
            written = self._batch_writer.write_rows(batch)  # type: ignore[arg-type]  # spans reach only a ProcessBatchWriter
        except OSError as exc:
            with self._lock:
                self._write_errors += 1
            if isinstance(exc, WriterProcessError):
                reason = exc.strerror or type(exc).__name__  # what befell the process
            elif exc.errno == errno.ENOENT and not os.path.isdir(self.storage_path):
                reason = "the directory no longer exists; it is not created again"
            else:
                reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            self._log_failure(len(batch), reason)
            return False
        except Exception:
            with self._lock:
                self._worker_errors += 1
            logger.exception("unexpected error in the metrics writer; records stay queued")
            self._unexpected_in_row += 1
            if self._unexpected_in_row >= _POISON_AFTER:
                self._drop_unencodable(len(batch))
            return False
        self._unexpected_in_row = 0
        taken = written.records + written.rejected
        with self._lock:
            for _ in range(taken):
                self._buffer.popleft()
            self._persisted += written.records
            self._settled += taken + self._left_ahead(taken)
            self._rejected += written.rejected
            self._redacted += written.redacted
            if written.path is not None:
                self._batches += 1
                self._bytes += written.bytes
                self._last_flush = datetime.now(timezone.utc)
        if written.rejected:
            logger.warning(
                "%d spans could not become records in the writer process", written.rejected
            )
        return True

    def _drop_unencodable(self, count: int) -> None:
        """Drop, among the first ``count`` queued records, those that cannot be encoded.

        Validation should make this impossible; it keeps one bad record from
        stopping every later one. The others keep their place in the queue.
        """
        with self._lock:
            head = list(islice(self._buffer, count))
        # Judged without the lock: a span's values may run the application's code
        # (their __str__...), which may call this manager. Only this thread takes
        # items from the head of the queue, so the head stays as it was.
        kept = [self._batch_writer.accepts(item) for item in head]
        with self._lock:
            for _ in head:
                self._buffer.popleft()
            kept_items = [item for item, ok in zip(head, kept, strict=True) if ok]
            self._buffer.extendleft(reversed(kept_items))
            lost = kept.count(False)
            self._dropped += lost
            self._settle_dropped(kept)
        self._unexpected_in_row = 0
        if lost:
            logger.error("dropped %d queued records that cannot be encoded", lost)

    def _settle_dropped(self, kept: list[bool]) -> None:
        """(Lock held.) Count the records just dropped from the head of the queue.

        ``kept[i]`` says whether the i-th record of the head stayed. A dropped record
        with none kept before it has left in order; one behind a kept record is
        counted once the records ahead of it have left (:meth:`_left_ahead`).
        """
        removed_before = [0]  # removed_before[i]: records dropped among the first i
        for ok in kept:
            removed_before.append(removed_before[-1] + (not ok))
        for group in self._settled_later:  # some of the records ahead of it are gone
            group[0] -= removed_before[min(group[0], len(kept))]
        groups: dict[int, int] = {}
        for index, ok in enumerate(kept):
            if not ok:
                ahead = index - removed_before[index]
                groups[ahead] = groups.get(ahead, 0) + 1
        self._settled += groups.pop(0, 0)
        self._settled_later.extend([ahead, count] for ahead, count in groups.items())
        self._settled += self._left_ahead(0)

    def _left_ahead(self, removed: int) -> int:
        """(Lock held.) ``removed`` records left the front: the dropped ones now settled."""
        settled = 0
        waiting = []
        for group in self._settled_later:
            group[0] -= removed
            if group[0] <= 0:
                settled += group[1]
            else:
                waiting.append(group)
        self._settled_later = waiting
        return settled

    def _apply_retention(self) -> None:
        if self.retention_days is None:
            return
        try:
            for path in delete_expired_batches(
                self.storage_path, timedelta(days=self.retention_days), on_error=_undeletable
            ):
                logger.info("retention: deleted %s", path.name)
        except OSError as exc:  # the directory itself could not be listed
            logger.warning("retention clean-up failed: %s", os.strerror(exc.errno or 0))

    def _after_fork_in_child(self) -> None:
        # The parent's queued records are the parent's to write; the child starts
        # empty, with fresh locks, and its own writer if the parent's was running.
        was_running = self._accepting
        self._batch_writer.after_fork()
        self._buffer.clear()
        self._reset_state()
        if was_running:
            self._accepting = True
            self._start_worker()


def _after_fork_in_child() -> None:
    for manager in list(_MANAGERS):
        manager._after_fork_in_child()


def flush_on_sigterm() -> None:
    """On SIGTERM, write what is held, then let the signal do what it did before.

    ``start()`` installs this by itself when SIGTERM has its default action. Call it
    for a server that sets up its own signals after the application is imported:
    gunicorn's workers do, so call it from gunicorn's ``post_worker_init`` hook. The
    handler flushes the global tracer provider (the spans its processors hold) and
    every running manager (10 s at most each), then calls the handler it replaced,
    or ends the process by SIGTERM if that was the default action. From the main
    thread only (ValueError otherwise); a second call changes nothing.
    """
    _sigterm.install_now(_flush_managers, _stop_for_sigterm, _a_lock_held_here)


_ending = threading.Event()  # set when a SIGTERM ends the process from another thread


def _stop_for_sigterm() -> None:
    """Stop every running manager, writing what each accepted (10 s at most each).

    For a SIGTERM that ends the process from another thread (see ``_sigterm``): a
    stopped manager refuses later records rather than accepting records the end
    would lose, and no manager starts any more (one started meanwhile is stopped too).
    """
    _ending.set()
    for _ in range(3):  # a start_sync() past its check as the flag was set: once more
        running = [manager for manager in list(_MANAGERS) if manager.is_running]
        if not running:
            return
        for manager in running:
            try:
                manager.stop_sync(_EXIT_FLUSH_TIMEOUT)
            except (RuntimeError, asyncio.TimeoutError) as exc:
                logger.error("SIGTERM: %s", exc)


def _a_lock_held_here() -> bool:
    """Whether this thread holds a manager's lock (a signal handler runs inside whatever
    its thread was doing, ``record_operation_sync`` say): another thread taking it waits."""
    return any(manager._lock._is_owned() for manager in list(_MANAGERS))  # type: ignore[attr-defined]


def _flush_at_exit() -> None:
    """The interpreter's exit (``atexit``, and a ``multiprocessing`` child's end): from
    now on a process writer starts no child, then :func:`_flush_managers`."""
    global _exiting  # noqa: PLW0603  # set once, never cleared
    _exiting = True
    _flush_managers()


def _flush_managers() -> None:
    """Persist what managers hold: at the interpreter's exit, and for a SIGTERM handed on.

    Running managers first: each is flushed, and stays running for whatever exits
    later (the SDK's own exit hook, registered before this one when the tracer
    provider was made first, exports its last spans after it). Then the managers
    that are stopping, or whose stop() gave up, and still hold records: a stop() its
    caller cancelled (``asyncio.wait_for``, Ctrl-C in ``asyncio.run``) leaves the
    writer draining, and the interpreter would end that daemon thread mid-batch.
    Each is stopped here, which waits for its writer or tries again; Python 3.12
    starts no thread at exit, so there a stop() that gave up cannot try again, and
    what it holds is logged.
    """
    managers = list(_MANAGERS)
    for manager in managers:
        if not manager.is_running:
            continue
        try:
            flushed = manager.flush_sync(_EXIT_FLUSH_TIMEOUT)
        except RuntimeError:
            # Stopped by another thread since the check: its stop() wrote what it could
            # and said what it could not. The managers after it are still flushed.
            continue
        if not flushed:
            logger.error("exit: %d records not persisted", manager.stats().queue_size)
    for manager in managers:
        if manager.is_running or not manager._holds_records():
            continue
        try:
            manager.stop_sync(_EXIT_FLUSH_TIMEOUT)
        except asyncio.TimeoutError:
            continue  # stop() logged what it could not write
        except RuntimeError:
            logger.error(
                "exit: %d records not persisted (no writer thread can start at exit)",
                manager.stats().queue_size,
            )


class _ExitToken:
    """Something ``multiprocessing``'s after-fork registry can hold a weak reference to."""


_EXIT_TOKEN = _ExitToken()


_finalizer_pid = 0  # the process whose multiprocessing finalizers flush the managers


def _flush_when_a_multiprocessing_child_exits(_: object) -> None:
    """Flush the managers when this ``multiprocessing`` child ends; once per process.

    multiprocessing ends a forked child (a forkserver's too) with os._exit, which skips
    atexit hooks; the finalizers registered in the child are what it runs on the way
    out. Called in each child it forks after this module was imported, and by
    ``start_sync()`` in a child that imported it later.
    """
    global _finalizer_pid  # noqa: PLW0603  # one finalizer per process
    if _finalizer_pid == os.getpid():
        return
    _finalizer_pid = os.getpid()
    multiprocessing.util.Finalize(None, _flush_child_at_exit, exitpriority=10)


def _flush_child_at_exit() -> None:
    """A multiprocessing child's end: the tracer provider, then every manager.

    No atexit hook runs there, so the SDK never shuts the tracer provider down: the
    spans its processors hold (a BatchSpanProcessor exports every 5 s) must reach the
    exporters first, as at SIGTERM, or they are lost with the child.
    """
    try:
        _sigterm._flush_tracer_provider()
    except Exception:  # the managers are flushed all the same
        logger.exception("exit: flushing the tracer provider failed")
    _flush_at_exit()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_flush_at_exit)
multiprocessing.util.register_after_fork(_EXIT_TOKEN, _flush_when_a_multiprocessing_child_exits)
