"""Fixtures shared by the whole suite: a storage directory, a batch-file reader, a stalled disk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from otel_json_exporter.records import BATCH_FILE_PATTERN, MetricsBatch, OperationRecord

from ._faults import StalledDisk


def load_batches(directory: Path) -> list[MetricsBatch]:
    """Every batch file in ``directory``, parsed and checked against its name."""
    batches = []
    for path in sorted(directory.glob("metrics_*.json")):
        match = BATCH_FILE_PATTERN.fullmatch(path.name)
        assert match, f"unexpected batch file name {path.name}"
        batch = MetricsBatch.model_validate_json(path.read_bytes())
        assert batch.batch_id == match.group(1), f"{path.name} holds batch {batch.batch_id}"
        batches.append(batch)
    return batches


def load_records(directory: Path) -> list[OperationRecord]:
    """Every record in every batch file of ``directory``, in file order."""
    return [record for batch in load_batches(directory) for record in batch.records]


def numbered_records(count: int, key: str = "rid") -> list[OperationRecord]:
    """``count`` valid records made at one moment, numbered 0.. under ``metadata[key]``."""
    now = datetime.now(timezone.utc)
    return [
        OperationRecord(
            operation_type="job",
            operation_name="step",
            duration_ms=0.5,
            timestamp=now,
            metadata={key: number},
        )
        for number in range(count)
    ]


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    """A storage directory that does not exist yet (the manager creates it)."""
    return tmp_path / "metrics"


@pytest.fixture
def read_records() -> Callable[[Path], list[OperationRecord]]:
    """``read_records(directory)``: all records on disk, each file validated."""
    return load_records


@pytest.fixture
def read_batches() -> Callable[[Path], list[MetricsBatch]]:
    """``read_batches(directory)``: all batch files, validated against their names."""
    return load_batches


@pytest.fixture
def stalled_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[StalledDisk]:
    """A :class:`~tests._faults.StalledDisk`, released at the end of the test."""
    disk = StalledDisk(monkeypatch)
    try:
        yield disk
    finally:
        disk.release()
