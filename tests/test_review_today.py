"""A review of the OTEL_SDK_DISABLED switch and of the command line's new batch reader.

Real SDK spans, real files, real subprocesses. Each test here failed on the code it was
written against, for the reason its docstring gives.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from .conftest import load_records

# == OTEL_SDK_DISABLED =====================================================================


class TestSpansThatComeToADisabledExporter:
    def test_they_are_written_not_dropped(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The SDK reads OTEL_SDK_DISABLED once, when a TracerProvider is made, and a
        disabled provider makes no spans; it never drops spans handed to an exporter.
        An exporter made while the variable said "true" dropped every span a provider
        made before it (one made while the SDK was on: a provider built at import, the
        variable set later from a .env file) and answered SUCCESS: the records were lost
        with no log line and no count."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from otel_json_exporter import OperationSpanExporter

        caplog.set_level(logging.WARNING, logger="otel_json_exporter")
        provider = TracerProvider()  # made while the SDK is on: it makes real spans
        storage = tmp_path / "metrics"
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        exporter = OperationSpanExporter(storage)
        assert not storage.exists()  # still nothing started while no span has come
        provider.add_span_processor(BatchSpanProcessor(exporter))
        for step in ("one", "two", "three"):
            with provider.get_tracer("job").start_as_current_span(step):
                pass
        provider.shutdown()  # the processor's thread exports them, at the latest now
        names = sorted(record.operation_name for record in load_records(storage))
        assert names == ["one", "three", "two"]
        stats = exporter.manager.stats()
        assert (stats.total_persisted, stats.total_dropped, stats.queue_size) == (3, 0, 0)
        assert "OTEL_SDK_DISABLED" in caplog.text  # said once, not silent

    def test_an_unusable_path_then_fails_the_export_and_says_so(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The same with a storage path that cannot be used: the export fails, FAILURE
        and logged with the StorageError's reason, where it answered SUCCESS."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from otel_json_exporter import OperationSpanExporter

        finished = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(finished))
        with provider.get_tracer("job").start_as_current_span("step"):
            pass
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        exporter = OperationSpanExporter(tmp_path / "a-file" / "metrics")
        with caplog.at_level(logging.ERROR, logger="otel_json_exporter"):
            result = exporter.export(finished.get_finished_spans())
        assert result is SpanExportResult.FAILURE
        assert "1 spans dropped" in caplog.text
        assert "Not a directory" in caplog.text
        exporter.shutdown()
