"""Retention: batch files older than ``retention_days`` go, judged by the name alone.

Only names matching exactly ``metrics_YYYYMMDD_HHMMSS_ffffff.json`` are ever
touched. Each file's mtime is set opposite to its name's age, so a rule that
looked at mtimes would delete the wrong files.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from otel_json_exporter import MetricsManager, delete_expired_batches
from otel_json_exporter import manager as manager_module
from otel_json_exporter.exporter import OperationSpanExporter
from otel_json_exporter.records import batch_id_for

CAP = 10.0
NOT_BATCH_NAMES = [
    "metrics_latest.json",
    "metrics_20000101_000000_000000.json.bak",
    "metrics_2000.json",
    "metrics_20000101_000000.json",
    "metrics_20000101_000000_0000000.json",
    "Metrics_20000101_000000_000000.json",
    "metrics_20001301_000000_000000.json",  # the right shape, but month 13: not a date
    "xmetrics_20000101_000000_000000.json",
    ".metrics_20000101_000000_000000.json",
    "notes.txt",
]


def name_for(moment: datetime) -> str:
    return f"metrics_{batch_id_for(moment)}.json"


class Directory:
    """A storage directory holding old and new batch files, and files that are not batches."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        now = datetime.now(timezone.utc)
        self.old = [root / name_for(now - timedelta(days=days)) for days in (3, 40, 400)]
        self.new = [
            root / name_for(now - timedelta(hours=20)),
            root / name_for(now + timedelta(days=1)),  # a clock that ran ahead
        ]
        self.others = [root / name for name in NOT_BATCH_NAMES]
        for path in self.old + self.new + self.others:
            path.write_text("{}")
        for path in self.old:  # brand-new mtime, old name
            os.utime(path, (time.time(), time.time()))
        ancient = time.time() - 1000 * 86400
        for path in self.new + self.others:  # ancient mtime
            os.utime(path, (ancient, ancient))
        # A directory and a symlink that look like old batches are not batch files either.
        self.directory = root / "metrics_20000101_000000_000000.json"
        self.directory.mkdir()
        self.outside = root.parent / "outside.json"
        self.outside.write_text("keep")
        self.symlink = root / "metrics_20000102_000000_000000.json"
        self.symlink.symlink_to(self.outside)

    def move_to(self, root: Path) -> None:
        """Move every entry into ``root`` at once (each a rename: no half-made file there)."""
        for name in os.listdir(self.root):
            os.rename(self.root / name, root / name)
        for attribute in ("old", "new", "others"):
            setattr(self, attribute, [root / path.name for path in getattr(self, attribute)])
        self.directory = root / self.directory.name
        self.symlink = root / self.symlink.name
        self.root = root

    def assert_only_old_batches_went(self) -> None:
        assert not any(path.exists() for path in self.old)
        assert all(path.exists() for path in self.new + self.others)
        assert self.directory.is_dir()
        assert self.symlink.is_symlink()
        assert self.outside.read_text() == "keep"


class TestRetentionOption:
    async def test_start_deletes_batches_older_than_retention_days(self, storage: Path) -> None:
        files = Directory(storage)
        manager = MetricsManager(storage, retention_days=1)
        await asyncio.wait_for(manager.start(), CAP)
        files.assert_only_old_batches_went()
        before = set(os.listdir(storage))
        await manager.record_operation("job", "step", 1.0)
        await asyncio.wait_for(manager.stop(), CAP)
        (ours,) = set(os.listdir(storage)) - before
        assert ours.startswith("metrics_")

    async def test_off_by_default(self, storage: Path) -> None:
        files = Directory(storage)
        manager = MetricsManager(storage)
        assert manager.retention_days is None
        await asyncio.wait_for(manager.start(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)
        assert all(path.exists() for path in files.old + files.new + files.others)

    async def test_applied_again_while_running(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(manager_module, "_RETENTION_EVERY", 0.05)  # hourly, sped up
        manager = MetricsManager(storage, retention_days=1)
        await asyncio.wait_for(manager.start(), CAP)
        files = Directory(storage.parent / "staging")
        files.move_to(storage)  # appears after start: only the periodic run can see it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CAP
        while any(path.exists() for path in files.old):
            assert loop.time() < deadline, "retention never ran while the manager was running"
            await asyncio.sleep(0.02)
        files.assert_only_old_batches_went()
        await asyncio.wait_for(manager.stop(), CAP)

    @pytest.mark.parametrize("days", [0, -1, float("nan"), float("inf"), 36_501, 1e9])
    def test_invalid_retention_days(self, storage: Path, days: float) -> None:
        with pytest.raises(ValueError, match="retention_days must be a positive number"):
            MetricsManager(storage, retention_days=days)

    def test_the_exporter_passes_it_through(self, storage: Path) -> None:
        files = Directory(storage)
        exporter = OperationSpanExporter(storage_path=storage, retention_days=1)
        try:
            assert exporter.manager.retention_days == 1
            files.assert_only_old_batches_went()
        finally:
            exporter.shutdown()


class TestDeleteExpiredBatches:
    def test_on_demand(self, storage: Path) -> None:
        files = Directory(storage)
        deleted = delete_expired_batches(storage, timedelta(days=1))
        assert sorted(deleted) == sorted(files.old)
        files.assert_only_old_batches_went()

    def test_dry_run_deletes_nothing(self, storage: Path) -> None:
        files = Directory(storage)
        would = delete_expired_batches(storage, timedelta(days=1), dry_run=True)
        assert sorted(would) == sorted(files.old)
        assert all(path.exists() for path in files.old + files.new + files.others)

    def test_now_is_the_reference_point(self, storage: Path) -> None:
        storage.mkdir()
        moment = datetime(2025, 6, 1, tzinfo=timezone.utc)
        before = storage / name_for(moment - timedelta(days=30, microseconds=1))
        exactly = storage / name_for(moment - timedelta(days=30))
        for path in (before, exactly):
            path.write_text("{}")
        assert delete_expired_batches(storage, timedelta(days=30), now=moment) == [before]
        assert exactly.exists()

    def test_a_missing_directory_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            delete_expired_batches(tmp_path / "missing", timedelta(days=1))

    def test_negative_age_is_refused(self, storage: Path) -> None:
        with pytest.raises(ValueError, match="must not be negative"):
            delete_expired_batches(storage, timedelta(days=-1))
