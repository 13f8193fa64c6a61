"""Reliability under disk faults: failed writes are retried, nothing is lost or doubled.

Faults are injected at the OS-call boundary (:mod:`tests._faults`); the writer,
the manager and the files on disk are real. Every record carries a unique
``rid`` in its metadata, so "exactly once" is checked record by record.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager, StorageError
from otel_json_exporter import manager as manager_module
from otel_json_exporter import writer as writer_module

from ._faults import WRITER_THREAD, Fault, on_directory_fd, on_regular_fd, on_temp_file
from .conftest import load_records, numbered_records

CAP = 20.0  # seconds: a hang fails the test instead of blocking the suite


def make(storage: Path, **options: Any) -> MetricsManager:
    settings: dict[str, Any] = {"flush_interval_seconds": 60.0, "max_batch_size": 5}
    settings.update(options)
    return MetricsManager(storage, **settings)


async def record(manager: MetricsManager, rids: range | list[int]) -> None:
    for rid in rids:
        await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds; fail (not hang) if it does not within CAP seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CAP
    while not check():
        assert loop.time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


def rids_on_disk(storage: Path) -> list[int]:
    """The ``rid`` of every record on disk, duplicates included, in file order."""
    return [record.metadata["rid"] for record in load_records(storage)]


def temp_files(storage: Path) -> list[str]:
    return [name for name in os.listdir(storage) if name.endswith(".tmp")]


# (os function, errno, which calls fail): each point of BatchWriter.write that can fail.
FAULTS = {
    "create temp: no space": ("open", errno.ENOSPC, on_temp_file),
    "create temp: permission denied": ("open", errno.EACCES, on_temp_file),
    "write: no space": ("write", errno.ENOSPC, None),
    "write: quota": ("write", errno.EDQUOT, None),
    "fsync file: I/O error": ("fsync", errno.EIO, on_regular_fd),
    "close: I/O error": ("close", errno.EIO, on_regular_fd),
    "link: permission denied": ("link", errno.EACCES, None),
    "link: no space": ("link", errno.ENOSPC, None),
    "open directory: permission denied": ("open", errno.EACCES, lambda a: not on_temp_file(a)),
    "fsync directory: I/O error": ("fsync", errno.EIO, on_directory_fd),
}


class TestWriteFaults:
    @pytest.mark.parametrize("fault", FAULTS.values(), ids=list(FAULTS))
    async def test_a_failed_write_is_retried_and_nothing_is_lost_or_doubled(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
        fault: tuple[str, int, Any],
    ) -> None:
        name, error, match = fault
        caplog.set_level("INFO", logger="otel_json_exporter")
        manager = make(storage)
        await manager.start()
        injected = Fault(monkeypatch, name, error, failures=3, match=match)
        await record(manager, range(12))
        await asyncio.wait_for(manager.flush(), CAP)
        assert injected.failed == 3
        assert sorted(rids_on_disk(storage)) == list(range(12))
        stats = manager.stats()
        assert stats.write_errors == 3
        assert (stats.total_persisted, stats.queue_size, stats.worker_errors) == (12, 0, 0)
        # One warning for the run of three alike failures, then the recovery.
        assert caplog.text.count("they stay queued and will be retried") == 1
        assert os.strerror(error) in caplog.text
        assert "succeed again, after 3 failed attempts" in caplog.text
        await asyncio.wait_for(manager.stop(), CAP)
        assert temp_files(storage) == []

    async def test_a_disk_that_stays_down_is_warned_of_at_intervals_not_per_attempt(
        self,
        storage: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # flush() retries every 50 ms: a line per attempt flooded the log (a user's
        # trial saw 44 in two seconds). The interval is shortened here from 30 s.
        monkeypatch.setattr(manager_module, "_FAILURE_LOG_EVERY", 0.5)
        caplog.set_level("INFO", logger="otel_json_exporter")
        manager = make(storage)
        await manager.start()
        full = Fault(monkeypatch, "open", errno.ENOSPC, match=on_temp_file)
        await record(manager, range(5))
        with pytest.raises(asyncio.TimeoutError):
            await manager.flush(timeout=1.6)
        full.armed = False
        denied = Fault(monkeypatch, "open", errno.EACCES, failures=2, match=on_temp_file)
        await asyncio.wait_for(manager.flush(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)
        attempts = full.failed + denied.failed
        assert manager.stats().write_errors == attempts > 20
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        no_space = [line for line in warnings if os.strerror(errno.ENOSPC) in line]
        # The first failure, then one line per interval counting those left out.
        assert 3 <= len(no_space) <= 5, no_space
        assert "failed attempts since the last warning" in no_space[-1]
        # A new reason is told at once, and the recovery counts every attempt.
        assert sum(os.strerror(errno.EACCES) in line for line in warnings) == 1
        assert f"succeed again, after {attempts} failed attempts" in caplog.text
        assert rids_on_disk(storage) == list(range(5))

    async def test_a_temporary_file_that_cannot_be_removed_does_not_fail_its_batch(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # The batch is linked under its final name when removing the temporary name
        # fails: counting that as a failed write would write the batch a second time.
        manager = make(storage)
        await manager.start()
        Fault(monkeypatch, "unlink", errno.EACCES, failures=3, match=on_temp_file)
        await record(manager, range(15))
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == list(range(15))
        assert manager.stats().write_errors == 0
        leftovers = temp_files(storage)
        assert len(leftovers) == 3  # removed once stale or once this process is gone
        assert all((storage / name).stat().st_nlink == 2 for name in leftovers)

    async def test_recording_goes_on_while_the_disk_is_down_and_memory_stays_bounded(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_queue_size=50, queue_full_policy="drop")
        await manager.start()
        disk = Fault(monkeypatch, "open", errno.ENOSPC, match=on_temp_file)
        for rid in range(200):
            await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
            assert manager.stats().queue_size <= 50
        stats = manager.stats()
        assert (stats.total_recorded, stats.total_dropped, stats.queue_size) == (50, 150, 50)
        await eventually(lambda: manager.stats().write_errors >= 1)
        disk.heal()
        await asyncio.wait_for(manager.stop(), CAP)
        assert sorted(rids_on_disk(storage)) == list(range(50))
        assert manager.stats().write_errors == disk.failed

    async def test_retries_back_off_exponentially(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # No flush() is waiting, so the writer waits 0.1 s, 0.2 s, 0.4 s... between attempts.
        manager = make(storage, max_batch_size=1)
        await manager.start()
        disk = Fault(monkeypatch, "fsync", errno.EIO, match=on_regular_fd)
        await record(manager, [0])
        await eventually(lambda: disk.calls >= 4)
        gaps = [
            later - earlier
            for earlier, later in zip(disk.call_times, disk.call_times[1:], strict=False)
        ]
        for attempt, gap in enumerate(gaps[:3]):
            assert gap >= 0.1 * 2**attempt, f"retry {attempt + 1} came before its backoff"
        disk.heal()
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == [0]

    async def test_no_retry_before_the_backoff_unless_flush_or_stop_waits(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # A backoff of an hour: only the "at once" retry of flush() and stop() can write.
        monkeypatch.setattr(manager_module, "_INITIAL_BACKOFF", 3600.0)
        manager = make(storage, max_batch_size=3)
        await manager.start()
        disk = Fault(monkeypatch, "link", errno.EACCES, failures=1)
        await record(manager, range(3))
        await eventually(lambda: disk.calls >= 1)
        await asyncio.sleep(0.3)
        assert disk.calls == 1, "the writer retried before its backoff"
        await asyncio.wait_for(manager.flush(), CAP)
        assert rids_on_disk(storage) == [0, 1, 2]

        disk.armed, disk.failures_left = True, 2
        await record(manager, range(3, 6))
        await eventually(lambda: disk.calls >= 2)
        await asyncio.wait_for(manager.stop(timeout=CAP), CAP)
        assert disk.failed == 3
        assert rids_on_disk(storage) == list(range(6))

    async def test_flush_with_a_timeout_on_a_dead_disk_raises(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage)
        await manager.start()
        disk = Fault(monkeypatch, "write", errno.ENOSPC)
        await record(manager, range(2))
        with pytest.raises(asyncio.TimeoutError, match=r"within 0\.2s"):
            await asyncio.wait_for(manager.flush(timeout=0.2), CAP)
        assert manager.stats().queue_size == 2
        disk.heal()
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == [0, 1]


class TestStopOnADeadDisk:
    async def test_stop_raises_with_the_count_logs_it_and_keeps_the_records(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = make(storage)
        await manager.start()
        disk = Fault(monkeypatch, "fsync", errno.EIO)
        await record(manager, range(7))
        with (
            caplog.at_level(logging.ERROR, logger="otel_json_exporter"),
            pytest.raises(asyncio.TimeoutError, match=r"\b7 records were not persisted"),
        ):
            await asyncio.wait_for(manager.stop(timeout=0.3), CAP)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("7 records were not persisted" in message for message in errors)
        stats = manager.stats()
        assert (stats.is_running, stats.queue_size, stats.total_persisted) == (False, 7, 0)
        assert stats.write_errors == disk.failed >= 2  # retried at once, not after a backoff
        assert list(storage.glob("metrics_*.json")) == []

        disk.heal()  # the disk recovers: starting again writes what was kept
        await asyncio.wait_for(manager.start(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == list(range(7))


class TestStopWithNoTime:
    async def test_a_write_begun_before_stop_does_not_count_as_its_attempt(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """stop(timeout=0) still gets one attempt at what is queued when it is called.

        A batch taken before the stop() is being written (a slow fsync) when it comes;
        that write used to count as the stop's attempt, and the writer then left the
        records behind it in memory.
        """
        manager = make(storage, max_batch_size=3)
        await manager.start()
        slow = Fault(monkeypatch, "fsync", None, match=on_regular_fd, delay=0.3)
        await record(manager, range(3))  # a full batch: the writer takes it at once
        await eventually(lambda: slow.calls >= 1)  # and is in its fsync
        await record(manager, [3, 4])
        with pytest.raises(asyncio.TimeoutError, match=r"\b5 records were not persisted"):
            await asyncio.wait_for(manager.stop(timeout=0), CAP)
        await eventually(lambda: manager.stats().queue_size == 0)
        assert rids_on_disk(storage) == [0, 1, 2, 3, 4]
        assert slow.calls == 2  # one batch before the stop, one attempt for it


class TestStopWithNoTimeAndAWriterProcess:
    async def test_a_batch_sent_ahead_before_stop_does_not_count_as_its_attempt(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        manager = make(storage, max_batch_size=3, writer="process")
        await manager.start()
        made = numbered_records(6)
        # The child's answers reach the writer thread slowly.
        slow = Fault(monkeypatch, "read", None, delay=0.3)
        # Two full batches at once: the writer sends the first and the second ahead.
        assert await asyncio.to_thread(manager.submit_records, made) == 6
        await eventually(lambda: slow.calls >= 1)
        await record(manager, [6, 7])
        with pytest.raises(asyncio.TimeoutError, match=r"\b8 records were not persisted"):
            await asyncio.wait_for(manager.stop(timeout=0), CAP)
        await eventually(lambda: manager.stats().queue_size == 0)
        assert rids_on_disk(storage) == list(range(8))


class TestStartErrors:
    async def test_parent_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        manager = make(tmp_path / "file" / "metrics")
        with pytest.raises(StorageError, match="cannot create storage directory") as caught:
            await manager.start()
        assert caught.value.errno == errno.ENOTDIR
        assert not manager.is_running
        with pytest.raises(RuntimeError, match="not running"):
            await manager.record_operation("job", "step", 1.0)

    async def test_storage_path_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "metrics").write_text("")
        manager = make(tmp_path / "metrics")
        with pytest.raises(StorageError, match="exists and is not a directory"):
            await manager.start()
        assert not manager.is_running
        assert manager.stats().is_running is False

    async def test_directory_cannot_be_created(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        Fault(monkeypatch, "mkdir", errno.EACCES, writer_thread_only=False)
        manager = make(tmp_path / "metrics")
        with pytest.raises(
            StorageError, match=r"cannot create storage directory .*: Permission denied"
        ) as e:
            await manager.start()
        assert e.value.errno == errno.EACCES
        assert not manager.is_running

    async def test_directory_not_writable(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage.mkdir()
        Fault(monkeypatch, "open", errno.EACCES, match=on_temp_file, writer_thread_only=False)
        manager = make(storage)
        with pytest.raises(StorageError, match="is not writable: Permission denied"):
            await manager.start()
        assert not manager.is_running

    async def test_read_only_filesystem(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage.mkdir()
        Fault(monkeypatch, "open", errno.EROFS, match=on_temp_file, writer_thread_only=False)
        with pytest.raises(StorageError, match="not writable: Read-only file system"):
            await make(storage).start()

    async def test_the_same_manager_starts_once_the_problem_is_fixed(self, tmp_path: Path) -> None:
        (tmp_path / "metrics").write_text("")
        manager = make(tmp_path / "metrics")
        with pytest.raises(StorageError):
            await manager.start()
        (tmp_path / "metrics").unlink()
        await asyncio.wait_for(manager.start(), CAP)
        await record(manager, [1])
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(tmp_path / "metrics") == [1]

    async def test_a_full_disk_is_not_a_start_error(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        disk = Fault(
            monkeypatch, "open", errno.ENOSPC, match=on_temp_file, writer_thread_only=False
        )
        manager = make(storage)
        await asyncio.wait_for(manager.start(), CAP)
        assert manager.is_running
        await record(manager, range(3))
        with pytest.raises(asyncio.TimeoutError):
            await manager.flush(timeout=0.3)
        assert manager.stats().write_errors >= 1
        disk.heal()
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == [0, 1, 2]


class TestWorkerSurvives:
    async def test_a_flush_waits_for_its_records_when_a_later_one_is_dropped(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # "before" cannot reach the disk; "bad" and "bad too", accepted after the flush
        # began, cannot be encoded and are dropped after three tries. The flush must not
        # count those drops as "before" leaving the queue.
        manager = make(storage)
        await manager.start()
        disk = Fault(monkeypatch, "link", errno.EACCES)
        await manager.record_operation("job", "before", 1.0, metadata={"rid": 0})
        flushing = asyncio.ensure_future(manager.flush(timeout=3.0))
        await asyncio.sleep(0.05)
        now = time.time_ns() // 1000

        def row(name: str, duration: Any) -> Any:
            return ("job", name, duration, now, True, None, {})

        # Two that stand for a bug (a duration no encoder takes), around a good one
        rows = [row("bad", object()), row("middle", 1.0), row("bad too", object())]
        assert manager._submit_rows(rows, timeout=0.0, redacted=0, rejected=0) == 3
        with pytest.raises(asyncio.TimeoutError, match="flush did not finish"):
            await asyncio.wait_for(flushing, CAP)
        stats = manager.stats()
        assert (stats.total_dropped, stats.total_persisted, stats.queue_size) == (2, 0, 2)
        disk.heal()
        await asyncio.wait_for(manager.flush(), CAP)  # counts every record, dropped ones too
        await asyncio.wait_for(manager.record_operation("job", "after", 1.0), CAP)
        await asyncio.wait_for(manager.flush(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)
        names = [record.operation_name for record in load_records(storage)]
        assert names == ["before", "middle", "after"]

    async def test_an_unexpected_error_in_the_writer_is_logged_counted_and_survived(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        real_encode = writer_module.encode_rows
        calls = 0

        def encode_once_broken(*args: Any, **kwargs: Any) -> bytes:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("boom from the encoder")
            return real_encode(*args, **kwargs)

        monkeypatch.setattr(writer_module, "encode_rows", encode_once_broken)
        manager = make(storage, max_batch_size=3)
        await manager.start()
        await record(manager, range(3))
        await asyncio.wait_for(manager.flush(), CAP)
        await record(manager, range(3, 6))
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == list(range(6))
        stats = manager.stats()
        assert (stats.worker_errors, stats.write_errors) == (1, 0)
        logged = [r for r in caplog.records if r.exc_info and "metrics writer" in r.getMessage()]
        assert len(logged) == 1
        assert "boom from the encoder" in caplog.text

    async def test_an_unexpected_error_in_retention_does_not_kill_the_writer(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setattr(manager_module, "_RETENTION_EVERY", 0.05)
        manager = make(storage, retention_days=1, max_batch_size=1)
        await manager.start()
        real_scandir = os.scandir
        broken = 0

        def scandir_once_broken(path: Any) -> Any:
            nonlocal broken
            if threading.current_thread().name == WRITER_THREAD and broken == 0:
                broken += 1
                raise RuntimeError("boom from scandir")
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir_once_broken)
        await eventually(lambda: broken > 0)
        await record(manager, range(4))
        await asyncio.wait_for(manager.flush(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)
        assert rids_on_disk(storage) == list(range(4))
        assert manager.stats().worker_errors == 1
        assert "boom from scandir" in caplog.text
