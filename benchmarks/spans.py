"""Spans: ``BatchSpanProcessor`` end to end with four exporters.

``python benchmarks/spans.py --exporter ours|noop|read_only|otlp_file|console --spans N [--dir D]``

One thread starts and ends ``N`` HTTP server spans (``SpanKind.SERVER``, the
HTTP semantic-convention attributes of ``_common.span_pool``, 2 % failing with
status ERROR) on a fresh ``TracerProvider`` with one ``BatchSpanProcessor``.
The clock runs from the first span until ``TracerProvider.shutdown()``
returns, so every exporter has written (and ours fsynced) everything. The
processor is configured identically for all exporters, with a queue larger than
``N`` so that no span is dropped; the spans that reached the disk are counted
afterwards, so a drop would show.

* ``ours``: ``OperationSpanExporter`` (span -> operation record, PII rule,
  atomic fsynced batch files).
* ``noop``: an exporter whose ``export`` returns SUCCESS at once: the ceiling.
* ``read_only``: an exporter that reads, from every span, each field an
  operation record is made of, and keeps nothing: no PII filter, no encoding,
  no file. The ceiling of any exporter that turns spans into records in
  Python, whatever it does with them afterwards.
* ``otlp_file``: the official ``opentelemetry-exporter-otlp-json-file``
  ``FileSpanExporter`` (OTLP JSON lines, flushed, never fsynced, no filtering).
* ``console``: the SDK's ``ConsoleSpanExporter`` writing into a file (not fsynced).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from _common import (
    SPAN_POOL_SIZE,
    count_batch_records,
    emit,
    remove_tree,
    scratch_dir,
    span_pool,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_json_exporter.manager import WriterKind

SCHEDULE_DELAY_MILLIS = 1000.0
MAX_EXPORT_BATCH_SIZE = 512
OURS_FLUSH_INTERVAL_SECONDS = 1.0
OURS_MAX_BATCH_SIZE = 1000
OURS: dict[str, WriterKind] = {"ours": "thread", "ours_process": "process"}
"""Our exporter, with each ``writer`` setting."""


class ReadOnlyExporter(SpanExporter):
    """Reads what a record is made of from every span, and nothing more."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            context, parent = span.context, span.parent
            _ = (
                span.name,
                span.kind,
                span.start_time,
                span.end_time,
                span.status.status_code,
                span.status.description,
                dict(span.attributes or {}),
                format(context.trace_id, "032x") if context is not None else None,
                format(context.span_id, "016x") if context is not None else None,
                format(parent.span_id, "016x") if parent is not None else None,
                span.resource.attributes.get("service.name"),
            )
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class CountingNoopExporter(SpanExporter):
    """Does nothing but count: the ceiling any real exporter is measured against."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def build_exporter(
    kind: str, directory: Path, spans: int
) -> tuple[SpanExporter, IO[str] | None, dict[str, Any]]:
    """The exporter under test, a stream to close after shutdown, and its settings."""
    if kind in OURS:
        from otel_json_exporter.exporter import OperationSpanExporter

        queue_size = max(spans + 1, 10_000)
        writer = OURS[kind]
        exporter: SpanExporter = OperationSpanExporter(
            storage_path=directory,
            flush_interval_seconds=OURS_FLUSH_INTERVAL_SECONDS,
            max_batch_size=OURS_MAX_BATCH_SIZE,
            max_queue_size=queue_size,
            writer=writer,
        )
        return (
            exporter,
            None,
            {
                "flush_interval_seconds": OURS_FLUSH_INTERVAL_SECONDS,
                "max_batch_size": OURS_MAX_BATCH_SIZE,
                "max_queue_size": queue_size,
                "writer": writer,
            },
        )
    if kind == "noop":
        return CountingNoopExporter(), None, {}
    if kind == "read_only":
        return ReadOnlyExporter(), None, {}
    if kind == "otlp_file":
        from opentelemetry.exporter.otlp.json.file import FileSpanExporter

        return FileSpanExporter(path=directory / "spans.jsonl"), None, {}
    if kind == "console":
        stream = (directory / "console.txt").open("w", encoding="utf-8")
        return ConsoleSpanExporter(out=stream), stream, {}
    raise ValueError(f"unknown exporter {kind!r}")


def count_exported(kind: str, exporter: SpanExporter, directory: Path) -> int:
    """How many spans the exporter delivered, read back from what it wrote."""
    if kind in OURS:
        return count_batch_records(directory)
    if kind in ("noop", "read_only"):
        assert isinstance(exporter, (CountingNoopExporter, ReadOnlyExporter))
        return exporter.exported
    if kind == "otlp_file":
        total = 0
        with (directory / "spans.jsonl").open(encoding="utf-8") as lines:
            for line in lines:
                for resource in json.loads(line)["resourceSpans"]:
                    for scope in resource["scopeSpans"]:
                        total += len(scope["spans"])
        return total
    # ConsoleSpanExporter writes one indented JSON object per span.
    text = (directory / "console.txt").read_text(encoding="utf-8")
    return text.count('\n    "name": ')


def run(kind: str, spans: int, directory: Path) -> dict[str, Any]:
    """Time ``spans`` spans through a BatchSpanProcessor until shutdown returns."""
    pool = span_pool()
    exporter, stream, settings = build_exporter(kind, directory, spans)
    queue_size = spans + 1
    provider = TracerProvider(
        resource=Resource.create({"service.name": "bench-api", "service.version": "1.0.0"})
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=queue_size,
            schedule_delay_millis=SCHEDULE_DELAY_MILLIS,
            max_export_batch_size=MAX_EXPORT_BATCH_SIZE,
        )
    )
    tracer = provider.get_tracer("bench.http.server")
    error = Status(StatusCode.ERROR)
    mask = SPAN_POOL_SIZE - 1
    started = time.perf_counter()
    for index in range(spans):
        name, attributes, failed = pool[index & mask]
        span = tracer.start_span(name, kind=SpanKind.SERVER, attributes=attributes)
        if failed:
            span.set_status(error)
        span.end()
    spans_done = time.perf_counter()
    provider.shutdown()
    if stream is not None:
        stream.close()
    finished = time.perf_counter()
    return {
        "exporter": kind,
        "spans": spans,
        "on_disk": count_exported(kind, exporter, directory),
        "spans_seconds": spans_done - started,
        "end_to_end_seconds": finished - started,
        "end_to_end_per_second": spans / (finished - started),
        "settings": {
            "bsp_max_queue_size": queue_size,
            "bsp_schedule_delay_millis": SCHEDULE_DELAY_MILLIS,
            "bsp_max_export_batch_size": MAX_EXPORT_BATCH_SIZE,
            **settings,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--exporter",
        choices=(*OURS, "noop", "read_only", "otlp_file", "console"),
        required=True,
    )
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    args = parser.parse_args()
    directory = scratch_dir(args.dir, f"spans-{args.exporter}")
    try:
        result = run(args.exporter, args.spans, directory)
    finally:
        remove_tree(directory)
    emit(result)


if __name__ == "__main__":
    main()
