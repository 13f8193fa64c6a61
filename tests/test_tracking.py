"""``track_operation``: the specification's timing helper, as context manager and decorator."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from otel_json_exporter import MetricsManager, track_operation
from tests.conftest import load_records


@pytest.fixture
async def manager(storage: Path) -> AsyncIterator[MetricsManager]:
    manager = MetricsManager(storage, flush_interval_seconds=0.05)
    await manager.start()
    yield manager
    await manager.stop()


class TestContextManager:
    async def test_a_successful_block(self, manager: MetricsManager, storage: Path) -> None:
        async with track_operation(manager, "computation", "process_user_data", {"rows": 3}):
            await asyncio.sleep(0.01)
        await manager.flush()
        (record,) = load_records(storage)
        assert (record.operation_type, record.operation_name) == (
            "computation",
            "process_user_data",
        )
        assert record.success is True
        assert record.error_message is None
        assert record.duration_ms > 0
        assert record.metadata == {"rows": 3}

    async def test_a_failing_block_is_recorded_and_the_error_propagates(
        self, manager: MetricsManager, storage: Path
    ) -> None:
        with pytest.raises(KeyError, match="missing"):
            async with track_operation(manager, "computation", "lookup"):
                raise KeyError("missing")
        await manager.flush()
        (record,) = load_records(storage)
        assert record.success is False
        assert record.error_message == "KeyError: 'missing'"

    async def test_cancellation_counts_as_failure(
        self, manager: MetricsManager, storage: Path
    ) -> None:
        async def slow() -> None:
            async with track_operation(manager, "computation", "slow"):
                await asyncio.sleep(3600)

        task = asyncio.create_task(slow())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await manager.flush()
        (record,) = load_records(storage)
        assert (record.success, record.error_message) == (False, "CancelledError")

    async def test_a_recording_error_after_success_is_raised(self, storage: Path) -> None:
        stopped = MetricsManager(storage)
        with pytest.raises(RuntimeError, match="not running"):
            async with track_operation(stopped, "computation", "never_recorded"):
                pass

    async def test_a_recording_error_never_hides_the_original_exception(
        self, storage: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        stopped = MetricsManager(storage)
        with (
            caplog.at_level(logging.WARNING, logger="otel_json_exporter"),
            pytest.raises(ZeroDivisionError),
        ):
            async with track_operation(stopped, "computation", "divide"):
                _ = 1 / 0
        assert "could not record a failed operation: RuntimeError" in caplog.text

    async def test_an_exception_whose_str_raises_still_propagates_and_is_recorded(
        self, manager: MetricsManager, storage: Path
    ) -> None:
        class Unprintable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no text")

        with pytest.raises(Unprintable):
            async with track_operation(manager, "computation", "opaque"):
                raise Unprintable
        await manager.flush()
        (record,) = load_records(storage)
        assert (record.success, record.error_message) == (False, "Unprintable")

    async def test_a_lone_surrogate_in_the_message_is_replaced(
        self, manager: MetricsManager, storage: Path
    ) -> None:
        name = b"report_\xff.csv".decode("utf-8", "surrogateescape")  # as os.listdir gives it
        with pytest.raises(ValueError, match="cannot parse"):
            async with track_operation(manager, "computation", "parse"):
                raise ValueError(f"cannot parse {name}")
        await manager.flush()
        (record,) = load_records(storage)
        assert record.error_message == "ValueError: cannot parse report_\ufffd.csv"

    async def test_one_instance_times_one_block_at_a_time(self, manager: MetricsManager) -> None:
        timer = track_operation(manager, "computation", "nested")
        async with timer:
            with pytest.raises(RuntimeError, match="already timing"):
                async with timer:
                    pass


class TestDecorator:
    async def test_every_call_is_recorded(self, manager: MetricsManager, storage: Path) -> None:
        @track_operation(manager, "database_query", "SELECT users")
        async def select_users(limit: int) -> list[str]:
            await asyncio.sleep(0)
            if limit < 0:
                raise ValueError("limit must not be negative")
            return ["ann", "bob"][:limit]

        results = await asyncio.gather(select_users(1), select_users(2))
        # gather returns a list; typeshed types it as a tuple.
        assert results == [["ann"], ["ann", "bob"]]  # type: ignore[comparison-overlap]
        with pytest.raises(ValueError, match="negative"):
            await select_users(-1)
        assert select_users.__name__ == "select_users"
        await manager.flush()
        records = load_records(storage)
        assert [record.success for record in records].count(True) == 2
        (failed,) = [record for record in records if not record.success]
        assert failed.error_message == "ValueError: limit must not be negative"


class TestSynchronous:
    """A Flask view, a Celery task, a thread: no event loop (a user's trial found none)."""

    def test_a_block_and_a_plain_function_are_timed_from_threads(self, storage: Path) -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05)
        manager.start_sync()

        @track_operation(manager, "task", "resize_image", metadata={"queue": "media"})
        def resize(size: int) -> int:
            if size < 0:
                raise ValueError("size must not be negative")
            return size * 2

        def work(index: int) -> None:
            with track_operation(manager, "task", "thumbnail"):
                assert resize(index) == index * 2
            with pytest.raises(ValueError, match="negative"):
                resize(-1)

        threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert resize.__name__ == "resize"
        manager.stop_sync()
        records = load_records(storage)
        assert Counter((r.operation_name, r.success) for r in records) == {
            ("thumbnail", True): 8,
            ("resize_image", True): 8,
            ("resize_image", False): 8,
        }
        failed = [r for r in records if not r.success]
        assert {r.error_message for r in failed} == {"ValueError: size must not be negative"}
        assert all(
            r.metadata == {"queue": "media"}
            for r in records
            if r.operation_type == "task" and r.operation_name == "resize_image"
        )

    def test_recording_problems_are_raised_after_success_and_logged_after_failure(
        self, storage: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = MetricsManager(storage)
        manager.start_sync()
        with (
            pytest.raises(ValueError, match="PII"),
            track_operation(manager, "task", "t", metadata={"email": "x"}),
        ):
            pass
        with (
            pytest.raises(KeyError),
            track_operation(manager, "task", "t", metadata={"email": "x"}),
        ):  # the application's own exception wins
            raise KeyError("k")
        assert "could not record a failed operation: ValueError" in caplog.text
        manager.stop_sync()
        with (
            pytest.raises(RuntimeError, match="not running"),
            track_operation(manager, "task", "after stop"),
        ):
            pass

    def test_a_full_queue_follows_the_managers_policy(self, storage: Path) -> None:
        manager = MetricsManager(
            storage, flush_interval_seconds=3600, max_queue_size=1, queue_full_policy="raise"
        )
        manager.start_sync()
        with track_operation(manager, "task", "first"):
            pass
        with (
            pytest.raises(asyncio.QueueFull, match="full"),
            track_operation(manager, "task", "second"),
        ):
            pass
        manager.stop_sync()
        assert [r.operation_name for r in load_records(storage)] == ["first"]
