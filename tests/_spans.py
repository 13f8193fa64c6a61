"""Spans through a real SDK pipeline into batch files, and the records read back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Tracer

from otel_json_exporter import OperationSpanExporter


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
