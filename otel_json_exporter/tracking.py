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
"""

from __future__ import annotations

import asyncio
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
        try:
            await self.manager.record_operation(
                operation_type=self.operation_type,
                operation_name=self.operation_name,
                duration_ms=duration_ms,
                success=not failed,
                error_message=error_message,
                metadata=self.metadata,
            )
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
            wait = math.inf if policy == "block" else 0.0
            if not self.manager.submit_records([record], timeout=wait) and policy == "raise":
                # submit_records counted it as dropped: record_operation's "raise" does not.
                raise asyncio.QueueFull(
                    f"metrics queue is full ({self.manager.max_queue_size} records)"
                )
        except Exception as recording_error:
            _unless_hiding(exc_type, recording_error)

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
            if inspect.isawaitable(result):
                # A coroutine (or future) made by a plain function, a partial: timed until
                # it is awaited to its end, as a coroutine function's call is.
                return timer._until_done(result)
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

    def _fresh(self) -> track_operation:
        """A timer of its own for one call: calls may overlap."""
        return track_operation(
            self.manager, self.operation_type, self.operation_name, self.metadata
        )


def _unless_hiding(exc_type: type[BaseException] | None, recording_error: Exception) -> None:
    """Raise ``recording_error`` after a block that succeeded; after one that raised,
    only log its type, so that it never hides the application's exception."""
    if exc_type is None:
        raise recording_error
    logger.warning(
        "track_operation could not record a failed operation: %s",
        type(recording_error).__name__,
    )
