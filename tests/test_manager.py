"""MetricsManager: the spec's API, batching rules, flush, stop, stats and errors."""

from __future__ import annotations

import asyncio
import enum
import errno
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager, OperationRecord, PiiPolicy, StorageError
from otel_json_exporter import writer as writer_module
from otel_json_exporter.records import MetricsBatch, RecordRow

from ._tricky import disguised
from .conftest import load_batches, load_records, numbered_records

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")
FILE_NAME = re.compile(r"^metrics_(\d{8}_\d{6}_\d{6})\.json$")


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait until ``check()`` holds; fail the test if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def make(storage: Path, **options: object) -> MetricsManager:
    settings: dict[str, object] = {"flush_interval_seconds": 60.0, "max_batch_size": 1000}
    settings.update(options)
    return MetricsManager(storage, **settings)  # type: ignore[arg-type]


class TestRecording:
    async def test_spec_quick_start(self, storage: Path) -> None:
        manager = MetricsManager(storage_path=storage)
        await manager.start()
        await manager.record_operation(
            operation_type="api_request",
            operation_name="GET /api/users",
            duration_ms=42.5,
            success=True,
            metadata={"status_code": 200, "region": "us-east"},
        )
        await manager.stop()
        [record] = load_records(storage)
        assert record.operation_type == "api_request"
        assert record.operation_name == "GET /api/users"
        assert record.duration_ms == 42.5
        assert record.success is True
        assert record.error_message is None
        assert record.metadata == {"status_code": 200, "region": "us-east"}
        assert abs((datetime.now(timezone.utc) - record.timestamp).total_seconds()) < 60

    async def test_a_hundred_and_fifty_tasks_at_once(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=97, max_queue_size=500)
        await manager.start()

        async def producer(task: int) -> None:
            for index in range(40):
                await manager.record_operation(
                    "job", f"task {task}", float(index), metadata={"task": task, "i": index}
                )
                if index % 10 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(producer(task) for task in range(150)))
        await manager.stop()
        stats = await manager.get_stats()
        assert stats.total_recorded == stats.total_persisted == 6000
        assert stats.queue_size == 0
        seen = [(r.metadata["task"], r.metadata["i"]) for r in load_records(storage)]
        assert sorted(seen) == [(t, i) for t in range(150) for i in range(40)]
        batches = load_batches(storage)
        assert all(batch.total_records <= 97 for batch in batches)
        assert stats.batches_written == len(batches)

    async def test_records_from_other_threads_and_event_loops(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()

        def other_thread(worker: int) -> None:
            async def record_some() -> None:
                for index in range(50):
                    await manager.record_operation("t", f"w{worker}", 1.0, metadata={"i": index})

            asyncio.run(record_some())

        threads = [threading.Thread(target=other_thread, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        await manager.stop()
        assert len(load_records(storage)) == 200

    def test_one_submission_larger_than_the_queue_waits_for_room_and_keeps_order(
        self, storage: Path
    ) -> None:
        manager = make(storage, max_batch_size=10, max_queue_size=10)
        manager.start_sync()
        records = numbered_records(55, "i")
        assert manager.submit_records(records, timeout=30.0) == 55  # room freed batch by batch
        manager.stop_sync()
        assert [record.metadata["i"] for record in load_records(storage)] == list(range(55))
        stats = manager.stats()
        assert (stats.total_recorded, stats.total_dropped, stats.batches_written) == (55, 0, 6)

    async def test_submit_records_from_plain_threads(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=64)
        await manager.start()
        now = datetime.now(timezone.utc)

        def submit(worker: int) -> None:
            for index in range(100):
                made = OperationRecord(
                    operation_type="span",
                    operation_name=f"w{worker}",
                    duration_ms=0.5,
                    timestamp=now,
                    metadata={"i": index},
                )
                assert manager.submit_records([made], timeout=5.0) == 1

        threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert manager.flush_sync(timeout=5.0)
        assert len(load_records(storage)) == 800
        await manager.stop()


class TestBatching:
    async def test_batches_never_exceed_max_batch_size(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=7)
        await manager.start()
        for index in range(50):
            await manager.record_operation("t", "n", float(index))
        await manager.stop()
        sizes = [batch.total_records for batch in load_batches(storage)]
        assert sum(sizes) == 50
        assert max(sizes) == 7
        assert sizes.count(7) == 7

    async def test_flushes_as_soon_as_a_batch_is_full(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=5, flush_interval_seconds=3600)
        await manager.start()
        for index in range(5):
            await manager.record_operation("t", "n", float(index))
        await eventually(lambda: manager.stats().batches_written == 1)
        assert [b.total_records for b in load_batches(storage)] == [5]
        await manager.record_operation("t", "n", 1.0)
        await asyncio.sleep(0.2)
        assert manager.stats().queue_size == 1  # a partial batch waits for the timer
        for index in range(4):  # the queue reaches a batch again: written again at once
            await manager.record_operation("t", "n", float(index))
        await eventually(lambda: manager.stats().batches_written == 2)
        await manager.stop()

    async def test_flushes_partial_batches_on_the_timer(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=1000, flush_interval_seconds=0.1)
        await manager.start()
        await manager.record_operation("t", "n", 1.0)
        await manager.record_operation("t", "n", 2.0)
        await eventually(lambda: manager.stats().total_persisted == 2)
        await manager.record_operation("t", "n", 3.0)
        await eventually(lambda: manager.stats().total_persisted == 3)
        assert [b.total_records for b in load_batches(storage)] == [2, 1]
        await manager.stop()

    async def test_flush_returns_once_everything_is_on_disk(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=3)
        await manager.start()
        for index in range(10):
            await manager.record_operation("t", "n", float(index))
        await manager.flush()
        assert len(load_records(storage)) == 10
        assert manager.stats().queue_size == 0
        assert manager.is_running
        await manager.stop()

    async def test_stop_persists_everything_accepted(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=400, max_queue_size=5000)
        await manager.start()
        for index in range(2500):
            await manager.record_operation("t", "n", float(index))
        await manager.stop()
        assert [r.duration_ms for r in load_records(storage)] == [float(i) for i in range(2500)]
        stats = await manager.get_stats()
        assert stats.is_running is False
        assert stats.total_persisted == 2500
        assert stats.batches_written == 7
        assert stats.avg_batch_size == pytest.approx(2500 / 7)


class TestFormat:
    async def test_files_are_exactly_the_specified_format(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=4)
        await manager.start()
        for index in range(10):
            await manager.record_operation(
                "db_query",
                f"SELECT {index}",
                index / 3,
                success=index % 2 == 0,
                error_message=None if index % 2 == 0 else "boom",
                metadata={"rows": index, "tags": ["a", {"b": None}]},
            )
        await manager.stop()
        files = sorted(storage.iterdir())
        assert len(files) == 3
        for path in files:
            name = FILE_NAME.match(path.name)
            assert name
            data = json.loads(path.read_text())
            assert list(data) == ["records", "batch_timestamp", "batch_id", "total_records"]
            assert data["batch_id"] == name.group(1)
            assert TIMESTAMP.match(data["batch_timestamp"])
            assert data["total_records"] == len(data["records"])
            stamp = datetime.fromisoformat(data["batch_timestamp"])
            assert stamp.strftime("%Y%m%d_%H%M%S_%f") == data["batch_id"]
            for record in data["records"]:
                assert TIMESTAMP.match(record["timestamp"])
                assert list(record) == [
                    "operation_type",
                    "operation_name",
                    "duration_ms",
                    "timestamp",
                    "success",
                    "error_message",
                    "metadata",
                ]
            MetricsBatch.model_validate_json(path.read_bytes())
        records = load_records(storage)
        assert [r.error_message for r in records[:2]] == [None, "boom"]
        assert records[1].success is False

    async def test_storage_path_is_created(self, tmp_path: Path) -> None:
        manager = MetricsManager(tmp_path / "deep" / "er" / "metrics")
        await manager.start()
        assert (tmp_path / "deep" / "er" / "metrics").is_dir()
        await manager.stop()


class TestValidation:
    @pytest.mark.parametrize(
        ("arguments", "message"),
        [
            ({"duration_ms": -1.0}, "duration_ms: Input should be greater than or equal to 0"),
            ({"duration_ms": float("nan")}, "duration_ms: Input should be a finite number"),
            ({"duration_ms": float("inf")}, "duration_ms: Input should be a finite number"),
            ({"operation_type": ""}, "operation_type: String should have at least 1 character"),
            ({"operation_name": ""}, "operation_name: String should have at least 1 character"),
            ({"metadata": {3: "x"}}, "keys must be strings"),
            ({"metadata": {"a": {"b": (1,)}}}, r"metadata 'a'.'b': tuple is not allowed"),
            ({"metadata": {"x": float("nan")}}, "finite"),
            ({"metadata": {"user_email": "x"}}, "'user_email' is PII"),
            ({"metadata": {"list": [{"sessionId": "x"}]}}, r"'list'\[0\]\.'sessionId' is PII"),
            ({"metadata": {"note": "write to ana@example.com"}}, "e-mail address"),
        ],
    )
    async def test_bad_records_raise_value_error(
        self, storage: Path, arguments: dict[str, object], message: str
    ) -> None:
        manager = make(storage)
        await manager.start()
        call: dict[str, object] = {
            "operation_type": "t",
            "operation_name": "n",
            "duration_ms": 1.0,
        }
        call.update(arguments)
        with pytest.raises(ValueError, match=message):
            await manager.record_operation(**call)  # type: ignore[arg-type]
        await manager.record_operation("t", "ok", 1.0)
        await manager.stop()
        stats = await manager.get_stats()
        assert stats.total_rejected == 1
        assert [r.operation_name for r in load_records(storage)] == ["ok"]

    async def test_errors_never_echo_values(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        secret = "hunter2-very-secret"
        for metadata in (
            {"password": secret},
            {"ok": {"token": secret}},
            {"x": {"y": [secret, {1}]}},
        ):
            with pytest.raises(ValueError, match="metadata") as caught:
                await manager.record_operation("t", secret, 1.0, metadata=metadata)
            assert secret not in str(caught.value)
            assert caught.value.__cause__ is None
            assert caught.value.__context__ is None
        await manager.stop()

    async def test_error_message_is_truncated_and_addresses_masked(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        await manager.record_operation(
            "report for ann@example.org",
            "GET /users/jo@example.com",
            1.0,
            False,
            "no user jo@example.com" + "!" * 2000,
        )
        await manager.stop()
        [record] = load_records(storage)
        assert record.operation_type == "report for [REDACTED]"
        assert record.operation_name == "GET /users/[REDACTED]"
        assert record.error_message is not None
        assert record.error_message.startswith("no user [REDACTED]!!!")
        assert len(record.error_message) == 1000
        assert (await manager.get_stats()).pii_redacted == 3
        assert b"@example" not in b"".join(path.read_bytes() for path in storage.iterdir())

    async def test_custom_policy(self, storage: Path) -> None:
        policy = PiiPolicy(blocked_keys={"tenant"}, allowed_keys={"name"})
        manager = make(storage, pii_policy=policy)
        await manager.start()
        await manager.record_operation("t", "n", 1.0, metadata={"name": "report.pdf"})
        with pytest.raises(ValueError, match="'Tenant' is PII"):
            await manager.record_operation("t", "n", 1.0, metadata={"Tenant": "acme"})
        await manager.stop()
        assert load_records(storage)[0].metadata == {"name": "report.pdf"}

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"flush_interval_seconds": 0}, "flush_interval_seconds"),
            ({"flush_interval_seconds": float("inf")}, "finite"),
            ({"max_batch_size": 0}, "max_batch_size"),
            ({"max_queue_size": -5}, "max_queue_size"),
            ({"max_batch_size": True}, "max_batch_size"),
            ({"queue_full_policy": "wait"}, "queue_full_policy"),
            ({"retention_days": 0}, "retention_days"),
            ({"retention_days": "30"}, "retention_days"),
            ({"retention_days": True}, "retention_days"),
            ({"flush_interval_seconds": True}, "flush_interval_seconds"),
            ({"flush_interval_seconds": "5"}, "flush_interval_seconds"),
        ],
    )
    def test_bad_settings(self, storage: Path, options: dict[str, object], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            MetricsManager(storage, **options)  # type: ignore[arg-type]

    def test_an_empty_storage_path_is_refused(self) -> None:
        with pytest.raises(ValueError, match="storage_path must be a non-empty path"):
            MetricsManager("")

    async def test_a_relative_storage_path_stays_where_it_was_given(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        monkeypatch.chdir(first)
        manager = make(Path("metrics"))
        assert manager.storage_path == first / "metrics"
        await manager.start()
        monkeypatch.chdir(second)  # the application moves on; its batches do not
        await manager.record_operation("t", "n", 1.0)
        await manager.stop()
        assert len(load_records(first / "metrics")) == 1
        assert not (second / "metrics").exists()


class TestInputChangedWhileRecorded:
    """What is checked is what is written, even when another thread changes the input."""

    async def test_a_dict_changed_during_the_call_never_puts_pii_on_disk(
        self, storage: Path
    ) -> None:
        shared: dict[str, object] = {"region": "us-east", "note": "fine", "rows": 1}
        manager = make(storage, flush_interval_seconds=0.05, max_queue_size=50_000)
        await manager.start()
        await manager.record_operation("job", "warm", 1.0, metadata=dict(shared))
        done = threading.Event()

        def flip() -> None:
            while not done.is_set():
                shared["note"] = "bob@example.com"
                sum(range(20))  # hold each value a while, so that switches land on both
                shared["note"] = "fine"
                sum(range(20))

        flipper = threading.Thread(target=flip)
        previous = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show
        flipper.start()
        refused = 0
        try:
            for _ in range(20_000):
                try:
                    await manager.record_operation("job", "run", 1.0, metadata=shared)
                except ValueError:
                    refused += 1  # the address was there when the copy was taken
        finally:
            done.set()
            flipper.join()
            sys.setswitchinterval(previous)
        await manager.stop()
        notes = Counter(record.metadata.get("note") for record in load_records(storage))
        assert "bob@example.com" not in notes
        assert notes["fine"] + refused == 20_001  # the warm-up record too
        assert manager.stats().total_rejected == refused

    async def test_a_key_equal_to_a_cleared_key_but_not_a_str_is_refused(
        self, storage: Path
    ) -> None:
        class LooksLikeRegion:
            def __hash__(self) -> int:
                return hash("region")

            def __eq__(self, other: object) -> bool:
                return other == "region"

        manager = make(storage)
        await manager.start()
        await manager.record_operation("job", "warm", 1.0, metadata={"region": "ca"})
        with pytest.raises(ValueError, match="keys must be strings"):
            await manager.record_operation("job", "run", 1.0, metadata={LooksLikeRegion(): "ca"})  # type: ignore[dict-item]
        await manager.stop()
        assert [record.operation_name for record in load_records(storage)] == ["warm"]

    async def test_a_str_subclass_value_holding_an_address_is_refused(self, storage: Path) -> None:
        class Label(str):
            pass

        manager = make(storage)
        await manager.start()
        with pytest.raises(ValueError, match="e-mail address"):
            await manager.record_operation(
                "job", "run", 1.0, metadata={"region": Label("bob@example.com")}
            )
        await manager.record_operation("job", "ok", 1.0, metadata={"region": Label("ca")})
        await manager.stop()
        (record,) = load_records(storage)
        assert record.metadata == {"region": "ca"}
        assert type(record.metadata["region"]) is str
        assert b"bob@" not in b"".join(path.read_bytes() for path in storage.iterdir())

    async def test_str_subclasses_are_judged_and_written_by_their_text(self, storage: Path) -> None:
        Disguised = disguised(equal_to="region")

        class Tier(str, enum.Enum):
            GOLD = "gold"

        manager = make(storage)
        await manager.start()
        await manager.record_operation("job", "warm", 1.0, metadata={"region": "ca"})
        for metadata in (
            {Disguised("email"): "ann"},  # a PII key, equal to the cleared "region"
            {"note": Disguised("write to bob@example.com")},
            {"nested": {"note": Disguised("bob@example.com")}},
            {"region": Disguised("ca\ud800")},  # not valid Unicode, whatever isascii says
        ):
            with pytest.raises(ValueError, match=r"PII|not valid Unicode"):
                await manager.record_operation("job", "run", 1.0, metadata=metadata)
        await manager.record_operation(
            "job", Disguised("GET /users/bob@example.com"), 1.0, metadata={"tier": Tier.GOLD}
        )
        await manager.stop()
        warm, masked = load_records(storage)
        assert warm.operation_name == "warm"
        assert masked.operation_name == "GET /users/[REDACTED]"
        assert masked.metadata == {"tier": "gold"}
        assert b"bob@" not in b"".join(path.read_bytes() for path in storage.iterdir())
        assert manager.stats().total_rejected == 4

    async def test_an_error_message_cut_inside_a_masked_value_keeps_no_fragment(
        self, storage: Path
    ) -> None:
        manager = make(storage)
        await manager.start()
        message = "x" * 988 + " password=hunter2"
        await manager.record_operation("job", "run", 1.0, success=False, error_message=message)
        await manager.stop()
        (record,) = load_records(storage)
        assert record.error_message == "x" * 988 + " password="
        assert not manager.pii_policy.contains_pii(record.error_message)

    async def test_a_long_message_is_cut_where_the_check_still_passes(self, storage: Path) -> None:
        # Nothing to mask, but the plain cut would leave "password=REDAC": a record
        # that submit_records would refuse when it is read back and handed over.
        manager = make(storage)
        await manager.start()
        message = "x" * 985 + " password=REDACTED and more"
        await manager.record_operation("job", "run", 1.0, success=False, error_message=message)
        await manager.stop()
        (record,) = load_records(storage)
        assert record.error_message == "x" * 985 + " password="
        restarted = make(storage)
        await restarted.start()
        assert restarted.submit_records([record]) == 1
        await restarted.stop()

    async def test_metadata_that_changes_size_while_copied_is_a_value_error(
        self, storage: Path
    ) -> None:
        class Growing(Mapping[str, int]):
            """A mapping whose every read adds a key: its own iteration then fails."""

            def __init__(self) -> None:
                self.data = {"a": 1}

            def __getitem__(self, key: str) -> int:
                self.data[f"k{len(self.data)}"] = 0
                return self.data[key]

            def __iter__(self) -> Iterator[str]:
                return iter(self.data)

            def __len__(self) -> int:
                return len(self.data)

        manager = make(storage)
        await manager.start()
        with pytest.raises(ValueError, match="metadata changed while it was being recorded"):
            await manager.record_operation("job", "run", 1.0, metadata=Growing())
        await manager.stop()
        assert manager.stats().total_rejected == 1


class TestLifecycle:
    async def test_start_twice_raises(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        with pytest.raises(RuntimeError, match="already running"):
            await manager.start()
        await manager.stop()

    async def test_recording_while_not_running_raises(self, storage: Path) -> None:
        manager = make(storage)
        with pytest.raises(RuntimeError, match="not running"):
            await manager.record_operation("t", "n", 1.0)
        await manager.start()
        await manager.stop()
        with pytest.raises(RuntimeError, match="not running"):
            await manager.record_operation("t", "n", 1.0)
        with pytest.raises(RuntimeError, match="not running"):
            await manager.flush()

    async def test_stop_twice_and_stop_without_start_do_nothing(self, storage: Path) -> None:
        manager = make(storage)
        await manager.stop()
        await manager.start()
        await manager.record_operation("t", "n", 1.0)
        await manager.stop()
        await manager.stop()
        assert len(load_records(storage)) == 1

    async def test_restart_after_stop(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        await manager.record_operation("t", "first", 1.0)
        await manager.stop()
        await manager.start()
        await manager.record_operation("t", "second", 1.0)
        await manager.stop()
        assert [r.operation_name for r in load_records(storage)] == ["first", "second"]

    async def test_stop_timeout_raises_with_the_count_not_persisted(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = make(storage)
        await manager.start()
        for index in range(3):
            await manager.record_operation("t", "n", float(index))

        def broken_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(
            asyncio.TimeoutError, match=r"3 records were not persisted within 0\.3s"
        ):
            await manager.stop(timeout=0.3)
        assert "3 records were not persisted" in caplog.text
        stats = manager.stats()
        assert stats.is_running is False
        assert stats.queue_size == 3
        assert stats.write_errors >= 2
        # The disk recovers: the records were kept, and a restart writes them.
        monkeypatch.undo()
        await manager.start()
        await manager.stop()
        assert [r.duration_ms for r in load_records(storage)] == [0.0, 1.0, 2.0]


class TestQueueFull:
    @staticmethod
    def stall_writes(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
        """Make every fsync wait until the returned event is set."""
        release = threading.Event()
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            release.wait(10)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", slow_fsync)
        return release

    async def test_raise_policy(self, storage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        manager = make(storage, max_queue_size=5, max_batch_size=5, queue_full_policy="raise")
        await manager.start()
        release = self.stall_writes(monkeypatch)
        for index in range(5):
            await manager.record_operation("t", "n", float(index))
        with pytest.raises(asyncio.QueueFull, match="5 records"):
            await manager.record_operation("t", "n", 5.0)
        release.set()
        await manager.stop()
        assert len(load_records(storage)) == 5

    async def test_drop_policy(self, storage: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        manager = make(storage, max_queue_size=5, max_batch_size=5, queue_full_policy="drop")
        await manager.start()
        release = self.stall_writes(monkeypatch)
        for index in range(8):
            await manager.record_operation("t", "n", float(index))
        stats = manager.stats()
        assert (stats.total_recorded, stats.total_dropped) == (5, 3)
        release.set()
        await manager.stop()
        assert [r.duration_ms for r in load_records(storage)] == [0.0, 1.0, 2.0, 3.0, 4.0]

    async def test_block_policy_waits_for_room(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=5, max_batch_size=5)
        await manager.start()
        release = self.stall_writes(monkeypatch)
        for index in range(5):
            await manager.record_operation("t", "n", float(index))
        blocked = asyncio.ensure_future(manager.record_operation("t", "n", 5.0))
        await asyncio.sleep(0.2)
        assert not blocked.done()
        assert manager.stats().queue_size == 5
        release.set()
        await asyncio.wait_for(blocked, 5)
        await manager.stop()
        assert len(load_records(storage)) == 6
        assert manager.stats().total_dropped == 0

    async def test_submit_records_drops_after_its_timeout(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=4, max_batch_size=4)
        await manager.start()
        release = self.stall_writes(monkeypatch)
        now = datetime.now(timezone.utc)
        made = [
            OperationRecord(operation_type="t", operation_name="n", duration_ms=1, timestamp=now)
            for _ in range(6)
        ]
        accepted = await asyncio.to_thread(manager.submit_records, made, timeout=0.05)
        assert accepted == 4
        assert manager.stats().total_dropped == 2
        release.set()
        await manager.stop()
        assert len(load_records(storage)) == 4

    async def test_submit_records_waiting_when_the_manager_stops(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=2, max_batch_size=2)
        await manager.start()
        release = self.stall_writes(monkeypatch)
        now = datetime.now(timezone.utc)
        made = [
            OperationRecord(operation_type="t", operation_name="n", duration_ms=1, timestamp=now)
            for _ in range(5)
        ]
        submitting = asyncio.ensure_future(
            asyncio.to_thread(manager.submit_records, made, timeout=30.0)
        )
        await eventually(lambda: manager.stats().queue_size == 2)
        stopping = asyncio.ensure_future(manager.stop(timeout=10))
        await asyncio.sleep(0.05)
        release.set()
        # The waiting submitter is told how many got in; it does not raise.
        assert await asyncio.wait_for(submitting, 10) == 2
        await asyncio.wait_for(stopping, 10)
        stats = manager.stats()
        assert (stats.total_recorded, stats.total_dropped, stats.total_persisted) == (2, 3, 2)


class TestQueuedRows:
    async def test_the_garbage_collector_stops_tracking_what_waits_in_the_queue(
        self, storage: Path
    ) -> None:
        """A queued record holds plain values only, however it came in.

        The collector then leaves a full queue alone: tracked, every queued row
        was gone over again at each of its passes (benchmarks/HISTORY.md).
        """
        import gc

        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        from otel_json_exporter import OperationSpanExporter

        manager = make(storage, max_batch_size=1000)
        await manager.start()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(OperationSpanExporter(manager=manager)))
        # No collection may run before the first check, or it would find them untracked already.
        gc.disable()
        try:
            await manager.record_operation("job", "plain", 1.0, metadata={"region": "us-east"})
            await manager.record_operation("job", "plain", 1.0, metadata={"region": "eu-west"})
            nested = {"tags": ["a", "b"], "limits": {"cpu": 2}}
            await manager.record_operation("job", "full", 1.0, metadata=nested)
            await manager.record_operation("job", "no metadata", 2)
            record = OperationRecord(
                operation_type="job",
                operation_name="submitted",
                duration_ms=1.0,
                timestamp=datetime.now(timezone.utc),
                metadata={"rows": [1, 2, 3]},
            )
            assert manager.submit_records([record]) == 1
            tracer = provider.get_tracer("t")
            with tracer.start_as_current_span("span", attributes={"k": ("x", "y")}):
                pass
            queued = list(manager._buffer)
            assert len(queued) == 6
            assert all(gc.is_tracked(item) for item in queued)  # so the check below can fail
        finally:
            gc.enable()
        gc.collect()
        assert [gc.is_tracked(item) for item in queued] == [False] * 6
        assert [type(item[6]) for item in queued] == [bytes] * 6
        await manager.stop()
        provider.shutdown()
        names = [record.operation_name for record in load_records(storage)]
        assert names == ["plain", "plain", "full", "no metadata", "submitted", "span"]
        assert load_records(storage)[2].metadata == {"tags": ["a", "b"], "limits": {"cpu": 2}}


class TestWriterResilience:
    async def test_a_record_that_cannot_be_encoded_does_not_stop_the_others(
        self, storage: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Validation makes such a row impossible through the public API (see the
        # next test); handed over internally, it stands for a bug, and must cost
        # only itself.
        manager = make(storage)
        await manager.start()
        now = time.time_ns() // 1000

        def made(name: str, duration: object) -> RecordRow:
            return ("t", name, duration, now, True, None, {})  # type: ignore[return-value]

        batch = [made("before", 1.0), made("bad", object()), made("after", 1.0)]
        assert manager._submit_rows(batch, timeout=0.0, redacted=0, rejected=0) == 3
        await manager.flush(timeout=5)
        await manager.record_operation("t", "later", 1.0)
        await manager.stop()
        assert [r.operation_name for r in load_records(storage)] == ["before", "after", "later"]
        stats = manager.stats()
        assert (stats.total_dropped, stats.worker_errors, stats.total_persisted) == (1, 3, 3)
        assert "dropped 1 queued records that cannot be encoded" in caplog.text

    async def test_metadata_that_cannot_be_encoded_is_refused_before_it_is_queued(
        self, storage: Path
    ) -> None:
        # Queued rows hold their metadata as JSON text, encoded as they are queued:
        # a row whose metadata cannot be encoded is refused there, with the others
        # of its call, and the error names the record, not the value.
        manager = make(storage)
        await manager.start()
        now = time.time_ns() // 1000

        def made(name: str, metadata: dict[str, object]) -> RecordRow:
            return ("t", name, 1.0, now, True, None, metadata)

        class Secret:
            def __repr__(self) -> str:
                return "bob@example.com"

        batch = [made("before", {}), made("bad", {"x": Secret()}), made("after", {})]
        with pytest.raises(ValueError, match="record 1: metadata cannot be written as JSON") as err:
            manager._submit_rows(batch, timeout=0.0, redacted=0, rejected=0)
        assert "bob" not in str(err.value)
        await manager.stop()
        assert load_records(storage) == []
        assert (manager.stats().total_rejected, manager.stats().queue_size) == (3, 0)

    async def test_submit_records_validates_every_record_again(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        now = datetime.now(timezone.utc)

        def made(name: str, metadata: Mapping[str, object]) -> OperationRecord:
            return OperationRecord.model_construct(
                operation_type="t",
                operation_name=name,
                duration_ms=1.0,
                timestamp=now,
                success=True,
                error_message=None,
                metadata=metadata,
            )

        for bad in ({"x": object()}, {"note": ("bob@example.com",)}, {"n": b"bob@example.com"}):
            with pytest.raises(ValueError, match=r"none queued: record 1: .*is not allowed"):
                manager.submit_records([made("before", {}), made("bad", bad)])
        valid = OperationRecord(
            operation_type="t",
            operation_name="kept",
            duration_ms=1.0,
            timestamp=now,
            metadata={"note": "fine"},
        )
        assert manager.submit_records([valid]) == 1
        valid.metadata["note"] = "bob@example.com"  # changed after it was handed over
        await manager.stop()
        (record,) = load_records(storage)
        assert record.metadata == {"note": "fine"}
        assert manager.stats().total_rejected == 6


class TestEdges:
    """Corners found in review: each once hung, spun or crashed."""

    async def test_flush_waiting_when_stop_gives_up_is_told_at_once(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage)
        await manager.start()
        for index in range(5):
            await manager.record_operation("t", "n", float(index))

        def broken_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", broken_fsync)
        flushing = asyncio.ensure_future(manager.flush())  # no timeout of its own
        await asyncio.sleep(0.05)
        with pytest.raises(asyncio.TimeoutError, match="5 records were not persisted"):
            await manager.stop(timeout=0.3)
        with pytest.raises(RuntimeError, match="stopped before the flush finished: 5 records"):
            await asyncio.wait_for(flushing, 5)

    async def test_backoff_resumes_when_a_flush_gives_up(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from otel_json_exporter import manager as manager_module

        monkeypatch.setattr(manager_module, "_INITIAL_BACKOFF", 3600.0)
        manager = make(storage)
        await manager.start()
        await manager.record_operation("t", "n", 1.0)

        def full_disk(fd: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", full_disk)
        with pytest.raises(asyncio.TimeoutError):
            await manager.flush(timeout=0.3)  # retried every 50 ms while it waited
        errors_when_flush_gave_up = manager.stats().write_errors
        assert errors_when_flush_gave_up >= 2
        await asyncio.sleep(0.5)
        # Back to the (one-hour) backoff: at most the attempt already under way.
        assert manager.stats().write_errors <= errors_when_flush_gave_up + 1
        monkeypatch.undo()
        await manager.stop()
        assert len(load_records(storage)) == 1

    async def test_infinite_timeouts_mean_no_timeout(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        await manager.record_operation("t", "n", 1.0)
        assert manager.flush_sync(float("inf"))
        now = datetime.now(timezone.utc)
        made = OperationRecord(operation_type="t", operation_name="m", duration_ms=1, timestamp=now)
        assert manager.submit_records([made], timeout=float("inf")) == 1
        await asyncio.to_thread(manager.stop_sync, float("inf"))
        assert not manager.is_running
        assert len(load_records(storage)) == 2

    @pytest.mark.parametrize("timeout", [-1.0, float("nan")])
    async def test_a_negative_or_nan_stop_timeout_changes_nothing(
        self, storage: Path, timeout: float
    ) -> None:
        manager = make(storage)
        await manager.start()
        with pytest.raises(ValueError, match="at least 0"):
            await manager.stop(timeout)
        assert manager.is_running
        await manager.stop()

    async def test_a_temporary_file_with_an_impossible_pid_is_just_stale(
        self, storage: Path
    ) -> None:
        storage.mkdir()
        stray = (
            storage / f".metrics_99999999999999999999_n{writer_module._PROCESS_SPACE}_abcdef.tmp"
        )
        stray.write_text("")
        manager = make(storage)
        await manager.start()
        await manager.stop()
        assert not stray.exists()

    async def test_a_filesystem_without_hard_links_is_a_start_error(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_links(source: str, target: str) -> None:
            raise OSError(errno.EPERM, os.strerror(errno.EPERM))

        monkeypatch.setattr(os, "link", no_links)
        manager = make(storage)
        with pytest.raises(StorageError, match="does not support hard links"):
            await manager.start()
        assert not manager.is_running
        assert os.listdir(storage) == []

    async def test_submit_records_applies_the_pii_rule(self, storage: Path) -> None:
        manager = make(storage)
        await manager.start()
        now = datetime.now(timezone.utc)

        def made(**fields: Any) -> OperationRecord:
            base: dict[str, Any] = {
                "operation_type": "t",
                "operation_name": "n",
                "duration_ms": 1.0,
                "timestamp": now,
            }
            return OperationRecord.model_validate({**base, **fields})

        clean = made()
        for dirty, where in [
            (made(metadata={"nested": {"sessionId": "s-123"}}), "'sessionId' is PII"),
            (made(metadata={"note": "ann@example.org"}), "e-mail"),
        ]:
            with pytest.raises(ValueError, match=where) as caught:
                manager.submit_records([clean, dirty])
            assert "ann@example.org" not in str(caught.value)
            assert "s-123" not in str(caught.value)
        assert manager.stats().queue_size == 0
        assert manager.stats().total_rejected == 4
        # Names and error messages are free text: masked, as record_operation masks them
        # (a user's trial: a sync worker's error path raised, and lost the good record).
        masked = made(
            operation_name="GET /u/ann@example.org",
            success=False,
            error_message="SMTPRecipientsRefused: bob@example.com",
        )
        assert manager.submit_records([clean, masked]) == 2
        assert manager.stats().pii_redacted == 2
        await manager.stop()
        written = load_records(storage)
        assert [(r.operation_name, r.error_message) for r in written] == [
            ("n", None),
            ("GET /u/[REDACTED]", "SMTPRecipientsRefused: [REDACTED]"),
        ]

    @pytest.mark.parametrize(
        "message",
        [
            "x" * 983 + "alice.smith@gmail.com could not be reached",  # the cut: "...@gmail"
            "z" * 972 + " via postgresql://admin:hunter2@db/app",  # the cut: "//admin:hunt"
        ],
    )
    async def test_a_cut_error_message_never_hides_pii(self, storage: Path, message: str) -> None:
        record = OperationRecord(
            operation_type="t",
            operation_name="n",
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
            success=False,
            error_message=message,
        )
        assert record.error_message is not None
        assert len(record.error_message) <= 1000
        assert "REDACTED" in record.error_message
        for part in ("gmail", "alice", "admin", "hunt"):
            assert part not in record.error_message
        manager = make(storage)
        await manager.start()
        assert manager.submit_records([record]) == 1
        await manager.stop()
        (written,) = load_records(storage)
        assert written.error_message == record.error_message

    async def test_stop_again_after_one_that_gave_up_writes_what_was_left(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage)
        await manager.start()
        for index in range(10):
            await manager.record_operation("t", "n", float(index))

        def broken_fsync(fd: int) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(asyncio.TimeoutError, match="10 records were not persisted"):
            await manager.stop(timeout=0.2)
        monkeypatch.undo()  # the disk heals: a second stop() tries again, with its own deadline
        await manager.stop(timeout=5)
        assert [r.duration_ms for r in load_records(storage)] == [float(i) for i in range(10)]
        assert manager.stats().queue_size == 0
        await manager.stop()  # and a third has nothing left to do
