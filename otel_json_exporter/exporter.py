"""``OperationSpanExporter``: every finished span becomes an operation record.

A thin adapter: :func:`~otel_json_exporter.mapping.map_spans` maps each span to
the row of a validated, PII-masked record (no model is built on this path), and
:class:`~otel_json_exporter.manager.MetricsManager` checks it against the PII rule
once more, queues and writes it. Use it with either span processor::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from otel_json_exporter import OperationSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OperationSpanExporter()))
    trace.set_tracer_provider(provider)

or with no code at all: ``OTEL_TRACES_EXPORTER=operation_json opentelemetry-instrument
python app.py`` (entry point ``operation_json`` in ``opentelemetry_traces_exporter``).

Two modes:

* **standalone**, ``OperationSpanExporter(storage_path=None, flush_interval_seconds=None,
  max_batch_size=None, max_queue_size=None, *, retention_days=None, writer=None)``: the
  exporter owns a MetricsManager, configured by :mod:`otel_json_exporter.config` (code,
  then the ``OTEL_EXPORTER_OPERATION_JSON_*`` variables, then defaults), and started in
  the constructor, so a storage problem raises
  :class:`~otel_json_exporter.writer.StorageError` there, naming where the path came from.
  ``shutdown()`` stops that manager, which writes everything it holds. With
  ``OTEL_SDK_DISABLED=true`` that manager is not started in the constructor: the SDK
  makes no spans then, yet still builds its exporters. Spans that come all the same
  (from a tracer provider made before the variable was set) start it, and are
  written: the SDK never drops what it hands an exporter.
* **attached**, ``OperationSpanExporter(manager=...)``: records go to a manager the
  application runs (a FastAPI lifespan, say), beside its own ``record_operation``
  calls. ``shutdown()`` flushes that manager but does not stop it: its owner does.
  Shut the tracer provider down before stopping the manager; spans exported after
  the manager stopped are refused (FAILURE, logged).

No private event loop or thread pool is involved. The manager's writer is a plain
thread and handing rows to it (``MetricsManager.submit_records`` without the models)
is a thread-safe call that only takes
a lock, so ``export()`` works from any thread, needs no loop to hand work to, and
``shutdown()`` cannot deadlock on the event-loop thread of an attached manager (it
waits on a condition that the writer thread, not the loop, fulfils; the loop is
held at most for the flush's timeout). Writes also keep working at interpreter
exit, when thread pools refuse new work. After ``os.fork()`` the manager starts a
fresh writer in the child and drops the parent's queued records there (the parent
writes those), so spans ended in the child are written by the child.

The contract, as the OpenTelemetry SDK expects it:

* ``export()`` holds the caller's thread at most ``export_timeout_seconds``
  (default 0.1 s) waiting for room in a full queue; records that still do not fit
  are dropped, counted in ``total_dropped``, and FAILURE is returned. It returns
  FAILURE after ``shutdown()``, and when a span cannot become a valid record (the
  span is skipped and counted in ``total_rejected``). Safe from many threads at once.
* ``force_flush(timeout_millis)`` returns once everything exported so far is on
  disk, or False when the timeout passes first.
* ``shutdown(timeout_millis=10000)`` is idempotent (a second call only logs a
  warning) and waits at most ``timeout_millis``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel_json_exporter.config import resolve_settings
from otel_json_exporter.manager import MetricsManager, WriterKind, bounded_timeout
from otel_json_exporter.mapping import (
    OperationTypeFunction,
    SpanFilter,
    default_operation_type,
    default_span_filter,
    map_spans,
)
from otel_json_exporter.pii import PiiPolicy
from otel_json_exporter.writer import StorageError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "DEFAULT_EXPORT_TIMEOUT_SECONDS",
    "DEFAULT_SHUTDOWN_TIMEOUT_MILLIS",
    "OperationSpanExporter",
]

logger = logging.getLogger("otel_json_exporter")

DEFAULT_EXPORT_TIMEOUT_SECONDS = 0.1
"""How long ``export()`` waits, at most, for room in a full queue."""

DEFAULT_SHUTDOWN_TIMEOUT_MILLIS = 10_000
"""How long ``shutdown()`` waits, at most, for the records to reach the disk."""


class OperationSpanExporter(SpanExporter):
    """Writes every finished span as an operation record into JSON batch files.

    ``operation_type`` replaces :func:`~otel_json_exporter.mapping.default_operation_type`;
    ``span_filter`` replaces :func:`~otel_json_exporter.mapping.default_span_filter`
    (return False to skip a span). ``pii_policy`` is the standalone manager's
    policy; an attached manager brings its own. See the module docstring for
    the two modes and the export contract.
    """

    def __init__(
        self,
        storage_path: str | os.PathLike[str] | None = None,
        flush_interval_seconds: float | None = None,
        max_batch_size: int | None = None,
        max_queue_size: int | None = None,
        *,
        retention_days: float | None = None,
        writer: WriterKind | None = None,
        manager: MetricsManager | None = None,
        pii_policy: PiiPolicy | None = None,
        operation_type: OperationTypeFunction | None = None,
        span_filter: SpanFilter | None = None,
        export_timeout_seconds: float = DEFAULT_EXPORT_TIMEOUT_SECONDS,
    ) -> None:
        if not export_timeout_seconds >= 0:
            raise ValueError("export_timeout_seconds must be a non-negative number")
        # OTEL_SDK_DISABLED: the SDK makes no spans, yet its configuration still builds the
        # exporters it names. An owned manager is then not started here (no directory, no
        # thread, no SIGTERM handler), but by the first spans that come all the same.
        self._disabled = manager is None and _sdk_disabled()
        if manager is not None:
            given = {
                "storage_path": storage_path,
                "flush_interval_seconds": flush_interval_seconds,
                "max_batch_size": max_batch_size,
                "max_queue_size": max_queue_size,
                "retention_days": retention_days,
                "writer": writer,
                "pii_policy": pii_policy,
            }
            clashing = [name for name, value in given.items() if value is not None]
            if clashing:
                raise ValueError(
                    f"{', '.join(clashing)} cannot be combined with manager=; "
                    "configure the MetricsManager itself"
                )
            self._manager = manager
            self._owns_manager = False
        else:
            self._manager = self._own_manager(
                storage_path,
                flush_interval_seconds,
                max_batch_size,
                max_queue_size,
                retention_days,
                writer,
                pii_policy,
                start=not self._disabled,
            )
            self._owns_manager = True
        self._policy = self._manager.pii_policy
        self._operation_type = operation_type or default_operation_type
        self._span_filter = span_filter or default_span_filter
        self._export_timeout = float(export_timeout_seconds)
        self._lock = threading.Lock()
        self._shutdown = False
        self._shutdown_over = threading.Event()
        self._flushed_at_shutdown = False

    @staticmethod
    def _own_manager(
        storage_path: str | os.PathLike[str] | None,
        flush_interval_seconds: float | None,
        max_batch_size: int | None,
        max_queue_size: int | None,
        retention_days: float | None,
        writer: WriterKind | None,
        pii_policy: PiiPolicy | None,
        *,
        start: bool,
    ) -> MetricsManager:
        settings = resolve_settings(
            storage_path,
            flush_interval_seconds,
            max_batch_size,
            max_queue_size,
            retention_days,
            writer=writer,
        )
        manager = MetricsManager(
            settings.storage_path,
            settings.flush_interval_seconds,
            settings.max_batch_size,
            settings.max_queue_size,
            pii_policy=pii_policy,
            retention_days=settings.retention_days,
            writer=settings.writer,
        )
        if not start:
            return manager
        try:
            manager.start_sync()
        except StorageError as exc:
            raise StorageError(
                exc.errno,
                f"OperationSpanExporter: {exc.strerror} "
                f"(storage path from {settings.storage_path_source})",
            ) from exc
        return manager

    @property
    def manager(self) -> MetricsManager:
        """The manager records go to (owned in standalone mode); ``.stats()`` shows its counters."""
        return self._manager

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Map, filter and queue the spans; never waits longer than ``export_timeout_seconds``.

        With a writer process (``writer="process"``) only the cheap half of the
        mapping runs here (:func:`~otel_json_exporter.mapping.snapshot_of`); the
        PII filter and validation run in that process, off the application's GIL.
        """
        if self._shutdown:
            logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        if self._disabled and spans and not self._start_for_spans_that_came(len(spans)):
            return SpanExportResult.FAILURE
        in_child = self._manager.writer == "process"  # the writer process maps the snapshots
        rows, snapshots, redacted, failed, problem = map_spans(
            spans, self._policy, self._span_filter, self._operation_type, snapshots_only=in_child
        )
        count = len(rows) + len(snapshots)
        if failed:
            logger.warning("export: %d spans could not become records (%s)", failed, problem)
        elif not count:
            return SpanExportResult.SUCCESS
        timeout = self._export_timeout
        try:
            if not in_child:
                accepted = self._manager._submit_rows(
                    rows, timeout=timeout, redacted=redacted, rejected=failed
                )
            else:
                accepted = self._manager._submit_spans(
                    snapshots, timeout=timeout, redacted=redacted, rejected=failed
                )
        except RuntimeError:
            logger.warning("export: the metrics manager is not running; %d spans dropped", count)
            return SpanExportResult.FAILURE
        except ValueError as exc:  # the mapping missed PII: refuse rather than write it
            logger.error("export: %d spans refused by the PII rule (%s)", count, exc)
            return SpanExportResult.FAILURE
        if accepted < count:
            logger.warning(
                "export: queue full for %.3gs; %d spans dropped",
                self._export_timeout,
                count - accepted,
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.FAILURE if failed else SpanExportResult.SUCCESS

    def _start_for_spans_that_came(self, count: int) -> bool:
        """Start the manager that OTEL_SDK_DISABLED kept from starting: spans came all the
        same (a tracer provider made before the variable was set makes them), and the SDK
        never drops what it hands an exporter. False, logged, if it cannot start."""
        with self._lock:
            if self._shutdown:
                return False
            if self._disabled and not self._manager.is_running:
                try:
                    self._manager.start_sync()
                except (OSError, RuntimeError) as exc:  # StorageError; a SIGTERM under way
                    logger.error("export: %s; %d spans dropped", exc, count)
                    return False
                logger.warning(
                    "OTEL_SDK_DISABLED is true, yet spans came to the exporter: "
                    "its manager started, and writes them"
                )
            self._disabled = False
        return True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write everything exported so far; False if ``timeout_millis`` passed first."""
        timeout = _seconds(timeout_millis)
        if self._shutdown:
            # Shutdown wrote (or is writing) everything: its outcome is the answer.
            over = self._shutdown_over.wait(bounded_timeout(timeout))
            return over and self._flushed_at_shutdown
        return self._flush(timeout)

    def shutdown(self, timeout_millis: float = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS) -> None:
        """Persist what was exported and stop an owned manager; idempotent.

        Waits at most ``timeout_millis``. An attached manager is flushed, not
        stopped. Safe on any thread, including the attached manager's event loop.
        """
        with self._lock:
            if self._shutdown:
                logger.warning("Exporter already shutdown, ignoring call")
                return
            self._shutdown = True
        timeout = _seconds(timeout_millis)
        try:
            if not self._owns_manager:
                self._flushed_at_shutdown = self._flush(timeout)
                return
            try:
                self._manager.stop_sync(timeout)  # logs what it could not write
            except asyncio.TimeoutError:
                self._flushed_at_shutdown = False
            else:
                self._flushed_at_shutdown = True
        finally:
            self._shutdown_over.set()

    def _flush(self, timeout: float) -> bool:
        try:
            return self._manager.flush_sync(timeout)
        except RuntimeError:
            # Not running: a clean stop() wrote everything; anything left is stuck.
            return self._manager.stats().queue_size == 0


def _sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED`` read as the SDK reads it: "true", in any case, disables."""
    return os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _seconds(timeout_millis: float) -> float:
    """The SDK's timeout in milliseconds as seconds; 0 for a negative one, or NaN."""
    return timeout_millis / 1000 if timeout_millis >= 0 else 0.0
