"""Reliability under overload: producers faster than the disk for a sustained period.

The disk is made slow (or stopped) at ``os.fsync``; producers record as fast as
they can. Memory stays bounded by ``max_queue_size``, each queue-full policy
does what it documents, and the span exporter never holds the SDK's thread for
longer than ``export_timeout_seconds`` even when the disk does not move at all.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_json_exporter import MetricsManager
from otel_json_exporter.exporter import OperationSpanExporter

from ._faults import Fault, on_regular_fd
from .conftest import load_records

CAP = 30.0
PRODUCERS = 4
PER_PRODUCER = 600
QUEUE = 100
BATCH = 20
SUSTAINED_WRITES = 40  # overload lasts while the slow disk writes this many batches


def make(storage: Path, **options: Any) -> MetricsManager:
    settings: dict[str, Any] = {
        "flush_interval_seconds": 0.05,
        "max_batch_size": BATCH,
        "max_queue_size": QUEUE,
    }
    settings.update(options)
    return MetricsManager(storage, **settings)


def slow_disk(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.01) -> Fault:
    """Every fsync of a batch file takes ``seconds``: at most BATCH / seconds records/s."""
    return Fault(monkeypatch, "fsync", None, match=on_regular_fd, delay=seconds)


def rids_on_disk(storage: Path) -> list[int]:
    return [record.metadata["rid"] for record in load_records(storage)]


class Producers:
    """PRODUCERS tasks recording as fast as the manager lets them.

    Each records PER_PRODUCER records, or with ``until``, goes on until ``until()``
    holds: overload sustained for as long as the test wants.
    """

    def __init__(self, manager: MetricsManager) -> None:
        self.manager = manager
        self.accepted: list[int] = []
        self.refused: list[int] = []
        self.largest_queue = 0

    async def run(self, until: Callable[[], bool] | None = None) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(self._produce(index, until) for index in range(PRODUCERS))), CAP
        )

    async def _produce(self, producer: int, until: Callable[[], bool] | None) -> None:
        sequence = 0
        while not until() if until else sequence < PER_PRODUCER:
            rid = producer * 1_000_000 + sequence
            sequence += 1
            try:
                await self.manager.record_operation(
                    "job", "step", 1.0, metadata={"rid": rid, "pad": "x" * 200}
                )
            except asyncio.QueueFull:
                self.refused.append(rid)
            else:
                self.accepted.append(rid)
            queued = self.manager.stats().queue_size
            self.largest_queue = max(self.largest_queue, queued)
            if queued >= QUEUE:
                # Still far faster than the disk, but leaves the writer thread the GIL:
                # a producer spinning on a full queue would otherwise starve it.
                await asyncio.sleep(0.001)
            elif sequence % 10 == 0:
                await asyncio.sleep(0)  # let the other producers in


class TestQueueFullPoliciesUnderSustainedOverload:
    async def test_block_waits_and_loses_nothing(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage)
        await manager.start()
        disk = slow_disk(monkeypatch)
        producers = Producers(manager)
        await producers.run()
        assert producers.refused == []
        assert QUEUE - BATCH <= producers.largest_queue <= QUEUE  # it filled up, never beyond
        await asyncio.wait_for(manager.stop(), CAP)
        assert sorted(rids_on_disk(storage)) == sorted(producers.accepted)
        assert len(producers.accepted) == PRODUCERS * PER_PRODUCER
        stats = manager.stats()
        assert (stats.total_dropped, stats.write_errors) == (0, 0)
        assert disk.calls == stats.batches_written

    async def test_raise_refuses_with_queue_full_and_keeps_every_accepted_record(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, queue_full_policy="raise")
        await manager.start()
        disk = slow_disk(monkeypatch)
        producers = Producers(manager)
        await producers.run(until=lambda: disk.calls >= SUSTAINED_WRITES)
        assert producers.refused, "the producers never outran the disk"
        assert producers.largest_queue <= QUEUE
        await asyncio.wait_for(manager.stop(), CAP)
        assert sorted(rids_on_disk(storage)) == sorted(producers.accepted)
        stats = manager.stats()
        assert stats.total_recorded == len(producers.accepted)
        assert stats.total_dropped == 0  # refused records were never accepted, and were told

    async def test_drop_counts_every_dropped_record(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, queue_full_policy="drop")
        await manager.start()
        disk = slow_disk(monkeypatch)
        producers = Producers(manager)
        await producers.run(until=lambda: disk.calls >= SUSTAINED_WRITES)
        assert producers.largest_queue <= QUEUE
        await asyncio.wait_for(manager.stop(), CAP)
        on_disk = rids_on_disk(storage)
        assert len(on_disk) == len(set(on_disk))
        stats = manager.stats()
        assert stats.total_dropped > 0, "the producers never outran the disk"
        assert len(on_disk) + stats.total_dropped == len(producers.accepted)
        assert stats.total_persisted == stats.total_recorded == len(on_disk)

    async def test_memory_stays_bounded_by_the_queue(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # 3,000 records of 10 kB each (30 MB) pass through a queue of 100 (about 1 MB).
        manager = make(storage, queue_full_policy="drop")
        await manager.start()
        slow_disk(monkeypatch)
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            for rid in range(3000):
                payload = f"{rid:010d}" + "x" * 10_000  # a fresh string: nothing is shared
                await manager.record_operation("job", "step", 1.0, metadata={"big": payload})
                assert manager.stats().queue_size <= QUEUE
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        await asyncio.wait_for(manager.stop(), CAP)
        assert manager.stats().total_dropped > 0
        assert peak < 8_000_000, f"peak {peak / 1e6:.1f} MB for a queue of {QUEUE} x 10 kB"

    async def test_a_queue_smaller_than_a_batch_is_written_when_full(self, storage: Path) -> None:
        # Blocked producers must not wait for the next timed flush (an hour away here).
        manager = make(
            storage, flush_interval_seconds=3600.0, max_batch_size=1000, max_queue_size=10
        )
        await manager.start()
        for rid in range(35):
            await asyncio.wait_for(
                manager.record_operation("job", "step", 1.0, metadata={"rid": rid}), 10
            )
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == list(range(35))


class TestExporterUnderOverload:
    @staticmethod
    def finished_spans(count: int) -> list[ReadableSpan]:
        captured = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(captured))
        tracer = provider.get_tracer("reliability")
        for index in range(count):
            with tracer.start_as_current_span(f"work {index}", attributes={"rid": index}):
                pass
        spans = list(captured.get_finished_spans())
        provider.shutdown()
        return spans

    def test_export_never_holds_the_sdk_thread_while_the_disk_is_stuck(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        limit = 0.05
        exporter = OperationSpanExporter(
            storage_path=storage,
            max_queue_size=QUEUE,
            max_batch_size=BATCH,
            flush_interval_seconds=0.05,
            export_timeout_seconds=limit,
        )
        release = threading.Event()
        real_fsync = os.fsync

        def stuck_fsync(fd: int) -> None:  # the disk does not move until released
            release.wait()
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", stuck_fsync)
        spans = self.finished_spans(40)
        results: list[SpanExportResult] = []
        held: list[float] = []

        def sdk_thread() -> None:  # what BatchSpanProcessor's worker does: export, repeatedly
            for start in range(0, 2 * QUEUE, 10):
                began = time.monotonic()
                results.append(exporter.export(spans[start % 40 : start % 40 + 10]))
                held.append(time.monotonic() - began)

        worker = threading.Thread(target=sdk_thread)
        worker.start()
        worker.join(CAP)
        try:
            # Had export() waited for the disk, it would still be waiting: the disk is stuck.
            assert not worker.is_alive(), "export() held the SDK's thread on a stuck disk"
            assert len(results) == 2 * QUEUE // 10
            assert results[: QUEUE // 10] == [SpanExportResult.SUCCESS] * (QUEUE // 10)
            assert set(results[QUEUE // 10 :]) == {SpanExportResult.FAILURE}
            assert max(held) < limit + 2.0  # the documented limit, plus scheduling slack
            stats = exporter.manager.stats()
            assert stats.queue_size <= QUEUE
            assert stats.total_dropped == QUEUE
        finally:
            release.set()
            exporter.shutdown()
        assert len(load_records(storage)) == QUEUE
