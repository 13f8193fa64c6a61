"""Per-operation statistics over a directory of batch files, in bounded memory.

Files are read one at a time and each record is folded into its group's
counters and :class:`~otel_json_exporter._sketch.LogHistogram`, so memory is one
batch file plus, per group, a few numbers and the sketch's counters (at most
1,260 for durations between 1 µs and a day): it does not grow with the number
of records. Percentiles are within 1 % of the exact lower quantile (see
:mod:`otel_json_exporter._sketch`); count, errors, maximum and first and last
timestamp are exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from otel_json_exporter import _batchfiles
from otel_json_exporter._sketch import DEFAULT_RELATIVE_ACCURACY, LogHistogram
from otel_json_exporter.pii import DEFAULT_POLICY
from otel_json_exporter.records import OperationRecord, format_timestamp

__all__ = ["PERCENTILES", "GroupBy", "GroupStats", "Summary", "summarize"]

GroupBy = Literal["operation", "type", "name"]
"""``operation``: type and name together; ``type`` or ``name``: that field alone."""

PERCENTILES = (50, 95, 99)

GroupKey = tuple[str | None, str | None]


@dataclass
class GroupStats:
    """Exact counts and time range, and a duration sketch, of one group of records."""

    durations: LogHistogram = field(default_factory=LogHistogram)
    errors: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def add(self, record: OperationRecord) -> None:
        self.durations.add(record.duration_ms)
        if not record.success:
            self.errors += 1
        if self.first is None or record.timestamp < self.first:
            self.first = record.timestamp
        if self.last is None or record.timestamp > self.last:
            self.last = record.timestamp

    def merge(self, other: GroupStats) -> None:
        self.durations.merge(other.durations)
        self.errors += other.errors
        for moment in (other.first, other.last):
            if moment is not None:
                self.first = moment if self.first is None else min(self.first, moment)
                self.last = moment if self.last is None else max(self.last, moment)

    @property
    def count(self) -> int:
        return self.durations.count

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready statistics; durations in ms, rates 0..1, null when there are no records."""
        count = self.count
        stats: dict[str, Any] = {"count": count, "errors": self.errors}
        stats["error_rate"] = self.errors / count if count else None
        for percentile in PERCENTILES:
            stats[f"p{percentile}_ms"] = self.durations.quantile(percentile / 100)
        stats["max_ms"] = self.durations.max if count else None
        stats["first_timestamp"] = format_timestamp(self.first) if self.first else None
        stats["last_timestamp"] = format_timestamp(self.last) if self.last else None
        return stats


@dataclass
class Summary:
    """The statistics of one directory: per group, totals, and which files were read."""

    group_by: GroupBy
    since: datetime | None = None
    until: datetime | None = None
    groups: dict[GroupKey, GroupStats] = field(default_factory=dict)
    files_read: int = 0
    invalid_files: list[_batchfiles.InvalidBatchFile] = field(default_factory=list)
    other_names: int = 0

    def totals(self) -> GroupStats:
        """All groups merged."""
        total = GroupStats()
        for stats in self.groups.values():
            total.merge(stats)
        return total

    def sorted_groups(self) -> list[tuple[GroupKey, GroupStats]]:
        """Groups by type, then name."""
        return sorted(self.groups.items(), key=lambda item: (item[0][0] or "", item[0][1] or ""))

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document; its keys are stable."""
        return {
            "group_by": self.group_by,
            "since": format_timestamp(self.since) if self.since else None,
            "until": format_timestamp(self.until) if self.until else None,
            "percentiles": {
                "method": "log-bucketed histogram (DDSketch)",
                "relative_accuracy": DEFAULT_RELATIVE_ACCURACY,
            },
            "files": {
                "read": self.files_read,
                "invalid": len(self.invalid_files),
                "other_metrics_names": self.other_names,
            },
            "invalid_files": [
                {"file": str(bad.path), "reason": bad.reason} for bad in self.invalid_files
            ],
            "groups": [
                {"operation_type": key[0], "operation_name": key[1], **stats.as_dict()}
                for key, stats in self.sorted_groups()
            ],
            "totals": self.totals().as_dict(),
        }


def _group_key(record: OperationRecord, group_by: GroupBy) -> GroupKey:
    # Files this package wrote hold no PII in names, but others' files may: the
    # summary shows names masked by the PII rule (and groups them so).
    kind = None if group_by == "name" else DEFAULT_POLICY.redact(record.operation_type)[0]
    name = None if group_by == "type" else DEFAULT_POLICY.redact(record.operation_name)[0]
    return (kind, name)


def summarize(
    directory: str | os.PathLike[str],
    *,
    group_by: GroupBy = "operation",
    since: datetime | None = None,
    until: datetime | None = None,
    on_invalid: Callable[[_batchfiles.InvalidBatchFile], None] | None = None,
) -> Summary:
    """Fold every valid batch file of ``directory`` into a :class:`Summary`.

    Only records with ``since <= timestamp < until`` count (either bound may be
    None). Invalid files are skipped, listed in the summary and passed to
    ``on_invalid`` as they are met.
    """
    summary = Summary(group_by, since, until)
    for batch in _batchfiles.read_all(directory):
        if isinstance(batch, _batchfiles.InvalidBatchFile):
            summary.invalid_files.append(batch)
            if on_invalid is not None:
                on_invalid(batch)
            continue
        summary.files_read += 1
        for record in batch.records:
            if since is not None and record.timestamp < since:
                continue
            if until is not None and record.timestamp >= until:
                continue
            key = _group_key(record, group_by)
            stats = summary.groups.get(key)
            if stats is None:
                stats = summary.groups[key] = GroupStats()
            stats.add(record)
        del batch  # so that the next file is not read while this one is still held
    summary.other_names = sum(1 for _ in _batchfiles.other_metrics_names(directory))
    return summary
