"""SIGTERM with its default action: write what is held, then end as the signal would.

A process ended by SIGTERM's default action runs no ``atexit`` hook, so neither the
SDK's shutdown of its span processors nor the managers' exit flush would run: every
record and span still in memory would be lost. Servers end that way on purpose:
uvicorn, after its graceful shutdown, restores the handlers it found and raises the
signal again, and Docker and Kubernetes stop a container with SIGTERM.

So the first manager started on the main thread, while SIGTERM still has its default
action, installs the handler made by :func:`_flush_then`: it flushes the global tracer
provider (what the SDK's span processors hold reaches the exporters), then stops the
managers (what each accepted is written, and a record another thread hands over later
is refused rather than lost with the process), and then restores the default action
and raises the signal again, so the process ends as it would have, killed by SIGTERM.
A handler the application installed, before or after, is never replaced: that handler
decides.

A server that sets up its signals after the application is imported (gunicorn's
workers reset SIGTERM after the fork) leaves that handler out; :func:`install_now`,
called from the server's hook (gunicorn's ``post_worker_init``), puts it back, and
hands the signal on to the handler it found there, if any, once everything is written.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["install", "install_now"]

logger = logging.getLogger("otel_json_exporter")

_FLUSH_MILLIS = 10_000
_installed = False


def install(
    flush_managers: Callable[[], None],
    stop_managers: Callable[[], None],
    holding: Callable[[], bool] = lambda: False,
) -> None:
    """Handle SIGTERM as the module docstring says, if nothing else handles it.

    Only from the main thread (no other may install a handler), only once, and only
    while SIGTERM has its default action.
    """
    global _installed  # noqa: PLW0603  # one handler per process
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if not hasattr(signal, "SIGTERM") or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return
    handler = _flush_then(flush_managers, stop_managers, holding, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, handler)
    _installed = True


def install_now(
    flush_managers: Callable[[], None],
    stop_managers: Callable[[], None],
    holding: Callable[[], bool] = lambda: False,
) -> None:
    """Handle SIGTERM now, whatever handles it: what is held is written first.

    The handler found is kept and called afterwards (the default action, or none if
    it was ignored). ValueError when not called from the main thread, as
    ``signal.signal`` says.
    """
    global _installed  # noqa: PLW0603  # one handler per process
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("the SIGTERM handler can only be installed from the main thread")
    found = signal.getsignal(signal.SIGTERM)
    if getattr(found, "_otel_json_exporter", False):
        return  # ours already: wrapping it again would flush twice
    signal.signal(signal.SIGTERM, _flush_then(flush_managers, stop_managers, holding, found))
    _installed = True


def _flush_then(
    flush_managers: Callable[[], None],
    stop_managers: Callable[[], None],
    holding: Callable[[], bool],
    then: Any,
) -> Callable[..., None]:
    """A SIGTERM handler: flush the tracer provider and the managers, then ``then``.

    ``holding`` says whether this thread holds a lock that exporting spans takes (a
    manager's: the signal landed inside ``record_operation_sync``, say).
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        ends = then is signal.SIG_DFL or then is None
        if ends:
            signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
        if _exporting(frame) or holding():
            # The signal came while this thread was exporting in a span processor (a
            # force_flush() at the end of a job), whose export lock it holds below this
            # frame, or while it held a manager's lock, which the spans' export takes:
            # the provider's flush, which runs in a thread of its own, would wait for
            # this thread, and this thread for it.
            if ends:
                if not threading.main_thread().is_alive():
                    # The interpreter is exiting (its exit hooks are running: one of
                    # them exports): those that follow write what is held, and it
                    # ends by itself. Ending it from a thread now would cut them short.
                    return
                # Let this thread go on: another flushes the provider once it can,
                # stops the managers (what they accepted is written, later records are
                # refused: none is accepted that the end would lose), then ends the
                # process as the signal would have.
                threading.Thread(
                    target=_flush_then_end,
                    args=(stop_managers, signum),
                    name="otel-json-exporter-sigterm",
                    daemon=True,
                ).start()
                return
            # Another handler decides what happens next: what the managers hold is written.
            _flush_managers(flush_managers)
            if callable(then):
                then(signum, frame)
            return
        try:
            _flush_tracer_provider()
            # When the signal ends the process, the managers are stopped, not flushed:
            # the other threads (a threaded server's requests) go on running meanwhile,
            # and a record one of them hands over after a flush would be accepted, then
            # lost with the process. A stopped manager refuses it (RuntimeError) instead.
            (stop_managers if ends else flush_managers)()
        except Exception:  # the process goes on to end: say so
            logger.exception("SIGTERM: writing what was held failed")
        finally:
            if callable(then):
                then(signum, frame)
            elif ends:
                signal.raise_signal(signum)

    handler._otel_json_exporter = True  # type: ignore[attr-defined]  # see install_now
    return handler


def _flush_then_end(stop_managers: Callable[[], None], signum: int) -> None:
    """Flush the provider (once the export under way lets it), stop the managers, end."""
    try:
        _flush_tracer_provider()
        _flush_managers(stop_managers)
    finally:
        os.kill(os.getpid(), signum)  # its default action again: the process ends


def _flush_managers(flush_managers: Callable[[], None]) -> None:
    try:
        flush_managers()
    except Exception:  # the process goes on to end: say so
        logger.exception("SIGTERM: writing what was held failed")


def _exporting(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside a span processor's export (the SDK's ``_export``)."""
    sdk = sys.modules.get("opentelemetry.sdk")
    places = getattr(sdk, "__path__", None)
    if not places:
        return False
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_export" and code.co_filename.startswith(tuple(places)):
            return True
        frame = frame.f_back
    return False


def _flush_tracer_provider() -> None:
    """Have the global tracer provider's span processors export what they hold, waiting
    10 s at most.

    Looked up, not imported: a process that never imported OpenTelemetry's trace
    API has no tracer provider, and a manager used alone imports no OpenTelemetry.
    The flush runs in a thread of its own, waited for 10 s: the SDK's
    ``BatchSpanProcessor.force_flush`` (1.45) ignores its timeout and exports until
    its queue is empty, which it never is while other threads go on ending spans
    faster than they are exported, and an export may hang. Past that, the managers
    are stopped all the same: what was exported is written.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return
    flush = getattr(trace.get_tracer_provider(), "force_flush", None)
    if not callable(flush):
        return
    flushing = threading.Thread(
        target=_flush_provider, args=(flush,), name="otel-json-exporter-flush", daemon=True
    )
    try:
        flushing.start()
    except RuntimeError:  # no thread can start (the interpreter is ending): flush here
        _flush_provider(flush)
        return
    flushing.join(_FLUSH_MILLIS / 1000)
    if flushing.is_alive():
        logger.warning(
            "the tracer provider's flush did not end within %g s (spans keep coming, or an "
            "export hangs); what was exported is written, the spans not exported yet are not",
            _FLUSH_MILLIS / 1000,
        )


def _flush_provider(flush: Callable[[int], object]) -> None:
    try:
        flush(_FLUSH_MILLIS)
    except Exception:  # the managers are stopped all the same
        logger.exception("flushing the tracer provider failed")


def _forget_after_fork() -> None:
    # The child's server may set up its signals afresh (gunicorn's workers do): the
    # parent's installation says nothing about the child's, so the first manager
    # started on the child's main thread may install it again.
    global _installed  # noqa: PLW0603
    _installed = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
