"""``track_operation``: time a block or a coroutine function and record it.

As an async context manager::

    async with track_operation(manager, "computation", "process_user_data"):
        await expensive_computation()

As a decorator of a coroutine function (each call is timed on its own)::

    @track_operation(manager, "computation", "process_user_data")
    async def process_user_data() -> None: ...

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

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from otel_json_exporter.manager import MetricsManager
from otel_json_exporter.records import valid_unicode

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
        if self._started is not None:
            raise RuntimeError("this track_operation is already timing a block")
        self._started = time.perf_counter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._started is None:
            raise RuntimeError("track_operation: __aexit__ without __aenter__")
        duration_ms = (time.perf_counter() - self._started) * 1000
        self._started = None
        failed = exc_type is not None and not issubclass(exc_type, GeneratorExit)
        error_message = _describe(exc_type, exc) if failed and exc_type is not None else None
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
            if exc_type is None:
                raise  # nothing of the application's to hide
            logger.warning(
                "track_operation could not record a failed operation: %s",
                type(recording_error).__name__,
            )

    def __call__(self, func: Callable[_P, Awaitable[_R]]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        """Decorate a coroutine function so that every call is tracked."""
        if not inspect.iscoroutinefunction(func):
            raise TypeError(
                "track_operation decorates coroutine functions (async def) only; "
                "use it as 'async with track_operation(...)' elsewhere"
            )

        @functools.wraps(func)
        async def tracked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            timer = track_operation(
                self.manager, self.operation_type, self.operation_name, self.metadata
            )
            async with timer:
                return await func(*args, **kwargs)

        return tracked
