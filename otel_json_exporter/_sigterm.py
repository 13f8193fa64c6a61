"""SIGTERM with its default action: write what is held, then end as the signal would.

A process ended by SIGTERM's default action runs no ``atexit`` hook, so neither the
SDK's shutdown of its span processors nor the managers' exit flush would run: every
record and span still in memory would be lost. Servers end that way on purpose:
uvicorn, after its graceful shutdown, restores the handlers it found and raises the
signal again, and Docker and Kubernetes stop a container with SIGTERM.

So the first manager started on the main thread, while SIGTERM still has its default
action, installs :func:`_flush_then_die`: it flushes the global tracer provider (what
the SDK's span processors hold reaches the exporters), then the managers, as the exit
hook would, and then restores the default action and raises the signal again, so the
process ends as it would have, killed by SIGTERM. A handler the application installed,
before or after, is never replaced: that handler decides.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["install"]

logger = logging.getLogger("otel_json_exporter")

_FLUSH_MILLIS = 10_000
_installed = False


def install(flush_managers: Callable[[], None]) -> None:
    """Handle SIGTERM as the module docstring says, if nothing else handles it.

    Only from the main thread (no other may install a handler), only once, and only
    while SIGTERM has its default action.
    """
    global _installed  # noqa: PLW0603  # one handler per process
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def _flush_then_die(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        try:
            _flush_tracer_provider()
            flush_managers()
        except Exception:  # the process ends anyway: say so, then end it
            logger.exception("SIGTERM: writing what was held failed")
        finally:
            signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, _flush_then_die)
    _installed = True


def _flush_tracer_provider() -> None:
    """Have the global tracer provider's span processors export what they hold.

    Looked up, not imported: a process that never imported OpenTelemetry's trace
    API has no tracer provider, and a manager used alone imports no OpenTelemetry.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if callable(flush):
        flush(_FLUSH_MILLIS)
