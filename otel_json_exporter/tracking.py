"""``track_operation``: time a block or a coroutine function and record it.

As an async context manager::

    async with track_operation(manager, "computation", "process_user_data"):
        await expensive_computation()

As a decorator of a coroutine function (each call is timed on its own)::

    @track_operation(manager, "computation", "process_user_data")
    async def process_user_data() -> None: ...

And the same in synchronous code (a Flask view, a Celery task, a thread), as
``with track_operation(...)`` or on a plain function: the record goes through the
thread-safe :meth:`~otel_json_exporter.manager.MetricsManager.submit_records`,
and a full queue is handled by the manager's ``queue_full_policy`` as
``record_operation`` handles it (``"block"`` waits for room).

The duration is measured with ``time.perf_counter``. When the block raises, the
record has ``success=False`` and ``error_message`` ``"Type: message"``, and the
exception propagates unchanged; cancellation counts as a failure too
(``CancelledError``). ``GeneratorExit`` does not: it is how an async generator whose
consumer stopped early (``break``, ``aclose()``) is closed, as OpenTelemetry's
``use_span`` also sees it. If recording itself fails (manager stopped, PII in
``metadata``), that error is raised when the block succeeded, and only logged,
by type, when the block raised, so that it never hides the original exception.
Nor does a full queue hold up a cancellation, an interruption or an async block's
exception: those are recorded at once if there is room, and an async block's failure
otherwise waits for room in a task of its own (README, "Timing your own code").
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import inspect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from otel_json_exporter.manager import MetricsManager
from otel_json_exporter.records import OperationRecord, valid_unicode

__all__ = ["track_operation"]

logger = logging.getLogger("otel_json_exporter")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _describe(exc_type: type[BaseException], exc: BaseException | None) -> str:
    """``"Type: message"``; the type alone when the message is empty or cannot be read.

    The exception is the application's: its ``__str__`` may raise, and its text may
    hold lone surrogates (a file name read with ``surrogateescape``), which no
    record can hold; each becomes U+FFFD, as in span attributes.
    """
    try:
        text = str(exc)
    except Exception:
        return exc_type.__name__
    if not text:
        return exc_type.__name__
    return valid_unicode(f"{exc_type.__name__}: {text}")


# Lower-case like contextlib's helpers: it is used like a function.
class track_operation:
    """Record how long a block or a coroutine function takes, and whether it raised.

    ``metadata`` is recorded with every operation (checked by the PII rule like
    any ``record_operation`` metadata). One instance times one block at a time;
    as a decorator it makes a fresh timer for every call.
    """

    def __init__(
        self,
        manager: MetricsManager,
        operation_type: str,
        operation_name: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.manager = manager
        self.operation_type = operation_type
        self.operation_name = operation_name
        self.metadata = metadata
        self._started: float | None = None

    async def __aenter__(self) -> None:
        self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration_ms, failed, error_message = self._stop(exc_type, exc)
        if _ending(exc_type):
            # Cancelled or interrupted: recorded only if there is room now, so that a
            # full queue never holds up a cancellation.
            self._submit(duration_ms, failed, error_message, exc_type, wait=False)
            return
        if exc_type is not None and self._would_wait():
            # The block raised and the queue is full: its exception goes on at once,
            # neither held up nor replaced by a cancellation landing while this waits;
            # its record waits for room in a task of its own.
            self._record_later(duration_ms, error_message)
            return
        try:
            await self._record(duration_ms, failed, error_message)
        except asyncio.CancelledError:
            # Cancelled while it waited for room, so not queued: recorded if there is
            # room now (an error doing so is logged: the cancellation goes on).
            self._submit(duration_ms, failed, error_message, asyncio.CancelledError, wait=False)
            raise
        except Exception as recording_error:
            _unless_hiding(exc_type, recording_error)

    def __enter__(self) -> None:
        self._start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration_ms, failed, error_message = self._stop(exc_type, exc)
        # Interrupted (Ctrl-C, SystemExit): recorded only if there is room now.
        self._submit(duration_ms, failed, error_message, exc_type, wait=not _ending(exc_type))

    def _submit(
        self,
        duration_ms: float,
        failed: bool,
        error_message: str | None,
        exc_type: type[BaseException] | None,
        *,
        wait: bool,
    ) -> None:
        """Record through ``submit_records``, the manager's ``queue_full_policy`` applied
        as ``record_operation`` applies it; without ``wait``, only if there is room now
        (a full queue then raises nothing: the record is dropped and counted)."""
        try:
            # Not validated here: submit_records validates it, after masking the message
            # whole with the manager's own rule, then cutting it, as record_operation does.
            record = OperationRecord.model_construct(
                operation_type=self.operation_type,
                operation_name=self.operation_name,
                duration_ms=duration_ms,
                timestamp=datetime.now(timezone.utc),  # the end, as record_operation's
                success=not failed,
                error_message=error_message,
                metadata=self.metadata if self.metadata is not None else {},
            )
            policy = self.manager.queue_full_policy
            timeout = math.inf if wait and policy == "block" else 0.0
            if self.manager.submit_records([record], timeout=timeout):
                return
            if not self.manager.is_running:
                # It stopped while this waited for room: record_operation's error.
                raise RuntimeError("MetricsManager is not running")
            if wait and policy == "raise":
                # submit_records counted it as dropped: record_operation's "raise" does not.
                raise asyncio.QueueFull(
                    f"metrics queue is full ({self.manager.max_queue_size} records)"
                )
        except Exception as recording_error:
            _unless_hiding(exc_type, recording_error)

    def _would_wait(self) -> bool:
        """Whether ``record_operation`` would wait for room now ("block", queue full)."""
        manager = self.manager
        return (
            manager.queue_full_policy == "block"
            and manager.is_running
            and manager.stats().queue_size >= manager.max_queue_size
        )

    async def _record(self, duration_ms: float, failed: bool, error_message: str | None) -> None:
        """The block's record, through ``record_operation`` (it may wait for room)."""
        await self.manager.record_operation(
            operation_type=self.operation_type,
            operation_name=self.operation_name,
            duration_ms=duration_ms,
            success=not failed,
            error_message=error_message,
            metadata=self.metadata,
        )

    def _record_later(self, duration_ms: float, error_message: str | None) -> None:
        """Record a failed block in a task of its own, which waits for room."""

        async def record() -> None:
            try:
                await self._record(duration_ms, True, error_message)
            except (Exception, asyncio.CancelledError) as recording_error:
                logger.warning(
                    "track_operation could not record a failed operation: %s",
                    type(recording_error).__name__,
                )

        _keep_until_done(asyncio.get_running_loop().create_task(record()))

    def _start(self) -> None:
        if self._started is not None:
            raise RuntimeError("this track_operation is already timing a block")
        self._started = time.perf_counter()

    def _stop(
        self, exc_type: type[BaseException] | None, exc: BaseException | None
    ) -> tuple[float, bool, str | None]:
        """The block's duration in milliseconds, whether it failed, and its error message."""
        if self._started is None:
            raise RuntimeError("track_operation: exit without enter")
        duration_ms = (time.perf_counter() - self._started) * 1000
        self._started = None
        failed = exc_type is not None and not issubclass(exc_type, GeneratorExit)
        error_message = _describe(exc_type, exc) if failed and exc_type is not None else None
        return duration_ms, failed, error_message

    def __call__(self, func: Callable[_P, _R]) -> Callable[_P, _R]:
        """Decorate a function, a coroutine function or not, so that every call is tracked.

        A coroutine function's wrapper returns a coroutine, as the function did: one
        signature serves both. TypeError for a generator function, sync or async,
        whose body runs after the call returns: time the block around its loop.
        """
        if isinstance(func, (staticmethod, classmethod)):
            # Above @staticmethod or @classmethod: the function inside is tracked, and
            # wrapped again as it was, so that it binds as it did.
            return cast("Callable[_P, _R]", type(func)(self(func.__func__)))
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                "track_operation cannot time a generator function: its body runs as it "
                "is iterated; use 'with' or 'async with' around the loop instead"
            )
        # Or an object whose __call__ is async (its class's, as a call looks it up).
        call = inspect.getattr_static(type(func), "__call__", None)
        if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call):

            @functools.wraps(func)
            async def tracked(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                async with self._fresh():
                    return await func(*args, **kwargs)  # type: ignore[misc]  # a coroutine function

            return cast("Callable[_P, _R]", tracked)

        @functools.wraps(func)
        def tracked_sync(*args: _P.args, **kwargs: _P.kwargs) -> Any:
            timer = self._fresh()
            timer._start()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                timer.__exit__(type(exc), exc, exc.__traceback__)
                raise
            if inspect.iscoroutine(result):
                # A coroutine made by a plain function (a partial...): timed until it is
                # awaited to its end, as a coroutine function's call is. Still a coroutine.
                return timer._until_done(result)
            if asyncio.isfuture(result):
                # A task or future: returned itself (its methods, cancel() and
                # add_done_callback(), are the caller's), timed until it is done.
                timer._when_done(result)
                return result
            # Anything else, another awaitable too (an object that is also an async context
            # manager, as aiohttp's session.get() returns), is returned as it is, and the
            # call is timed until it returns: time what it is used for with "async with".
            timer.__exit__(None, None, None)
            return result

        return cast("Callable[_P, _R]", tracked_sync)

    async def _until_done(self, awaitable: Awaitable[Any]) -> Any:
        """Await ``awaitable``, then record the block begun by :meth:`_start`."""
        try:
            value = await awaitable
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await self.__aexit__(None, None, None)
        return value

    def _when_done(self, future: asyncio.Future[Any]) -> None:
        """Record the block begun by :meth:`_start` once ``future`` is done, on its loop."""

        def record(done: asyncio.Future[Any]) -> None:
            error: BaseException | None
            error = asyncio.CancelledError() if done.cancelled() else done.exception()
            exiting = self.__aexit__(type(error) if error is not None else None, error, None)
            _keep_until_done(done.get_loop().create_task(exiting))

        future.add_done_callback(record)

    def _fresh(self) -> track_operation:
        """A timer of its own for one call: calls may overlap."""
        return track_operation(
            self.manager, self.operation_type, self.operation_name, self.metadata
        )


# The tasks that record an operation in the background: a failed block waiting for room,
# a tracked function's task or future once it is done.
_recording: set[asyncio.Task[None]] = set()


@atexit.register
def _report_unrecorded() -> None:
    """Say at exit how many of those never recorded: their event loop ended first (a
    task made while ``asyncio.run`` shut down is neither run to its end nor cancelled)."""
    waiting = sum(not task.done() for task in _recording)
    if waiting:
        logger.warning(
            "track_operation could not record %d operation(s): their event loop ended "
            "while they waited for room",
            waiting,
        )


def _keep_until_done(task: asyncio.Task[None]) -> None:
    """Hold ``task`` until it is done: the loop holds its tasks only weakly."""
    _recording.add(task)
    task.add_done_callback(_recording.discard)


def _ending(exc_type: type[BaseException] | None) -> bool:
    """Whether a block ends by cancellation or interruption (CancelledError,
    KeyboardInterrupt, SystemExit), which no full queue may hold up."""
    return exc_type is not None and not issubclass(exc_type, Exception)


def _unless_hiding(exc_type: type[BaseException] | None, recording_error: Exception) -> None:
    """Raise ``recording_error`` after a block that succeeded; after one that raised,
    only log its type, so that it never hides the application's exception."""
    if exc_type is None:
        raise recording_error
    logger.warning(
        "track_operation could not record a failed operation: %s",
        type(recording_error).__name__,
    )
