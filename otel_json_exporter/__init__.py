"""otel-json-exporter: operation records from OpenTelemetry spans and your own code,
PII-filtered and written to atomic, fsynced JSON batch files.

>>> from otel_json_exporter import MetricsManager  # doctest: +SKIP

The names below are imported when first used (PEP 562), so that importing one module
of the package does not import them all: the writer process, which runs
``_process_writer``, and the command line then start without the OpenTelemetry SDK.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_json_exporter.exporter import OperationSpanExporter
    from otel_json_exporter.manager import MetricsManager, QueueFullPolicy, flush_on_sigterm
    from otel_json_exporter.mapping import (
        default_operation_type,
        default_span_filter,
        span_to_record,
    )
    from otel_json_exporter.pii import CLIENT_ADDRESS_KEYS, PiiPolicy
    from otel_json_exporter.records import MetricsBatch, MetricsStats, OperationRecord
    from otel_json_exporter.tracking import track_operation
    from otel_json_exporter.writer import StorageError, delete_expired_batches

    __version__: str

__all__ = [
    "CLIENT_ADDRESS_KEYS",
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
    "flush_on_sigterm",
    "span_to_record",
    "track_operation",
]

_HOMES = {
    "CLIENT_ADDRESS_KEYS": "pii",
    "MetricsBatch": "records",
    "MetricsManager": "manager",
    "MetricsStats": "records",
    "OperationRecord": "records",
    "OperationSpanExporter": "exporter",
    "PiiPolicy": "pii",
    "QueueFullPolicy": "manager",
    "StorageError": "writer",
    "default_operation_type": "mapping",
    "default_span_filter": "mapping",
    "delete_expired_batches": "writer",
    "flush_on_sigterm": "manager",
    "span_to_record": "mapping",
    "track_operation": "tracking",
}


# Not seen by type checkers, which take the names from the imports above: with it, a
# misspelt name would type-check as Any.
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        home = _HOMES.get(name)
        if name == "__version__":  # the installed distribution's, as the CLI's --version says
            from importlib import metadata  # noqa: PLC0415  # only when asked: it is slow to import

            try:
                value = metadata.version("otel-json-exporter")
            except metadata.PackageNotFoundError:  # imported from a source tree
                value = "0+unknown"
        elif home is not None:
            value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
        elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
            # A submodule (otel_json_exporter.mapping), an attribute of the package
            # once imported, as when this module imported them all.
            value = importlib.import_module(f"{__name__}.{name}")
        else:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        globals()[name] = value  # found directly from now on
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, "__version__"})
