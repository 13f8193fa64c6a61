"""Lifecycle misuse: every case has a documented result, and none of them hangs.

Each call runs under ``asyncio.wait_for`` (or a thread ``join``) with a cap, so a
hang fails the test instead of blocking the suite.

| misuse | result |
| --- | --- |
| ``start()`` twice | RuntimeError "already running"; the running manager is unaffected |
| ``stop()`` twice, ``stop()`` without ``start()`` | nothing happens |
| ``stop(timeout=None)`` or another non-number | TypeError/ValueError; still running |
| ``record_operation()``/``flush()`` before start or after stop | RuntimeError "not running" |
| ``stop()`` while producers wait for room | they get RuntimeError; stop returns |
| ``start()`` again after ``stop()`` | works; records still held are written |
| ``start()`` while a ``stop()`` still waits | the manager runs again; that ``stop()`` returns |
| another thread / another event loop | works, same results |
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager

from ._faults import WRITER_THREAD, Fault, on_temp_file
from .conftest import load_records

CAP = 10.0


def make(storage: Path, **options: Any) -> MetricsManager:
    settings: dict[str, Any] = {"flush_interval_seconds": 60.0, "max_batch_size": 10}
    settings.update(options)
    return MetricsManager(storage, **settings)


async def capped(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, CAP)


def rids_on_disk(storage: Path) -> list[int]:
    return [record.metadata["rid"] for record in load_records(storage)]


async def record(manager: MetricsManager, rid: int) -> None:
    await capped(manager.record_operation("job", "step", 1.0, metadata={"rid": rid}))


def in_thread(coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine with ``asyncio.run`` on a new thread (its own event loop)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = asyncio.run(coroutine_function())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(CAP)
    assert not thread.is_alive(), "the call hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def writer_threads() -> set[threading.Thread]:
    """Writer threads alive now (other tests' managers included: compare with a snapshot)."""
    return {t for t in threading.enumerate() if t.name == WRITER_THREAD}


def assert_writer_threads_end(threads: set[threading.Thread]) -> None:
    """After stop() the writer has decided to exit; its thread ends right after."""
    for thread in threads:
        thread.join(CAP)
        assert not thread.is_alive(), "a writer thread outlived stop()"


async def two_producers_waiting_for_room(manager: MetricsManager) -> list[asyncio.Task[None]]:
    """Fill a queue of three (records 0, 1, 2) that does not drain; two more calls wait."""
    for rid in range(3):
        await record(manager, rid)
    blocked = [
        asyncio.ensure_future(manager.record_operation("job", "step", 1.0)) for _ in range(2)
    ]
    await asyncio.sleep(0.1)
    assert not any(task.done() for task in blocked)
    return blocked


class TestMisuse:
    async def test_start_twice(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())
        with pytest.raises(RuntimeError, match="already running"):
            await capped(manager.start())
        await record(manager, 1)
        await capped(manager.stop())
        assert rids_on_disk(storage) == [1]

    async def test_stop_without_start_does_nothing(self, storage: Path) -> None:
        manager = make(storage)
        assert await capped(manager.stop()) is None
        assert not storage.exists()
        assert not manager.is_running

    async def test_stop_twice_does_nothing_the_second_time(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())
        await record(manager, 1)
        await capped(manager.stop())
        stats = manager.stats()
        assert await capped(manager.stop()) is None
        assert manager.stats() == stats
        assert rids_on_disk(storage) == [1]

    async def test_two_concurrent_stops_both_return(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())
        await record(manager, 1)
        await capped(asyncio.gather(manager.stop(), manager.stop()))
        assert rids_on_disk(storage) == [1]

    async def test_recording_and_flushing_before_start(self, storage: Path) -> None:
        manager = make(storage)
        with pytest.raises(RuntimeError, match="not running"):
            await record(manager, 1)
        with pytest.raises(RuntimeError, match="not running"):
            await capped(manager.flush())
        with pytest.raises(RuntimeError, match="not running"):
            manager.submit_records([])
        assert manager.stats().total_recorded == 0

    async def test_recording_and_flushing_after_stop(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())
        await capped(manager.stop())
        with pytest.raises(RuntimeError, match="not running"):
            await record(manager, 1)
        with pytest.raises(RuntimeError, match="not running"):
            await capped(manager.flush())
        assert manager.flush_sync is not None
        with pytest.raises(RuntimeError, match="not running"):
            manager.flush_sync(CAP)

    async def test_start_again_after_stop(self, storage: Path) -> None:
        manager = make(storage)
        for round_ in range(3):
            await capped(manager.start())
            await record(manager, round_)
            await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1, 2]

    async def test_stop_while_producers_wait_for_room(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=3, max_batch_size=3)
        await capped(manager.start())
        disk = Fault(monkeypatch, "link", errno.EACCES)  # nothing drains: the queue stays full
        blocked = await two_producers_waiting_for_room(manager)
        with pytest.raises(asyncio.TimeoutError, match=r"\b3 records were not persisted"):
            await capped(manager.stop(timeout=0.3))
        for task in blocked:
            with pytest.raises(RuntimeError, match=r"not running|stopped"):
                await capped(task)
        assert manager.stats().total_recorded == 3
        disk.heal()
        await capped(manager.start())
        await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1, 2]

    async def test_stop_wakes_producers_while_a_write_hangs(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=3, max_batch_size=3)
        await capped(manager.start())
        disk = Fault(monkeypatch, "fsync", None, delay=3.0)  # the disk hangs on each fsync
        blocked = await two_producers_waiting_for_room(manager)
        with pytest.raises(asyncio.TimeoutError, match="not persisted"):
            await capped(manager.stop(timeout=0.3))
        # Woken by stop() itself, long before the hanging fsync returns
        done, _ = await asyncio.wait(blocked, timeout=1.0)
        assert len(done) == 2
        for task in blocked:
            with pytest.raises(RuntimeError, match=r"not running|stopped"):
                task.result()
        disk.heal()
        await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1, 2]

    async def test_start_right_after_a_stop_that_timed_out(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The writer may still be finishing its last attempt when stop() gives up;
        # start() right then must still work (and must not start a second writer).
        before = writer_threads()
        manager = make(storage)
        disk = Fault(monkeypatch, "fsync", errno.EIO)
        for round_ in range(5):
            await capped(manager.start())
            await record(manager, round_)
            with pytest.raises(asyncio.TimeoutError, match="not persisted"):
                await capped(manager.stop(timeout=0.1))
        assert manager.stats().queue_size == 5
        disk.heal()
        await capped(manager.start())
        await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1, 2, 3, 4]
        assert_writer_threads_end(writer_threads() - before)

    async def test_start_while_a_stop_is_still_waiting(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The later call wins: the manager runs again, and the waiting stop() returns.
        manager = make(storage)
        await capped(manager.start())
        disk = Fault(monkeypatch, "fsync", errno.EIO)
        await record(manager, 0)
        stopping = asyncio.ensure_future(manager.stop(timeout=3 * CAP))
        await asyncio.sleep(0.1)
        assert not stopping.done()
        await capped(manager.start())
        assert await capped(stopping) is None
        assert manager.is_running
        await record(manager, 1)
        disk.heal()
        await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1]

    @pytest.mark.parametrize("timeout", [None, "10", float("nan")])
    async def test_stop_with_a_bad_timeout_changes_nothing(
        self, storage: Path, timeout: Any
    ) -> None:
        manager = make(storage)
        await capped(manager.start())
        await record(manager, 0)
        with pytest.raises((TypeError, ValueError), match="timeout must be a number of seconds"):
            await capped(manager.stop(timeout=timeout))
        with pytest.raises((TypeError, ValueError), match="timeout must be a number of seconds"):
            manager.stop_sync(timeout=timeout)
        assert manager.is_running  # still running, still accepting
        await record(manager, 1)
        await capped(manager.stop())
        assert rids_on_disk(storage) == [0, 1]

    async def test_stop_cancelled_by_its_caller_can_be_called_again(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage)
        await capped(manager.start())
        await record(manager, 1)
        release = threading.Event()
        real_fsync = os.fsync

        def slow_fsync(fd: int) -> None:
            release.wait(10)
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", slow_fsync)
        stopping = asyncio.ensure_future(manager.stop())
        await asyncio.sleep(0.1)  # stop() has begun and waits on the stalled write
        assert not manager.is_running
        assert not stopping.done()
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping
        release.set()
        await capped(manager.stop())
        assert not manager.is_running
        assert rids_on_disk(storage) == [1]


