"""The batch writer: atomic, fsynced, never-overwriting files, and directory checks."""

from __future__ import annotations

import errno
import os
import re
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from otel_json_exporter.records import MetricsBatch, OperationRecord
from otel_json_exporter.writer import BatchWriter, StorageError, delete_expired_batches

NAME = re.compile(r"^metrics_\d{8}_\d{6}_\d{6}\.json$")
MOMENT = datetime(2025, 12, 16, 8, 0, 5, 123456, tzinfo=timezone.utc)


def records(count: int) -> list[OperationRecord]:
    return [
        OperationRecord(
            operation_type="job",
            operation_name=f"step {index}",
            duration_ms=float(index),
            timestamp=MOMENT,
            metadata={"index": index},
        )
        for index in range(count)
    ]


class TestWrite:
    def test_writes_one_valid_file_named_after_its_batch_id(self, tmp_path: Path) -> None:
        written = BatchWriter(tmp_path).write(records(3), now=MOMENT)
        assert written.path == tmp_path / "metrics_20251216_080005_123456.json"
        assert written.records == 3
        assert written.bytes == written.path.stat().st_size
        batch = MetricsBatch.model_validate_json(written.path.read_bytes())
        assert batch.batch_id == "20251216_080005_123456"
        assert batch.total_records == 3
        assert batch.records == records(3)
        assert os.listdir(tmp_path) == [written.path.name]

    def test_same_microsecond_takes_the_next_free_batch_id(self, tmp_path: Path) -> None:
        writer = BatchWriter(tmp_path)
        first = writer.write(records(1), now=MOMENT)
        second = writer.write(records(2), now=MOMENT)
        assert first.batch_id == "20251216_080005_123456"
        assert second.batch_id == "20251216_080005_123457"
        assert second.path is not None
        assert MetricsBatch.model_validate_json(second.path.read_bytes()).total_records == 2

    def test_never_replaces_a_file_another_writer_made(self, tmp_path: Path) -> None:
        # Another process's writer: a separate instance that knows nothing of ours.
        taken = tmp_path / "metrics_20251216_080005_123456.json"
        taken.write_text("someone else's batch")
        also_taken = tmp_path / "metrics_20251216_080005_123457.json"
        also_taken.write_text("and another")
        written = BatchWriter(tmp_path).write(records(1), now=MOMENT)
        assert written.batch_id == "20251216_080005_123458"
        assert taken.read_text() == "someone else's batch"
        assert also_taken.read_text() == "and another"
        assert written.path is not None
        batch = MetricsBatch.model_validate_json(written.path.read_bytes())
        assert batch.batch_id == written.batch_id

    def test_timestamps_move_forward_when_the_clock_does_not(self, tmp_path: Path) -> None:
        writer = BatchWriter(tmp_path)
        writer.write(records(1), now=MOMENT)
        same = writer.write(records(1), now=MOMENT)
        earlier = writer.write(records(1), now=MOMENT - timedelta(milliseconds=999))
        assert [same.batch_id, earlier.batch_id] == [
            "20251216_080005_123457",
            "20251216_080005_123458",
        ]

    def test_a_clock_set_back_more_than_a_second_is_followed(self, tmp_path: Path) -> None:
        # A clock once wrong (years ahead, at boot) must not name every later batch in
        # its future, where retention and cleanup, which judge the name, never reach it.
        writer = BatchWriter(tmp_path)
        writer.write(records(1), now=MOMENT + timedelta(days=3650))
        back = writer.write(records(1), now=MOMENT)
        assert back.batch_id == "20251216_080005_123456"

    def test_fsyncs_the_file_before_linking_and_the_directory_after(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        events: list[str] = []
        real_fsync, real_link = os.fsync, os.link

        def fsync(fd: int) -> None:
            events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
            real_fsync(fd)

        def link(src: str, dst: str) -> None:
            events.append("link")
            real_link(src, dst)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "link", link)
        BatchWriter(tmp_path).write(records(2), now=MOMENT)
        assert events == ["fsync file", "link", "fsync dir"]

    @pytest.mark.parametrize("call", ["write", "fsync", "link"])
    def test_a_failure_leaves_no_batch_and_no_temporary_file(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
    ) -> None:
        def fail(*args: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, call, fail)
        with pytest.raises(OSError, match="No space left"):
            BatchWriter(tmp_path).write(records(2), now=MOMENT)
        monkeypatch.undo()
        assert os.listdir(tmp_path) == []
        written = BatchWriter(tmp_path).write(records(2), now=MOMENT)
        assert written.path is not None
        assert os.listdir(tmp_path) == [written.path.name]


