"""otel-json-exporter: operation records from OpenTelemetry spans and your own code,
PII-filtered and written to atomic, fsynced JSON batch files.

>>> from otel_json_exporter import MetricsManager  # doctest: +SKIP
"""

from __future__ import annotations

from otel_json_exporter.manager import MetricsManager, QueueFullPolicy
from otel_json_exporter.pii import PiiPolicy
from otel_json_exporter.records import MetricsBatch, MetricsStats, OperationRecord
from otel_json_exporter.writer import StorageError, delete_expired_batches

__all__ = [
    "MetricsBatch",
    "MetricsManager",
    "MetricsStats",
    "OperationRecord",
    "PiiPolicy",
    "QueueFullPolicy",
    "StorageError",
    "delete_expired_batches",
]
