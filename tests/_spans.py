"""Spans through a real SDK pipeline into batch files, and the records read back."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from otel_json_exporter import MetricsManager, OperationSpanExporter


def records_in(directory: Path) -> list[dict[str, Any]]:
    """Every record of every batch file in ``directory``, as JSON objects, in order."""
    return [
        record
        for path in sorted(directory.glob("metrics_*.json"))
        for record in json.loads(path.read_text(encoding="utf-8"))["records"]
    ]


def export_spans(
    directory: Path,
    make_spans: Callable[[Tracer], None],
    *,
    writer: str = "thread",
    limits: SpanLimits | None = None,
    batch: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Spans made by ``make_spans`` on a fresh provider with ``limits``, exported to
    ``directory``: the records written, and the exporter's ``pii_redacted``."""
    exporter = OperationSpanExporter(storage_path=directory, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}),
        span_limits=limits if limits is not None else SpanLimits(),
    )
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    make_spans(provider.get_tracer("tests"))
    provider.shutdown()
    return records_in(directory), exporter.manager.stats().pii_redacted


def header_capturing_app(provider: TracerProvider) -> Any:
    """A FastAPI app with one route, ``/me``, whose instrumentation captures every
    request header (``http_capture_headers_server_request=[".*"]``)."""
    from fastapi import FastAPI
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app = FastAPI()

    @app.get("/me")
    async def me() -> dict[str, bool]:
        return {"ok": True}

    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, http_capture_headers_server_request=[".*"]
    )
    return app


def holding(span: ReadableSpan, attributes: Mapping[str, Any]) -> ReadableSpan:
    """A copy of the ended ``span`` that holds ``attributes`` too, exactly as given.

    OpenTelemetry 1.45 and later keeps any value on a span: bytes as bytes, mappings as
    dicts, sequences as tuples. Before 1.45 its API decodes bytes as UTF-8 and drops
    those that do not decode, and drops mappings and a sequence holding an ``int`` or
    ``str`` subclass (an enum's members): no span made through it holds them. An
    exporter may still be handed one (a processor, or code that builds ``ReadableSpan``
    itself), so the tests of how such values are written build the span so, with the
    SDK's own class, on every version.
    """
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={**(span.attributes or {}), **attributes},
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def ended_span(
    name: str,
    attributes: Mapping[str, Any],
    held: Mapping[str, Any],
    resource: Resource | None = None,
) -> ReadableSpan:
    """A real span named ``name``, ended with ``attributes`` set through the SDK, that
    holds ``held`` too, as given (see :func:`holding`)."""
    captured = InMemorySpanExporter()
    provider = TracerProvider(
        resource=resource or Resource.create({"service.name": "shop"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(captured))
    with provider.get_tracer("tests").start_as_current_span(name, attributes=dict(attributes)):
        pass
    provider.shutdown()
    (span,) = captured.get_finished_spans()
    return holding(span, held)


PATHS = ["record_operation", "spans-thread", "spans-process"]
"""The ways a failed operation reaches the disk: recorded directly, or as a span's error
with each writer."""


def failed_operation(directory: Path, path: str, error: str) -> dict[str, Any]:
    """One failed operation whose error text is ``error``, written by ``path`` (one of
    :data:`PATHS`): its record, as read back from ``directory``."""
    if path == "record_operation":
        manager = MetricsManager(directory)
        manager.start_sync()
        manager.record_operation_sync("client", "call", 1.0, False, error)
        manager.stop_sync()
        (record,) = records_in(directory)
        return record

    def make(tracer: Tracer) -> None:
        span = tracer.start_span("call", kind=SpanKind.CLIENT)
        span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    (record,), _ = export_spans(directory, make, writer=path.split("-")[1])
    return record
