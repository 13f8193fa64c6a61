"""otel-json-exporter: operation records from OpenTelemetry spans and your own code,
PII-filtered and written to atomic, fsynced JSON batch files.

>>> from otel_json_exporter import MetricsManager  # doctest: +SKIP
"""

from __future__ import annotations

from otel_json_exporter.exporter import OperationSpanExporter
from otel_json_exporter.manager import MetricsManager, QueueFullPolicy
from otel_json_exporter.mapping import default_operation_type, default_span_filter, span_to_record
from otel_json_exporter.pii import PiiPolicy
from otel_json_exporter.records import MetricsBatch, MetricsStats, OperationRecord
from otel_json_exporter.tracking import track_operation
from otel_json_exporter.writer import StorageError, delete_expired_batches

__all__ = [
    "MetricsBatch",
    "MetricsManager",
    "MetricsStats",
    "OperationRecord",
    "OperationSpanExporter",
    "PiiPolicy",
    "QueueFullPolicy",
    "StorageError",
    "default_operation_type",
    "default_span_filter",
    "delete_expired_batches",
    "span_to_record",
    "track_operation",
]