class TestOtherThreadsAndLoops:
    async def test_record_from_another_thread_on_its_own_loop(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())

        async def produce() -> None:
            for rid in range(20):
                await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})

        in_thread(produce)
        await capped(manager.stop())
        assert rids_on_disk(storage) == list(range(20))

    async def test_producers_on_other_loops_blocked_on_a_full_queue_are_woken(
        self, storage: Path
    ) -> None:
        # The wake-up for room comes from the writer thread into each waiting loop.
        manager = make(storage, max_queue_size=4, max_batch_size=2)
        await capped(manager.start())

        def produce(first: int) -> Callable[[], Coroutine[Any, Any, None]]:
            async def run() -> None:
                for rid in range(first, first + 50):
                    await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})

            return run

        threads = [
            threading.Thread(target=in_thread, args=(produce(first),)) for first in (0, 50, 100)
        ]
        for thread in threads:
            thread.start()
        for rid in range(150, 200):  # and this loop too
            await record(manager, rid)
        for thread in threads:
            thread.join(CAP)
            assert not thread.is_alive()
        await capped(manager.stop())
        assert sorted(rids_on_disk(storage)) == list(range(200))

    async def test_start_on_one_loop_flush_and_stop_on_another(self, storage: Path) -> None:
        manager = make(storage)
        await capped(manager.start())
        await record(manager, 1)

        async def flush_then_stop() -> None:
            await manager.flush()
            assert rids_on_disk(storage) == [1]
            await manager.stop()

        in_thread(flush_then_stop)
        assert not manager.is_running
        with pytest.raises(RuntimeError, match="not running"):
            await record(manager, 2)

    async def test_start_twice_from_two_threads_at_once(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A slow disk at start() keeps both threads inside start() at the same time.
        Fault(monkeypatch, "open", None, match=on_temp_file, writer_thread_only=False, delay=0.2)
        before = writer_threads()
        manager = make(storage)
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def start() -> None:
            barrier.wait()
            try:
                manager.start_sync()
            except RuntimeError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(CAP)
        assert len(errors) == 1, "exactly one of two concurrent starts must fail"
        assert "already running" in str(errors[0])
        started = writer_threads() - before
        assert len(started) == 1
        await capped(manager.stop())
        assert_writer_threads_end(started)

    def test_sync_lifecycle_on_a_thread_without_a_loop(self, storage: Path) -> None:
        manager = make(storage)
        manager.stop_sync()  # not started: nothing
        manager.start_sync()
        with pytest.raises(RuntimeError, match="already running"):
            manager.start_sync()
        manager.stop_sync()
        manager.stop_sync()
        with pytest.raises(RuntimeError, match="not running"):
            manager.submit_records([])
        assert not manager.is_running


class TestExitFlush:
    async def test_a_manager_stopped_meanwhile_leaves_the_others_flushed(
        self, tmp_path: Path
    ) -> None:
        from otel_json_exporter import manager as manager_module

        stopped_meanwhile, other = make(tmp_path / "a"), make(tmp_path / "b")
        for manager in (stopped_meanwhile, other):
            await capped(manager.start())
            for rid in range(3):
                await record(manager, rid)
        real_flush = stopped_meanwhile.flush_sync

        def stopped_first(timeout: float | None = None) -> bool:
            # Another thread's stop() lands between the exit hook's is_running check and
            # its flush; the flush then finds the manager stopped.
            stopped_meanwhile.stop_sync()
            return real_flush(timeout)

        stopped_meanwhile.flush_sync = stopped_first  # type: ignore[method-assign]
        manager_module._flush_at_exit()  # raised RuntimeError, leaving later managers unflushed
        assert other.is_running
        assert rids_on_disk(tmp_path / "b") == [0, 1, 2]  # flushed by the hook
        assert rids_on_disk(tmp_path / "a") == [0, 1, 2]  # written by its stop()
        await capped(other.stop())
