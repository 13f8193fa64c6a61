"""OperationSpanExporter with the real SDK: both processors, both modes, the export contract.

Spans are produced by a real TracerProvider and end up in real batch files; the
only thing replaced is ``os.fsync`` (through :class:`tests._faults.Fault`) where
a test needs a disk that fails.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from otel_json_exporter import MetricsManager, OperationSpanExporter, PiiPolicy, StorageError
from otel_json_exporter.config import (
    ENV_FLUSH_INTERVAL,
    ENV_MAX_BATCH_SIZE,
    ENV_MAX_QUEUE_SIZE,
    ENV_PATH,
    ENV_RETENTION_DAYS,
    ENV_WRITER,
    resolve_settings,
)
from otel_json_exporter.manager import WriterKind
from otel_json_exporter.mapping import span_to_row
from otel_json_exporter.records import record_from_row
from tests._faults import WRITER_THREAD, Fault
from tests._spans import ended_span
from tests._tricky import LyingFloat, LyingInt, disguised
from tests.conftest import load_batches, load_records

ProcessorFactory = Callable[[SpanExporter], SpanProcessor]

PROCESSORS: dict[str, ProcessorFactory] = {
    "simple": SimpleSpanProcessor,
    "batch": lambda exporter: BatchSpanProcessor(exporter, schedule_delay_millis=50),
}
ENV_NAMES = (
    ENV_PATH,
    ENV_FLUSH_INTERVAL,
    ENV_MAX_BATCH_SIZE,
    ENV_MAX_QUEUE_SIZE,
    ENV_RETENTION_DAYS,
    ENV_WRITER,
)
PII_KEYS = json.loads((Path(__file__).parent / "data" / "pii_keys.json").read_text())


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=sorted(PROCESSORS))
def processor(request: pytest.FixtureRequest) -> ProcessorFactory:
    return PROCESSORS[request.param]


@pytest.fixture(params=["thread", "process"])
def writer(request: pytest.FixtureRequest) -> WriterKind:
    """Both places the mapping runs: in export(), or (process) in the writer process."""
    kind: WriterKind = request.param
    return kind


def provider_for(exporter: SpanExporter, processor: ProcessorFactory) -> TracerProvider:
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orders"}), shutdown_on_exit=False
    )
    provider.add_span_processor(processor(exporter))
    return provider


class Kit:
    """Builds standalone exporters (stopped after the test) and real finished spans."""

    def __init__(self) -> None:
        self.made: list[OperationSpanExporter] = []
        self._captured = InMemorySpanExporter()
        self._provider = TracerProvider(shutdown_on_exit=False)
        self._provider.add_span_processor(SimpleSpanProcessor(self._captured))

    def exporter(self, *args: Any, **kwargs: Any) -> OperationSpanExporter:
        exporter = OperationSpanExporter(*args, **kwargs)
        self.made.append(exporter)
        return exporter

    def spans(self, count: int, prefix: str = "span") -> list[ReadableSpan]:
        """``count`` real ended spans named ``<prefix>-<n>``, to hand to ``export`` directly."""
        self._captured.clear()
        tracer = self._provider.get_tracer("tests")
        for index in range(count):
            with tracer.start_as_current_span(f"{prefix}-{index}"):
                pass
        return list(self._captured.get_finished_spans())

    def close(self) -> None:
        self._provider.shutdown()
        for exporter in self.made:
            if exporter.manager.is_running:
                exporter.manager.stop_sync(5.0)


@pytest.fixture
def kit() -> Iterator[Kit]:
    made = Kit()
    yield made
    made.close()


def emit_workload(provider: TracerProvider) -> None:
    """A request with two queries, one of which fails, and an ASGI message span."""
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span(
        "GET /orders/{id}",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.response.status_code": 200},
    ):
        with tracer.start_as_current_span(
            "SELECT orders", kind=SpanKind.CLIENT, attributes={"db.system.name": "postgresql"}
        ):
            pass
        with tracer.start_as_current_span(
            "SELECT stock", kind=SpanKind.CLIENT, attributes={"db.system.name": "postgresql"}
        ) as failing:
            failing.set_status(Status(StatusCode.ERROR, "deadlock detected"))
        with tracer.start_as_current_span(
            "GET /orders/{id} http send", attributes={"asgi.event.type": "http.response.start"}
        ):
            pass


def check_workload(storage: Path) -> None:
    records = {record.operation_name: record for record in load_records(storage)}
    assert sorted(records) == ["GET /orders/{id}", "SELECT orders", "SELECT stock"]
    server = records["GET /orders/{id}"]
    assert (server.operation_type, server.success) == ("api_request", True)
    assert server.metadata["service.name"] == "orders"
    failed = records["SELECT stock"]
    assert (failed.operation_type, failed.success) == ("database_query", False)
    assert failed.error_message == "deadlock detected"
    assert failed.metadata["parent_span_id"] == server.metadata["span_id"]


class TestStandalone:
    def test_every_span_becomes_a_record(
        self,
        storage: Path,
        processor: ProcessorFactory,
        kit: Kit,
        writer: WriterKind,
    ) -> None:
        exporter = kit.exporter(storage, writer=writer, flush_interval_seconds=0.05)
        provider = provider_for(exporter, processor)
        emit_workload(provider)
        provider.shutdown()
        check_workload(storage)
        stats = exporter.manager.stats()
        assert (stats.total_persisted, stats.queue_size, stats.is_running) == (3, 0, False)

    def test_no_arguments_read_the_environment(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        monkeypatch.setenv(ENV_PATH, str(tmp_path / "from-env"))
        monkeypatch.setenv(ENV_FLUSH_INTERVAL, "0.05")
        monkeypatch.setenv(ENV_MAX_BATCH_SIZE, "2")
        monkeypatch.setenv(ENV_MAX_QUEUE_SIZE, "50")
        exporter = kit.exporter()
        manager = exporter.manager
        assert manager.storage_path == tmp_path / "from-env"
        assert (manager.flush_interval_seconds, manager.max_batch_size) == (0.05, 2)
        assert manager.max_queue_size == 50
        assert exporter.export(kit.spans(5)) is SpanExportResult.SUCCESS
        exporter.shutdown()
        batches = load_batches(tmp_path / "from-env")
        assert sorted(len(batch.records) for batch in batches) == [1, 2, 2]

    def test_no_arguments_and_no_environment_use_the_defaults(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        monkeypatch.chdir(tmp_path)
        exporter = kit.exporter()
        manager = exporter.manager
        assert manager.storage_path == tmp_path / "metrics"  # ./metrics, made absolute
        assert (manager.flush_interval_seconds, manager.max_batch_size) == (5.0, 1000)
        assert (manager.max_queue_size, manager.retention_days) == (10000, None)
        exporter.export(kit.spans(1))
        exporter.shutdown()
        assert [r.operation_name for r in load_records(tmp_path / "metrics")] == ["span-0"]

    def test_code_wins_over_the_environment(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        monkeypatch.setenv(ENV_PATH, str(tmp_path / "from-env"))
        monkeypatch.setenv(ENV_MAX_BATCH_SIZE, "2")
        exporter = kit.exporter(tmp_path / "from-code", max_batch_size=7)
        assert exporter.manager.storage_path == tmp_path / "from-code"
        assert exporter.manager.max_batch_size == 7
        assert not (tmp_path / "from-env").exists()

    def test_retention_days_is_passed_through(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        storage.mkdir()
        expired = storage / "metrics_20000101_000000_000000.json"
        expired.write_text("{}")
        monkeypatch.setenv(ENV_RETENTION_DAYS, "30")
        exporter = kit.exporter(storage)
        assert exporter.manager.retention_days == 30.0
        assert not expired.exists()  # deleted when the exporter's manager started

    def test_invalid_values_in_code_are_errors(self, storage: Path) -> None:
        with pytest.raises(ValueError, match="max_batch_size"):
            OperationSpanExporter(storage, max_batch_size=0)
        with pytest.raises(ValueError, match="export_timeout_seconds"):
            OperationSpanExporter(storage, export_timeout_seconds=-1)

    @pytest.mark.parametrize("from_env", [False, True])
    def test_an_unusable_storage_path_is_a_clear_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_env: bool
    ) -> None:
        not_a_directory = tmp_path / "file"
        not_a_directory.write_text("")
        if from_env:
            monkeypatch.setenv(ENV_PATH, str(not_a_directory))
        with pytest.raises(StorageError) as caught:
            OperationSpanExporter(None if from_env else not_a_directory)
        message = str(caught.value)
        assert "not a directory" in message
        assert (ENV_PATH if from_env else "argument") in message

    def test_attached_mode_takes_no_storage_settings(self, storage: Path) -> None:
        manager = MetricsManager(storage)
        with pytest.raises(ValueError, match=r"storage_path, max_batch_size cannot be combined"):
            OperationSpanExporter(storage, max_batch_size=5, manager=manager)


class TestConfiguration:
    def test_environment_values_are_parsed(self) -> None:
        settings = resolve_settings(
            environ={
                ENV_PATH: " /var/lib/ops ",
                ENV_FLUSH_INTERVAL: "2.5",
                ENV_MAX_BATCH_SIZE: "100",
                ENV_MAX_QUEUE_SIZE: "500",
                ENV_RETENTION_DAYS: "7",
            }
        )
        assert settings.storage_path == Path("/var/lib/ops")
        assert settings.storage_path_source == ENV_PATH
        assert (settings.flush_interval_seconds, settings.max_batch_size) == (2.5, 100)
        assert (settings.max_queue_size, settings.retention_days) == (500, 7.0)

    def test_empty_values_count_as_unset(self) -> None:
        settings = resolve_settings(environ=dict.fromkeys(ENV_NAMES, ""))
        assert (settings.storage_path, settings.storage_path_source) == (
            Path("metrics"),
            "default",
        )
        assert settings.flush_interval_seconds == 5.0

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            (ENV_FLUSH_INTERVAL, "soon"),
            (ENV_FLUSH_INTERVAL, "0"),
            (ENV_FLUSH_INTERVAL, "-3"),
            (ENV_FLUSH_INTERVAL, "nan"),
            (ENV_FLUSH_INTERVAL, "inf"),
            (ENV_MAX_BATCH_SIZE, "1.5"),
            (ENV_MAX_BATCH_SIZE, "0"),
            (ENV_MAX_QUEUE_SIZE, "-10"),
            (ENV_MAX_QUEUE_SIZE, "lots"),
            (ENV_RETENTION_DAYS, "forever"),
            (ENV_RETENTION_DAYS, "-1"),
            (ENV_RETENTION_DAYS, "1000000"),
        ],
    )
    def test_an_invalid_value_warns_and_uses_the_default(
        self, caplog: pytest.LogCaptureFixture, name: str, value: str
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            settings = resolve_settings(environ={name: value})
        assert settings == resolve_settings(environ={})
        assert len(caplog.records) == 1
        message = caplog.records[0].getMessage()
        assert name in message
        assert "default" in message
        assert repr(value) not in message

    def test_a_variable_an_argument_overrides_is_not_read(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        environ = {ENV_FLUSH_INTERVAL: "soon", ENV_MAX_BATCH_SIZE: "0", ENV_WRITER: "fork"}
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            settings = resolve_settings(
                flush_interval_seconds=2.0, max_batch_size=50, writer="thread", environ=environ
            )
        assert (settings.flush_interval_seconds, settings.max_batch_size) == (2.0, 50)
        assert caplog.records == []  # no warning names a value that is not used

    def test_an_empty_storage_path_argument_is_refused(self) -> None:
        with pytest.raises(ValueError, match="storage_path must be a non-empty path"):
            resolve_settings(storage_path="", environ={})


class TestContract:
    def test_export_after_shutdown_fails_and_writes_nothing(
        self,
        storage: Path,
        kit: Kit,
    ) -> None:
        exporter = kit.exporter(storage)
        assert exporter.export(kit.spans(2, "before")) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert exporter.export(kit.spans(2, "after")) is SpanExportResult.FAILURE
        names = sorted(record.operation_name for record in load_records(storage))
        assert names == ["before-0", "before-1"]

    def test_shutdown_is_idempotent_and_warns_the_second_time(
        self,
        storage: Path,
        kit: Kit,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        exporter = kit.exporter(storage)
        exporter.shutdown()
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            exporter.shutdown()
        assert "already shutdown" in caplog.text
        assert exporter.force_flush() is True
        assert exporter.manager.is_running is False

    def test_concurrent_export_from_many_threads(self, storage: Path, kit: Kit) -> None:
        threads, per_thread = 8, 150
        exporter = kit.exporter(storage, flush_interval_seconds=0.05, max_batch_size=100)
        provider = provider_for(exporter, SimpleSpanProcessor)
        tracer = provider.get_tracer("tests")
        start = threading.Barrier(threads)

        def work(worker: int) -> None:
            start.wait()
            for index in range(per_thread):
                with tracer.start_as_current_span(f"w{worker}-{index}"):
                    pass

        pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        provider.shutdown()

        records = load_records(storage)
        names = Counter(record.operation_name for record in records)
        assert len(names) == threads * per_thread
        assert set(names.values()) == {1}
        assert len({record.metadata["span_id"] for record in records}) == threads * per_thread
        stats = exporter.manager.stats()
        assert (stats.total_persisted, stats.total_dropped) == (threads * per_thread, 0)

    def test_a_full_queue_drops_counts_and_reports_failure(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        # A stuck disk: the writer thread's fsync waits until the test lets it go,
        # so the queue stays full however fast the writer would otherwise drain it.
        disk_released = threading.Event()
        real_fsync = os.fsync

        def stuck_fsync(fd: int) -> None:
            if threading.current_thread().name == WRITER_THREAD:
                disk_released.wait(30)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", stuck_fsync)
        exporter = kit.exporter(
            storage, flush_interval_seconds=3600, max_queue_size=5, export_timeout_seconds=0.02
        )
        try:
            assert exporter.export(kit.spans(8)) is SpanExportResult.FAILURE
            stats = exporter.manager.stats()
            assert (stats.total_recorded, stats.total_dropped) == (5, 3)
        finally:
            disk_released.set()
        assert exporter.force_flush() is True
        assert [r.operation_name for r in load_records(storage)] == [f"span-{n}" for n in range(5)]

    def test_force_flush_returns_false_when_the_disk_fails_past_the_timeout(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        exporter = kit.exporter(storage, flush_interval_seconds=3600)
        fsync = Fault(monkeypatch, "fsync", errno.EIO)
        assert exporter.export(kit.spans(4)) is SpanExportResult.SUCCESS
        assert exporter.force_flush(timeout_millis=200) is False
        assert fsync.failed >= 1
        assert load_records(storage) == []
        fsync.heal()
        assert exporter.force_flush(timeout_millis=10_000) is True
        names = [record.operation_name for record in load_records(storage)]
        assert names == [f"span-{n}" for n in range(4)]  # each exactly once
        assert exporter.manager.stats().write_errors == fsync.failed

    def test_force_flush_during_a_shutdown_waits_for_its_outcome(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
    ) -> None:
        exporter = kit.exporter(storage, flush_interval_seconds=3600)
        fsync = Fault(monkeypatch, "fsync", errno.EIO)
        exporter.export(kit.spans(3))
        shutting_down = threading.Thread(target=exporter.shutdown, args=(10_000,))
        shutting_down.start()
        try:
            while fsync.failed == 0:  # the shutdown is retrying against the dead disk
                threading.Event().wait(0.01)
            fsync.heal()
            # Not a quick False: the flush waits for the shutdown, which now succeeds.
            assert exporter.force_flush(timeout_millis=10_000) is True
        finally:
            fsync.heal()
            shutting_down.join(30)
        assert len(load_records(storage)) == 3

    def test_shutdown_gives_up_after_its_timeout_on_a_dead_disk(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        kit: Kit,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        exporter = kit.exporter(storage, flush_interval_seconds=3600)
        Fault(monkeypatch, "fsync", errno.EIO)
        exporter.export(kit.spans(3))
        with caplog.at_level(logging.ERROR, logger="otel_json_exporter"):
            exporter.shutdown(timeout_millis=200)
        assert "3 records were not persisted" in caplog.text
        assert exporter.force_flush() is False
        assert load_records(storage) == []

    def test_a_span_that_cannot_become_a_record_is_skipped_and_counted(
        self,
        storage: Path,
        kit: Kit,
        writer: WriterKind,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        exporter = kit.exporter(
            storage,
            writer=writer,
            operation_type=lambda span: "" if span.name == "span-1" else "job",
        )
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            assert exporter.export(kit.spans(3)) is SpanExportResult.FAILURE
        assert "1 spans could not become records" in caplog.text
        assert exporter.force_flush() is True
        names = [record.operation_name for record in load_records(storage)]
        assert names == ["span-0", "span-2"]
        assert exporter.manager.stats().total_rejected == 1

    def test_a_failing_user_function_never_logs_its_message(
        self,
        storage: Path,
        kit: Kit,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        def leaky_filter(span: ReadableSpan) -> bool:
            raise RuntimeError("jane@example.com broke it")

        exporter = kit.exporter(storage, span_filter=leaky_filter)
        with caplog.at_level(logging.DEBUG, logger="otel_json_exporter"):
            assert exporter.export(kit.spans(2)) is SpanExportResult.FAILURE
        assert "RuntimeError" in caplog.text
        assert "jane" not in caplog.text

    def test_a_custom_operation_type_never_sees_the_spans_the_default_filter_skips(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        seen: list[str] = []

        def operation_type(span: ReadableSpan) -> str:
            seen.append(span.name)
            assert span.attributes is not None  # an SDK span always has its attributes
            return str(span.attributes["app.kind"])  # ASGI message spans have none

        exporter = kit.exporter(storage, writer=writer, operation_type=operation_type)
        provider = provider_for(exporter, SimpleSpanProcessor)
        tracer = provider.get_tracer("tests")
        asgi = {"asgi.event.type": "http.response.start"}
        with (
            tracer.start_as_current_span("GET /", attributes={"app.kind": "page"}),
            tracer.start_as_current_span("GET / http send", attributes=asgi),
        ):
            pass
        provider.shutdown()
        assert seen == ["GET /"]
        assert [record.operation_type for record in load_records(storage)] == ["page"]
        assert exporter.manager.stats().total_rejected == 0

    def test_enum_members_are_written_as_the_numbers_they_hold(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(storage, writer=writer)
        attributes: dict[str, AttributeValue] = {"code": LyingInt.OK, "ratio": LyingFloat.HALF}
        span = ended_span(
            "run",
            attributes,
            # Before OpenTelemetry 1.45 the SDK drops a list of members: held as given.
            held={"codes": [LyingInt.OK, LyingInt.OK]},
            resource=Resource.create({"service.name": LyingInt.OK}),
        )
        exporter.export([span])
        exporter.shutdown()
        raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
        assert b"bob@" not in raw
        assert b"hunter2" not in raw
        (record,) = load_records(storage)
        assert (record.metadata["code"], record.metadata["codes"]) == (200, [200, 200])
        assert (record.metadata["ratio"], record.metadata["service.name"]) == (0.5, 200)

    def test_a_custom_span_filter(self, storage: Path, kit: Kit) -> None:
        exporter = kit.exporter(storage, span_filter=lambda span: span.name != "GET /health")
        provider = provider_for(exporter, SimpleSpanProcessor)
        tracer = provider.get_tracer("tests")
        for name in ("GET /health", "GET /orders", "GET /health"):
            with tracer.start_as_current_span(name, kind=SpanKind.SERVER):
                pass
        provider.shutdown()
        assert [record.operation_name for record in load_records(storage)] == ["GET /orders"]

    def test_pii_in_spans_is_dropped_masked_and_counted(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, SimpleSpanProcessor)
        blocked = PII_KEYS["blocked"]
        attributes: dict[str, str] = {key: f"secret-value-{n}" for n, key in enumerate(blocked)}
        attributes["url.full"] = "https://ann:pw1@shop.example/p?email=ann%40mail.example&page=1"
        attributes["note"] = "reply to ann@mail.example"
        with provider.get_tracer("tests").start_as_current_span("login", attributes=attributes):
            pass
        provider.shutdown()
        (record,) = load_records(storage)
        assert set(record.metadata).isdisjoint(blocked)
        assert record.metadata["note"] == "reply to [REDACTED]"
        raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
        assert b"secret-value" not in raw
        assert b"ann" not in raw
        assert b"pw1" not in raw
        # every dropped key, the credentials, the query parameter, the address in note
        assert exporter.manager.stats().pii_redacted == len(blocked) + 3

    def test_plain_and_masked_spans_are_written_in_order_as_the_full_mapping_makes_them(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        # Plain spans take plain_queued_row, the others the full mapping; the file
        # must hold each as span_to_row makes it, in the order the spans ended.
        exporter = kit.exporter(storage, writer=writer, max_batch_size=1000)
        captured = InMemorySpanExporter()
        provider = provider_for(exporter, SimpleSpanProcessor)
        provider.add_span_processor(SimpleSpanProcessor(captured))
        tracer = provider.get_tracer("tests")
        plain = {"http.request.method": "GET", "url.query": "page=2&per_page=50", "n": 1}
        for index in range(30):
            attributes: dict[str, Any] = {**plain, "n": index}
            if index % 3 == 1:
                attributes["note"] = "reply to ann@mail.example"  # masked: the full mapping
            if index % 5 == 4:
                attributes["url.query"] = "email=ann%40mail.example&page=2"
            with tracer.start_as_current_span(f"GET /orders/{index}", kind=SpanKind.SERVER):
                span = tracer.start_span(f"child-{index}", attributes=attributes)
                span.end()
        provider.shutdown()
        policy = PiiPolicy()
        expected = []
        redacted = 0
        for finished in captured.get_finished_spans():
            row, masked = span_to_row(finished, policy)
            expected.append(record_from_row(row).model_dump(mode="json"))
            redacted += masked
        written = [record.model_dump(mode="json") for record in load_records(storage)]
        assert written == expected
        assert exporter.manager.stats().pii_redacted == redacted > 0

    def test_masking_never_leaves_what_the_check_refuses(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        # Masking "token=a/b" leaves "//token=REDACTED;x@h", credentials in form: the
        # URL goes whole (the word before it stays), and the other spans are written.
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, BatchSpanProcessor)
        tracer = provider.get_tracer("tests")
        for index in range(5):
            note = "see //token=a/b;x@h" if index == 2 else f"note {index}"
            with tracer.start_as_current_span(f"span-{index}", attributes={"note": note}):
                pass
        provider.shutdown()
        notes = {r.operation_name: r.metadata["note"] for r in load_records(storage)}
        masked = "see [REDACTED]"
        assert notes == {f"span-{i}": masked if i == 2 else f"note {i}" for i in range(5)}
        assert exporter.manager.stats().total_rejected == 0

    def test_a_message_cut_inside_a_masked_value_loses_no_span(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        # Masked, the description ends "password=REDACTED" across the 1,000-character
        # cut; cut there, "password=RE" would read as a value and refuse the batch.
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, BatchSpanProcessor)
        tracer = provider.get_tracer("tests")
        description = "x" * 988 + " password=hunter2"
        for index in range(5):
            span = tracer.start_span(f"span-{index}")
            if index == 2:
                span.set_status(Status(StatusCode.ERROR, description))
            span.end()
        provider.shutdown()
        records = {r.operation_name: r for r in load_records(storage)}
        assert set(records) == {f"span-{index}" for index in range(5)}
        assert records["span-2"].error_message == "x" * 988 + " password="
        assert exporter.manager.stats().total_rejected == 0

    def test_bytes_holding_pii_are_masked_not_hidden_in_base64(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(storage, writer=writer)
        held = {  # bytes as OpenTelemetry 1.45 and later hands them over: see ended_span
            "contact": b"bob@example.com",
            "stray_byte": b"\xffbob@example.com",  # not valid UTF-8
            "latin1": "j\u00fcrgen@example.de".encode("latin-1"),
            "utf16": "bob@example.com".encode("utf-16-le"),
            "blob": b"password=hunter2\x80",
            "payload": b"\x00\x01plain",
        }
        exporter.export([ended_span("mail", {}, held)])
        exporter.shutdown()
        (record,) = load_records(storage)
        for key in ("contact", "stray_byte", "latin1", "utf16", "blob"):
            assert record.metadata[key] == "[REDACTED]", key
        assert record.metadata["payload"] == "AAFwbGFpbg=="  # base64, as before
        raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
        assert b"Ym9iQGV4YW1wbGUuY29t" not in raw  # base64 of the address
        assert exporter.manager.stats().pii_redacted == 5

    def test_a_policy_may_block_the_keys_the_mapping_adds(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        policy = PiiPolicy(blocked_keys={"trace_id", "service.name"})
        exporter = kit.exporter(storage, writer=writer, pii_policy=policy)
        provider = provider_for(exporter, BatchSpanProcessor)
        with provider.get_tracer("tests").start_as_current_span("checkout"):
            pass
        provider.shutdown()
        (record,) = load_records(storage)
        assert "trace_id" not in record.metadata
        assert "service.name" not in record.metadata
        assert record.metadata["span_kind"] == "internal"
        assert exporter.manager.stats().pii_redacted == 2

    def test_a_blocked_service_name_holding_an_address_counts_once(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(
            storage, writer=writer, pii_policy=PiiPolicy(blocked_keys={"service.name"})
        )
        provider = TracerProvider(
            resource=Resource.create({"service.name": "shop ann@example.org"}),
            shutdown_on_exit=False,
        )
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("tests").start_as_current_span("checkout"):
            pass
        provider.shutdown()
        (record,) = load_records(storage)
        assert "service.name" not in record.metadata
        assert exporter.manager.stats().pii_redacted == 1

    def test_a_declared_operation_type_is_judged_by_its_text(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, SimpleSpanProcessor)
        declared = disguised(equal_to="job")("job for ann@example.com")
        with provider.get_tracer("tests").start_as_current_span(
            "run", attributes={"operation.type": declared}
        ):
            pass
        provider.shutdown()
        (record,) = load_records(storage)
        assert record.operation_type == "job for [REDACTED]"
        assert exporter.manager.stats().total_rejected == 0

    def test_str_subclass_attributes_are_judged_by_their_text(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        Disguised = disguised(equal_to="note")

        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, SimpleSpanProcessor)
        attributes = {
            Disguised("url.full"): "https://h.example/u/ann%40example.com",
            "message": Disguised("reply to ann@example.com"),
        }
        with provider.get_tracer("tests").start_as_current_span(
            Disguised("GET /u/ann@example.com"), attributes=attributes
        ):
            pass
        provider.shutdown()
        (record,) = load_records(storage)
        assert record.operation_name == "GET /u/[REDACTED]"
        assert record.metadata["url.full"] == "https://h.example/u/REDACTED"
        assert record.metadata["message"] == "reply to [REDACTED]"
        raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
        assert b"ann" not in raw

    def test_a_float_start_time_is_written(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        # The SDK takes start_time=time.time() * 1e9 (a float) without complaint.
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, SimpleSpanProcessor)
        tracer = provider.get_tracer("tests")
        started = 1_765_872_000.25 * 1e9  # 2025-12-16T08:00:00.25 UTC
        tracer.start_span("float-start", start_time=started).end(end_time=int(started) + 5_000_000)  # type: ignore[arg-type]
        with tracer.start_as_current_span("normal"):
            pass
        provider.shutdown()
        records = {record.operation_name: record for record in load_records(storage)}
        assert set(records) == {"float-start", "normal"}
        moment = records["float-start"].timestamp
        assert moment.isoformat() == "2025-12-16T08:00:00.250000+00:00"
        assert records["float-start"].duration_ms == pytest.approx(5.0, abs=1e-3)  # float ns
        assert exporter.manager.stats().worker_errors == 0

    def test_a_secret_in_a_url_path_segment_is_masked_not_the_batch_refused(
        self, storage: Path, kit: Kit, writer: WriterKind
    ) -> None:
        exporter = kit.exporter(storage, writer=writer)
        provider = provider_for(exporter, BatchSpanProcessor)
        tracer = provider.get_tracer("tests")
        with tracer.start_as_current_span(
            "reset", attributes={"url.full": "https://shop.example/reset/token=s3cr3t"}
        ):
            pass
        with tracer.start_as_current_span("home", attributes={"url.full": "https://shop.example/"}):
            pass
        provider.shutdown()
        records = {record.operation_name: record for record in load_records(storage)}
        assert set(records) == {"reset", "home"}
        assert records["reset"].metadata["url.full"] == "https://shop.example/reset/token=REDACTED"
        raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
        assert b"s3cr3t" not in raw
        assert exporter.manager.stats().total_rejected == 0


def hand_built(
    name: str, attributes: dict[str, Any] | None = None, start_time: int = 1
) -> ReadableSpan:
    """A span built by hand, as a test or an odd instrumentation may: the SDK checks nothing."""
    return ReadableSpan(
        name=name, attributes=attributes or {}, start_time=start_time, end_time=start_time + 1
    )


# Past the year 9999: export() reads such a span, only the mapping finds no timestamp for it.
BEYOND_THE_CALENDAR = 10**21  # ns: about the year 33,700


class TestWriterProcess:
    """``writer="process"``: export() only reads the spans; the child maps and checks them."""

    def test_the_environment_chooses_the_writer(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, kit: Kit
    ) -> None:
        monkeypatch.setenv(ENV_WRITER, "process")
        exporter = kit.exporter(storage)
        assert exporter.manager.writer == "process"
        assert kit.exporter(storage / "code", writer="thread").manager.writer == "thread"

    def test_an_invalid_writer_in_the_environment_warns_and_uses_threads(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            settings = resolve_settings(environ={ENV_WRITER: "forked"})
        assert settings.writer == "thread"
        assert ENV_WRITER in caplog.text
        assert "forked" not in caplog.text

    def test_a_span_the_child_cannot_map_is_counted_and_the_rest_written(
        self, storage: Path, kit: Kit, caplog: pytest.LogCaptureFixture
    ) -> None:
        exporter = kit.exporter(storage, writer="process")
        spans = [
            hand_built("first"),
            hand_built("far", start_time=BEYOND_THE_CALENDAR),
            hand_built("last"),
        ]
        assert exporter.export(spans) is SpanExportResult.SUCCESS  # read, not yet mapped
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            assert exporter.force_flush() is True
        assert [record.operation_name for record in load_records(storage)] == ["first", "last"]
        stats = exporter.manager.stats()
        assert (stats.total_persisted, stats.total_rejected, stats.queue_size) == (2, 1, 0)
        assert "1 spans could not become records in the writer process" in caplog.text

    def test_a_batch_that_maps_to_nothing_writes_no_file(self, storage: Path, kit: Kit) -> None:
        exporter = kit.exporter(storage, writer="process")
        exporter.export([hand_built(name, start_time=BEYOND_THE_CALENDAR) for name in "ab"])
        assert exporter.force_flush() is True
        assert not list(storage.glob("metrics_*.json"))
        stats = exporter.manager.stats()
        assert (stats.total_rejected, stats.batches_written, stats.queue_size) == (2, 0, 0)
        exporter.export(kit.spans(1))
        assert exporter.force_flush() is True
        assert [record.operation_name for record in load_records(storage)] == ["span-0"]

    def test_a_value_with_no_text_is_dropped_alone_after_retries(
        self, storage: Path, kit: Kit
    ) -> None:
        class NoText:
            def __str__(self) -> str:
                raise RuntimeError("no text")

        exporter = kit.exporter(storage, writer="process")
        spans = [hand_built("a"), hand_built("b", {"odd": NoText()}), hand_built("c")]
        exporter.export(spans)
        assert exporter.force_flush(timeout_millis=20_000) is True
        assert [record.operation_name for record in load_records(storage)] == ["a", "c"]
        assert exporter.manager.stats().total_dropped == 1

    def test_a_value_that_raises_system_exit_ends_the_writer_and_no_flush_hangs(
        self, storage: Path, kit: Kit, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Quits:
            def __str__(self) -> str:
                raise SystemExit(3)  # read by the writer thread, as it pickles the batch

        exporter = kit.exporter(storage, writer="process")
        exporter.export([hand_built("a", {"odd": Quits()})])
        results: list[bool] = []
        done = threading.Event()

        def flush() -> None:
            results.append(exporter.manager.flush_sync(None))  # no timeout of its own
            done.set()

        with caplog.at_level(logging.ERROR, logger="otel_json_exporter"):
            threading.Thread(target=flush, daemon=True).start()
            assert done.wait(30.0), "flush() waited for a writer that had ended"
        assert results == [False]
        assert "the metrics writer stopped; records stay queued" in caplog.text
        assert exporter.manager.stats().queue_size == 1
        assert exporter.manager._batch_writer.closed  # its child and pipes went with it
        assert not exporter.manager.is_running  # nothing more goes into a queue none drains
        assert exporter.export([hand_built("b")]) is SpanExportResult.FAILURE
        exporter.shutdown()

    def test_what_reading_a_value_raises_is_never_logged_and_loses_that_span_only(
        self, storage: Path, kit: Kit, caplog: pytest.LogCaptureFixture
    ) -> None:
        class Leaky:
            def __str__(self) -> str:
                raise ValueError("cannot render route for ann@example.com")

        exporter = kit.exporter(storage, writer="process")
        spans = [hand_built("a"), hand_built("b", {"odd": Leaky()}), hand_built("c")]
        with caplog.at_level(logging.DEBUG, logger="otel_json_exporter"):
            exporter.export(spans)
            assert exporter.force_flush(timeout_millis=20_000) is True
        assert [record.operation_name for record in load_records(storage)] == ["a", "c"]
        assert "cannot read a Leaky" in caplog.text
        assert "ann@example.com" not in caplog.text

    def test_a_value_that_calls_the_manager_while_read_cannot_hang_it(
        self, storage: Path, kit: Kit
    ) -> None:
        exporter = kit.exporter(storage, writer="process")

        class Curious:
            def __str__(self) -> str:
                exporter.manager.stats()  # takes the manager's lock
                raise ValueError("no text")

        exporter.export([hand_built("a"), hand_built("b", {"odd": Curious()})])
        finished = threading.Event()
        outcome: list[bool] = []

        def flush() -> None:
            outcome.append(exporter.force_flush(timeout_millis=20_000))
            finished.set()

        threading.Thread(target=flush, daemon=True).start()
        assert finished.wait(30), "force_flush never returned: the manager is deadlocked"
        assert outcome == [True]
        assert [record.operation_name for record in load_records(storage)] == ["a"]

    def test_a_span_name_that_is_not_text_is_refused_at_once(self, storage: Path, kit: Kit) -> None:
        exporter = kit.exporter(storage, writer="process")
        nameless = ReadableSpan(name=12345, start_time=1, end_time=2)  # type: ignore[arg-type]
        assert exporter.export([nameless, hand_built("ok")]) is SpanExportResult.FAILURE
        assert exporter.force_flush() is True
        assert [record.operation_name for record in load_records(storage)] == ["ok"]
        assert exporter.manager.stats().total_rejected == 1

    def test_a_policy_too_large_for_a_command_line_reaches_the_child(
        self, storage: Path, kit: Kit
    ) -> None:
        blocked = {f"tenant_field_{index:05d}" for index in range(8_000)}  # > 128 KiB as JSON
        exporter = kit.exporter(
            storage, writer="process", pii_policy=PiiPolicy(blocked_keys=blocked)
        )
        exporter.export([hand_built("a", {"tenant_field_07999": "x", "region": "ca"})])
        assert exporter.force_flush() is True
        (record,) = load_records(storage)
        assert "tenant_field_07999" not in record.metadata
        assert record.metadata["region"] == "ca"

    async def test_spans_and_direct_records_share_one_writer_process(self, storage: Path) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05, writer="process")
        await manager.start()
        exporter = OperationSpanExporter(manager=manager)
        provider = provider_for(exporter, BatchSpanProcessor)
        await manager.record_operation("business_event", "order_placed", 1.5)
        emit_workload(provider)
        provider.shutdown()
        await manager.record_operation("business_event", "order_shipped", 2.0)
        await manager.stop()
        records = load_records(storage)
        assert [record.operation_name for record in records] == [
            "order_placed",
            "SELECT orders",
            "SELECT stock",
            "GET /orders/{id}",  # the ASGI message span is filtered out, as in export()
            "order_shipped",
        ]
        assert (records[2].success, records[2].error_message) == (False, "deadlock detected")
        assert records[3].metadata["span_id"] == records[2].metadata["parent_span_id"]
        assert manager.stats().total_persisted == 5


class TestAttached:
    async def test_spans_and_direct_records_share_one_pipeline(
        self, storage: Path, processor: ProcessorFactory
    ) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05)
        await manager.start()
        exporter = OperationSpanExporter(manager=manager)
        provider = provider_for(exporter, processor)
        emit_workload(provider)
        await manager.record_operation("business_event", "order_placed", 1.5)
        provider.shutdown()  # on the event loop's thread, as FastAPI shutdown code does
        assert manager.is_running, "an attached manager belongs to the application"
        check_records = {record.operation_name for record in load_records(storage)}
        assert {"GET /orders/{id}", "SELECT orders", "SELECT stock"} <= check_records
        await manager.record_operation("business_event", "order_shipped", 2.0)
        await manager.stop()
        names = sorted(record.operation_name for record in load_records(storage))
        assert names == sorted(
            ["GET /orders/{id}", "SELECT orders", "SELECT stock", "order_placed", "order_shipped"]
        )

    def test_shutdown_on_the_managers_loop_thread_flushes_without_deadlock(
        self, storage: Path
    ) -> None:
        persisted_at_shutdown: list[int] = []
        failures: list[BaseException] = []

        async def application() -> None:
            manager = MetricsManager(storage, flush_interval_seconds=3600)
            await manager.start()
            exporter = OperationSpanExporter(manager=manager)
            provider = TracerProvider(shutdown_on_exit=False)
            provider.add_span_processor(
                BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000)
            )
            tracer = provider.get_tracer("tests")
            for index in range(20):
                with tracer.start_as_current_span(f"request-{index}"):
                    await asyncio.sleep(0)
            provider.shutdown()  # blocks this loop's thread while the spans are written
            persisted_at_shutdown.append(len(load_records(storage)))
            assert manager.is_running
            await manager.stop()

        def run() -> None:
            try:
                asyncio.run(application())
            except BaseException as exc:
                failures.append(exc)

        loop_thread = threading.Thread(target=run, daemon=True)
        loop_thread.start()
        loop_thread.join(timeout=60)
        assert not loop_thread.is_alive(), "shutdown on the event-loop thread deadlocked"
        assert failures == []
        assert persisted_at_shutdown == [20]

    async def test_export_after_exporter_shutdown_fails_but_the_manager_goes_on(
        self, storage: Path, kit: Kit
    ) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05)
        await manager.start()
        exporter = OperationSpanExporter(manager=manager)
        exporter.shutdown()
        assert exporter.export(kit.spans(1)) is SpanExportResult.FAILURE
        await manager.record_operation("business_event", "still_recorded", 1.0)
        await manager.stop()
        assert [r.operation_name for r in load_records(storage)] == ["still_recorded"]

    async def test_spans_after_the_manager_stopped_are_refused_not_raised(
        self, storage: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05)
        await manager.start()
        exporter = OperationSpanExporter(manager=manager)
        provider = provider_for(exporter, SimpleSpanProcessor)
        tracer = provider.get_tracer("tests")
        with tracer.start_as_current_span("before-stop"):
            pass
        await manager.stop()
        with caplog.at_level(logging.WARNING, logger="otel_json_exporter"):
            with tracer.start_as_current_span("after-stop"):
                pass
            provider.shutdown()
        assert "not running" in caplog.text
        assert exporter.force_flush() is True  # nothing left behind: stop() wrote it all
        assert [r.operation_name for r in load_records(storage)] == ["before-stop"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_after_fork_the_child_writes_its_own_spans_once(
    storage: Path, processor: ProcessorFactory
) -> None:
    exporter = OperationSpanExporter(storage, flush_interval_seconds=3600)
    provider = provider_for(exporter, processor)
    tracer = provider.get_tracer("tests")
    for index in range(5):
        with tracer.start_as_current_span(f"parent-before-{index}"):
            pass
    # The parent's records are still queued (flush in an hour) when it forks.
    assert exporter.manager.stats().total_persisted == 0

    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            for index in range(3):
                with tracer.start_as_current_span(f"child-{index}"):
                    pass
            flushed = provider.force_flush(10_000) and exporter.force_flush(10_000)
            code = 0 if flushed else 2
        finally:
            os._exit(code)

    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for index in range(2):
        with tracer.start_as_current_span(f"parent-after-{index}"):
            pass
    provider.shutdown()

    counts = Counter(record.operation_name for record in load_records(storage))
    expected = [f"parent-before-{n}" for n in range(5)]
    expected += [f"child-{n}" for n in range(3)]
    expected += [f"parent-after-{n}" for n in range(2)]
    assert counts == Counter(expected)


EXIT_SCRIPT = """
import sys

storage, order, processor = sys.argv[1:4]
if order == "provider-first":  # the SDK's atexit hook is registered before ours
    from opentelemetry.sdk.trace import TracerProvider
    provider = TracerProvider()
    from otel_json_exporter import OperationSpanExporter
else:
    from otel_json_exporter import OperationSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    provider = TracerProvider()
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

exporter = OperationSpanExporter(storage, flush_interval_seconds=3600)
if processor == "batch":
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
else:
    provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("exit")
for index in range(25):
    with tracer.start_as_current_span(f"last-{index}"):
        pass
# No shutdown, no flush: the interpreter exits with every span still in memory.
"""


@pytest.mark.parametrize("order", ["exporter-first", "provider-first"])
@pytest.mark.parametrize("processor_name", sorted(PROCESSORS))
def test_spans_ended_just_before_interpreter_exit_are_persisted(
    tmp_path: Path, order: str, processor_name: str
) -> None:
    storage = tmp_path / "metrics"
    script = tmp_path / "exit_app.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), str(storage), order, processor_name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    names = Counter(record.operation_name for record in load_records(storage))
    assert names == Counter(f"last-{n}" for n in range(25))