class TestDirectoryFsyncFailure:
    def test_the_name_is_taken_back_so_the_retry_writes_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_fsync = os.fsync

        def directory_fsync_fails(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", directory_fsync_fails)
        with pytest.raises(OSError, match="Input/output error"):
            BatchWriter(tmp_path).write(records(2), now=MOMENT)
        assert os.listdir(tmp_path) == []

    def test_when_the_name_cannot_be_taken_back_the_batch_counts_as_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_fsync, real_unlink = os.fsync, os.unlink

        def directory_fsync_fails(fd: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_fsync(fd)

        def keep_batch_files(path: str) -> None:
            if os.path.basename(path).startswith("metrics_"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            real_unlink(path)

        monkeypatch.setattr(os, "fsync", directory_fsync_fails)
        monkeypatch.setattr(os, "unlink", keep_batch_files)
        written = BatchWriter(tmp_path).write(records(2), now=MOMENT)
        # A retry would write the batch a second time: the visible file is kept as written.
        assert written.path is not None
        assert os.listdir(tmp_path) == [written.path.name]
        assert MetricsBatch.model_validate_json(written.path.read_bytes()).total_records == 2


class TestPrepare:
    def test_creates_missing_parents(self, tmp_path: Path) -> None:
        target = tmp_path / "a" / "b" / "metrics"
        BatchWriter(target).prepare()
        assert target.is_dir()
        assert os.listdir(target) == []

    def test_a_file_in_the_way(self, tmp_path: Path) -> None:
        (tmp_path / "metrics").write_text("")
        with pytest.raises(StorageError, match="not a directory"):
            BatchWriter(tmp_path / "metrics").prepare()

    def test_a_parent_that_is_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        with pytest.raises(StorageError, match="cannot create storage directory"):
            BatchWriter(tmp_path / "file" / "metrics").prepare()

    def test_not_writable(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        real_open = os.open

        def deny(path: str, flags: int, mode: int = 0o777) -> int:
            if str(path).endswith(".tmp"):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return real_open(path, flags, mode)

        monkeypatch.setattr(os, "open", deny)
        with pytest.raises(StorageError, match="not writable: Permission denied"):
            BatchWriter(tmp_path).prepare()

    def test_a_full_disk_is_not_a_start_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(path: str, flags: int, mode: int = 0o777) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "open", full)
        BatchWriter(tmp_path).prepare()

    @pytest.mark.parametrize("error", [errno.ENOSPC, errno.EDQUOT])
    def test_a_disk_full_at_the_link_is_not_a_start_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int
    ) -> None:
        # The probe took the last inode or block; its hard link needs one more.
        def full(source: str, target: str) -> None:
            raise OSError(error, os.strerror(error))

        monkeypatch.setattr(os, "link", full)
        BatchWriter(tmp_path).prepare()
        assert list(tmp_path.iterdir()) == []  # the probe is gone


class TestRetention:
    def test_deletes_by_batch_id_and_only_exact_names(self, tmp_path: Path) -> None:
        now = datetime(2025, 12, 31, tzinfo=timezone.utc)
        old = tmp_path / "metrics_20251101_000000_000000.json"
        recent = tmp_path / "metrics_20251230_000000_000000.json"
        foreign = [
            "metrics_latest.json",
            "metrics_20250101_000000_000000.json.bak",
            "metrics_2025.json",
            "metrics_20251399_000000_000000.json",  # not a real date
            "notes.txt",
        ]
        for path in [old, recent, *(tmp_path / name for name in foreign)]:
            path.write_text("{}")
        # mtime says nothing: an old batch touched today is still old.
        os.utime(old)
        assert delete_expired_batches(tmp_path, timedelta(days=30), now=now, dry_run=True) == [old]
        assert old.exists()
        assert delete_expired_batches(tmp_path, timedelta(days=30), now=now) == [old]
        assert sorted(os.listdir(tmp_path)) == sorted([recent.name, *foreign])

    def test_negative_age_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="must not be negative"):
            delete_expired_batches(tmp_path, timedelta(days=-1))

    def test_an_age_beyond_the_calendar_deletes_nothing(self, tmp_path: Path) -> None:
        old = tmp_path / "metrics_00010101_000000_000000.json"
        old.write_text("{}")
        assert delete_expired_batches(tmp_path, timedelta(days=999_999_999)) == []
        assert old.exists()
