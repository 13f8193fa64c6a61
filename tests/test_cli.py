"""The command line: summarize, validate, cleanup and schema, run as real subprocesses.

Files come from the real pipeline (``MetricsManager`` and ``BatchWriter``) and
from hand-broken copies of them. Percentiles are checked against exact values
computed here, within the documented 1 % relative error.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from otel_json_exporter import MetricsManager
from otel_json_exporter._sketch import LogHistogram
from otel_json_exporter._summary import summarize
from otel_json_exporter.cli import main
from otel_json_exporter.records import OperationRecord, format_timestamp
from otel_json_exporter.writer import BatchWriter

ACCURACY = 0.01
CANARY = "canary-4f1e-private-note"  # a metadata value that must never be printed
SCRIPT = Path(sysconfig.get_path("scripts")) / "otel-json-exporter"
Key = tuple[str, str]


def run(*args: str | Path, script: bool = False) -> subprocess.CompletedProcess[str]:
    command = [str(SCRIPT)] if script else [sys.executable, "-m", "otel_json_exporter"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def exact_quantile(values: list[float], q: float) -> float:
    """The documented definition: the value at rank floor(q * (n - 1)) of the sorted values."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


def assert_close(estimate: float, exact: float) -> None:
    # The bound is exact in real arithmetic; allow for float rounding at bucket edges.
    assert abs(estimate - exact) <= ACCURACY * exact * (1 + 1e-9), (estimate, exact)


@dataclass
class Recorded:
    """A directory written by the real MetricsManager, and what was recorded into it."""

    directory: Path
    durations: dict[Key, list[float]] = field(default_factory=dict)
    errors: dict[Key, int] = field(default_factory=dict)


def workload(rng: random.Random, index: int) -> tuple[Key, float, bool]:
    """Three operations with very different duration distributions; one fails often."""
    if index % 3 == 0:
        return ("api_request", "GET /api/users"), rng.lognormvariate(3, 0.8), True
    if index % 3 == 1:
        return ("api_request", "POST /api/orders"), rng.lognormvariate(4, 1.2), index % 7 != 0
    # Zero, sub-millisecond and a long tail in one group.
    duration = rng.choice([0.0, rng.uniform(0.001, 2.0), rng.paretovariate(1.5)])
    return ("database_query", "SELECT users"), duration, True


async def record_workload(directory: Path, plan: list[tuple[Key, float, bool]]) -> None:
    manager = MetricsManager(directory, flush_interval_seconds=0.05, max_batch_size=128)
    await manager.start()
    for (op_type, op_name), duration, success in plan:
        await manager.record_operation(
            op_type,
            op_name,
            duration,
            success=success,
            error_message=None if success else "TimeoutError: upstream did not answer",
            metadata={"region": "ca-central", "note": CANARY},
        )
    await manager.stop()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    rng = random.Random(6)
    plan = [workload(rng, index) for index in range(1500)]
    result = Recorded(tmp_path_factory.mktemp("pipeline") / "metrics")
    asyncio.run(record_workload(result.directory, plan))
    for key, duration, success in plan:
        result.durations.setdefault(key, []).append(duration)
        result.errors[key] = result.errors.get(key, 0) + (not success)
    return result


@pytest.fixture
def pipeline_copy(recorded: Recorded, tmp_path: Path) -> Path:
    """A private copy of the pipeline's directory, for tests that break or delete files."""
    return Path(shutil.copytree(recorded.directory, tmp_path / "copy"))


def batch_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("metrics_*.json"))


def edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))


def break_files(directory: Path) -> dict[str, str]:
    """Break pipeline files by hand; return {file name: expected reason fragment}."""
    files = batch_files(directory)
    assert len(files) >= 6
    broken: dict[str, str] = {}

    truncated = files[0]
    truncated.write_bytes(truncated.read_bytes()[:200])
    broken[truncated.name] = "Invalid JSON: EOF while parsing"

    def wrong_total(doc: dict[str, Any]) -> None:
        doc["total_records"] += 1

    edit_json(files[1], wrong_total)
    broken[files[1].name] = "total_records is"

    def zulu(doc: dict[str, Any]) -> None:
        doc["records"][3]["timestamp"] = doc["records"][3]["timestamp"].replace("+00:00", "Z")

    edit_json(files[2], zulu)
    broken[files[2].name] = "records.3.timestamp: timestamp must look like"

    def bad_record(doc: dict[str, Any]) -> None:
        # The record still carries the canary in its metadata; it must not be echoed.
        doc["records"][0]["duration_ms"] = CANARY

    edit_json(files[3], bad_record)
    broken[files[3].name] = "records.0.duration_ms: Input should be a valid number"

    def other_batch_id(doc: dict[str, Any]) -> None:
        doc["batch_id"] = "20250101_000000_000000"

    edit_json(files[4], other_batch_id)
    broken[files[4].name] = "batch_id does not match batch_timestamp"

    # A valid batch under another batch's name.
    renamed = directory / "metrics_20251216_080005_123456.json"
    shutil.copy(files[5], renamed)
    broken[renamed.name] = "its name says 20251216_080005_123456"

    # A batch-file name that is not a real date.
    shutil.copy(files[5], directory / "metrics_20251399_080005_123456.json")
    broken["metrics_20251399_080005_123456.json"] = "the name is not a real date and time"
    return broken


FOREIGN = {
    "metrics_latest.json": "not ours",
    "metrics_20251216_080005.json": "an old name without microseconds",
    "metrics_20251216_080005_123456.json.bak": "a backup",
    "notes.txt": "notes",
    ".metrics_999999_abcdef.tmp": "someone's temporary file",
    # Names that a pattern with \d or a bare $ would take for old batch files:
    "metrics_20200101_000000_000000.json\n": "a final newline",
    "metrics_\u0662\u0660\u0662\u06600101_000000_000000.json": "Arabic-Indic digits",
    "metrics_\uff12\uff10\uff12\uff100101_000000_000000.json": "fullwidth digits",
}


def add_foreign_files(directory: Path) -> None:
    for name, text in FOREIGN.items():
        (directory / name).write_text(text)


def assert_foreign_untouched(directory: Path) -> None:
    for name, text in FOREIGN.items():
        assert (directory / name).read_text() == text


class TestEntryPoints:
    def test_module_and_installed_script_are_the_same_command(self) -> None:
        assert SCRIPT.is_file(), f"console script not installed at {SCRIPT}"
        by_module, by_script = run("--help"), run("--help", script=True)
        assert by_module.returncode == by_script.returncode == 0
        assert by_module.stdout == by_script.stdout
        assert "usage: otel-json-exporter" in by_module.stdout
        for command in ("summarize", "validate", "cleanup", "schema"):
            assert command in by_module.stdout

    @pytest.mark.parametrize(
        ("command", "documents"),
        [
            ("summarize", ["DDSketch", "within 1%", "floor(q * (n - 1))", "exit code is then 1"]),
            ("summarize", ["UTC unless it has an offset", "timestamp >= TIME", "timestamp < TIME"]),
            ("validate", ["total_records", "exits 1"]),
            ("cleanup", ["30d, 12h, 90m", "batch_id", "--dry-run"]),
            ("schema", ["JSON Schema", "validate"]),
        ],
    )
    def test_every_command_has_help(self, command: str, documents: list[str]) -> None:
        result = run(command, "--help")
        assert result.returncode == 0
        text = " ".join(result.stdout.split())  # argparse wraps lines
        for phrase in documents:
            assert phrase in text

    @pytest.mark.parametrize(
        "args",
        [
            [],
            ["frobnicate"],
            ["summarize"],
            ["cleanup", "."],
            ["summarize", ".", "--by", "colour"],
        ],
    )
    def test_usage_errors_exit_2(self, args: list[str]) -> None:
        result = run(*args)
        assert result.returncode == 2
        assert "usage: otel-json-exporter" in result.stderr
        assert result.stdout == ""

    def test_installed_script_returns_the_exit_code(self, tmp_path: Path) -> None:
        (tmp_path / "metrics_20251216_080005_123456.json").write_text("{")
        result = run("validate", tmp_path, script=True)
        assert result.returncode == 1
        assert "Invalid JSON" in result.stdout

    def test_an_unreadable_directory_is_reported(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        def scandir(path: Any) -> Any:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        monkeypatch.setattr("os.scandir", scandir)
        assert main(["validate", str(tmp_path)]) == 1
        _, err = capsys.readouterr()
        assert err == f"otel-json-exporter validate: error: {tmp_path}: Permission denied\n"

    def test_version(self) -> None:
        result = run("--version")
        assert result.returncode == 0
        assert re.match(r"^otel-json-exporter \d", result.stdout)


class TestSummarize:
    def test_json_matches_what_was_recorded(
        self, recorded: Recorded, read_records: Callable[[Path], list[OperationRecord]]
    ) -> None:
        result = run("summarize", recorded.directory, "--json")
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        report = json.loads(result.stdout)
        assert report["group_by"] == "operation"
        assert report["files"] == {
            "read": len(batch_files(recorded.directory)),
            "invalid": 0,
            "other_metrics_names": 0,
        }
        assert report["invalid_files"] == []
        on_disk = read_records(recorded.directory)
        groups = {(g["operation_type"], g["operation_name"]): g for g in report["groups"]}
        assert list(groups) == sorted(recorded.durations)
        for key, durations in recorded.durations.items():
            group = groups[key]
            assert group["count"] == len(durations)
            assert group["errors"] == recorded.errors[key]
            assert group["error_rate"] == pytest.approx(recorded.errors[key] / len(durations))
            for q in (50, 95, 99):
                assert_close(group[f"p{q}_ms"], exact_quantile(durations, q / 100))
            assert group["max_ms"] == max(durations)
            stamps = [r.timestamp for r in on_disk if (r.operation_type, r.operation_name) == key]
            assert group["first_timestamp"] == format_timestamp(min(stamps))
            assert group["last_timestamp"] == format_timestamp(max(stamps))

    def test_totals_cover_every_record(self, recorded: Recorded) -> None:
        report = json.loads(run("summarize", recorded.directory, "--json").stdout)
        everything = [d for durations in recorded.durations.values() for d in durations]
        totals = report["totals"]
        assert totals["count"] == len(everything) == 1500
        assert totals["errors"] == sum(recorded.errors.values()) > 0
        for q in (50, 95, 99):
            assert_close(totals[f"p{q}_ms"], exact_quantile(everything, q / 100))
        assert totals["max_ms"] == max(everything)
        assert set(totals) == set(report["groups"][0]) - {"operation_type", "operation_name"}

    @pytest.mark.parametrize("by", ["type", "name"])
    def test_group_by_one_field(self, recorded: Recorded, by: str) -> None:
        report = json.loads(run("summarize", recorded.directory, "--by", by, "--json").stdout)
        position = 0 if by == "type" else 1
        expected: dict[str, list[float]] = {}
        for key, durations in recorded.durations.items():
            expected.setdefault(key[position], []).extend(durations)
        assert report["group_by"] == by
        field_name, other = (
            ("operation_type", "operation_name")
            if by == "type"
            else ("operation_name", "operation_type")
        )
        groups = {g[field_name]: g for g in report["groups"]}
        assert set(groups) == set(expected)
        for value, durations in expected.items():
            assert groups[value][other] is None
            assert groups[value]["count"] == len(durations)
            assert_close(groups[value]["p95_ms"], exact_quantile(durations, 0.95))

    def test_table_is_aligned_and_agrees_with_json(self, recorded: Recorded) -> None:
        result = run("summarize", recorded.directory)
        assert result.returncode == 0
        report = json.loads(run("summarize", recorded.directory, "--json").stdout)
        table_text, footer = result.stdout.split("\n\n")
        header, *body = table_text.splitlines()
        columns = re.split(r"\s{2,}", header)
        assert columns[:3] == ["type", "name", "count"]
        assert columns[-2:] == ["first (UTC)", "last (UTC)"]
        rows = [line for line in body if line and not line.startswith("-")]
        table = {tuple(re.split(r"\s{2,}", row)[:2]): re.split(r"\s{2,}", row) for row in rows}
        for group in report["groups"]:
            cells = table[(group["operation_type"], group["operation_name"])]
            assert int(cells[2]) == group["count"]
            assert int(cells[3]) == group["errors"]
            assert float(cells[4]) == pytest.approx(100 * group["error_rate"], abs=0.05)
            # The table shows three significant digits, and at least 0.001 ms.
            assert float(cells[5]) == pytest.approx(group["p50_ms"], rel=0.01, abs=0.0005)
        total = next(row for row in rows if row.startswith("TOTAL"))
        assert re.split(r"\s{2,}", total)[1] == str(report["totals"]["count"])
        # Numbers end under the end of their header.
        for name in ["count", "errors", "error %", "p50 ms", "p95 ms", "p99 ms", "max ms"]:
            end = header.index(name) + len(name)
            for line in rows:
                assert line[end - 1] != " ", (name, line)
                assert line[end] == " ", (name, line)
        assert footer.startswith(
            f"{report['files']['read']} batch files read; percentiles within 1%"
        )

    def test_since_and_until_filter_on_record_timestamps(self, tmp_path: Path) -> None:
        moment = datetime(2025, 12, 16, 8, 0, tzinfo=timezone.utc)
        records = [
            OperationRecord(
                operation_type="job",
                operation_name="nightly",
                duration_ms=float(index + 1),
                timestamp=moment + timedelta(minutes=30 * index),
                success=index != 2,
            )
            for index in range(5)  # 08:00, 08:30, 09:00, 09:30, 10:00
        ]

        async def write() -> None:
            manager = MetricsManager(tmp_path, flush_interval_seconds=0.05, max_batch_size=2)
            await manager.start()
            assert manager.submit_records(records) == 5
            await manager.stop()

        asyncio.run(write())
        assert len(batch_files(tmp_path)) == 3

        def totals(*window: str) -> dict[str, Any]:
            result = run("summarize", tmp_path, "--json", *window)
            assert result.returncode == 0, result.stderr
            report: dict[str, Any] = json.loads(result.stdout)
            return report

        assert totals("--since", "2025-12-16")["totals"]["count"] == 5
        naive = totals("--since", "2025-12-16T09:00:00")  # naive means UTC; since is inclusive
        assert naive["since"] == "2025-12-16T09:00:00.000000+00:00"
        assert naive["totals"]["count"] == 3
        assert naive["totals"]["first_timestamp"] == "2025-12-16T09:00:00.000000+00:00"
        window = totals("--since", "2025-12-16T09:00:00", "--until", "2025-12-16T10:00:00Z")
        assert window["totals"]["count"] == 2  # until is exclusive
        assert window["totals"]["errors"] == 1
        assert window["totals"]["max_ms"] == 4.0
        assert window["totals"]["last_timestamp"] == "2025-12-16T09:30:00.000000+00:00"
        offset = totals("--since", "2025-12-16T11:00:00+02:00", "--until", "2025-12-16T09:30:01")
        assert offset["since"] == "2025-12-16T09:00:00.000000+00:00"
        assert offset["totals"]["count"] == 2
        nothing = totals("--until", "2025-12-16T08:00:00")
        assert nothing["groups"] == []
        assert nothing["totals"]["count"] == 0
        assert nothing["totals"]["p50_ms"] is None

    @pytest.mark.parametrize(
        "window",
        [
            ["--since", "yesterday"],
            ["--until", "2025-13-01"],
            ["--since", "2025-12-16T10:00:00", "--until", "2025-12-16T09:00:00"],
        ],
    )
    def test_bad_times_are_usage_errors(self, tmp_path: Path, window: list[str]) -> None:
        result = run("summarize", tmp_path, *window)
        assert result.returncode == 2
        assert "error:" in result.stderr

    def test_invalid_files_are_skipped_with_a_warning_and_exit_1(self, pipeline_copy: Path) -> None:
        broken = break_files(pipeline_copy)
        add_foreign_files(pipeline_copy)
        result = run("summarize", pipeline_copy, "--json")
        assert result.returncode == 1
        report = json.loads(result.stdout)
        assert report["files"]["invalid"] == len(broken)
        # metrics_latest.json, the old name and the two with other digits (the name
        # ending in a newline does not end in .json)
        assert report["files"]["other_metrics_names"] == 4
        assert {Path(bad["file"]).name for bad in report["invalid_files"]} == set(broken)
        warnings = result.stderr.splitlines()
        assert len(warnings) == len(broken)
        for name, reason in broken.items():
            assert any(name in line and reason in line for line in warnings), name
        valid = [p for p in batch_files(pipeline_copy) if p.name not in broken | FOREIGN.keys()]
        assert report["files"]["read"] == len(valid)
        expected = sum(json.loads(p.read_text())["total_records"] for p in valid)
        assert report["totals"]["count"] == expected
        assert CANARY not in result.stdout + result.stderr
        table = run("summarize", pipeline_copy)
        assert table.returncode == 1
        assert f"{len(broken)} invalid skipped (see warnings)" in table.stdout
        assert_foreign_untouched(pipeline_copy)

    def test_empty_directory(self, tmp_path: Path) -> None:
        result = run("summarize", tmp_path)
        assert result.returncode == 0
        assert "(no records)" in result.stdout
        assert "0 batch files read" in result.stdout

    def test_the_largest_durations_a_record_may_hold(self, tmp_path: Path) -> None:
        durations = [1.79e308, sys.float_info.max, 2.5]
        records = [
            OperationRecord(
                operation_type="job",
                operation_name="huge",
                duration_ms=duration,
                timestamp=datetime.now(timezone.utc),
            )
            for duration in durations
        ]
        BatchWriter(tmp_path).write(records)
        result = run("summarize", tmp_path, "--json")
        assert result.returncode == 0, result.stderr
        (group,) = json.loads(result.stdout)["groups"]
        for q in (50, 95, 99):
            assert_close(group[f"p{q}_ms"], exact_quantile(durations, q / 100))
        assert group["max_ms"] == sys.float_info.max
        assert run("summarize", tmp_path).returncode == 0

    def test_missing_directory_is_a_usage_error(self, tmp_path: Path) -> None:
        result = run("summarize", tmp_path / "nowhere")
        assert result.returncode == 2
        assert "does not exist" in result.stderr

    def test_memory_does_not_grow_with_the_number_of_files(self, tmp_path: Path) -> None:
        """Streaming: ten times the records must not take ten times the memory."""
        rng = random.Random(60)
        moment = datetime(2025, 12, 16, tzinfo=timezone.utc)

        def fill(directory: Path, files: int) -> None:
            writer = BatchWriter(directory)
            for number in range(files):
                batch = [
                    OperationRecord(
                        operation_type="api_request",
                        operation_name=f"GET /api/{index % 4}",
                        duration_ms=rng.lognormvariate(3, 1),
                        timestamp=moment,
                        metadata={"padding": "x" * 200},
                    )
                    for index in range(400)
                ]
                writer.write(batch, now=moment + timedelta(seconds=number))

        def peak(directory: Path) -> int:
            tracemalloc.start()
            try:
                summary = summarize(directory)
                _, high = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert summary.totals().count == 400 * len(batch_files(directory))
            return high

        (small := tmp_path / "small").mkdir()
        (large := tmp_path / "large").mkdir()
        fill(small, 1)
        fill(large, 10)
        assert peak(large) < 1.5 * peak(small)  # reading all ten at once would be ~10x

    def test_a_reader_that_closes_the_pipe_early_ends_it_quietly(self, tmp_path: Path) -> None:
        """``summarize | head``: exit code 1 (documented), no traceback, nothing on stderr."""
        moment = datetime(2025, 12, 16, tzinfo=timezone.utc)
        records = [
            OperationRecord(
                operation_type="api_request",
                operation_name=f"GET /api/route-{index:05d}",
                duration_ms=1.0 + index,
                timestamp=moment,
            )
            for index in range(3000)  # a table far larger than a pipe's buffer
        ]
        BatchWriter(tmp_path).write(records, now=moment)
        reader = subprocess.Popen(
            [sys.executable, "-m", "otel_json_exporter", "summarize", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert reader.stdout is not None
        assert reader.stderr is not None
        assert reader.stdout.readline()  # the table's first line, as `head -1` would read
        reader.stdout.close()
        errors = reader.stderr.read()
        assert reader.wait(timeout=60) == 1
        assert errors == b""


class TestSummarizeForeignNames:
    """Files written elsewhere may hold what this package would have masked."""

    def test_names_are_masked_and_long_names_clipped_in_the_table(self, tmp_path: Path) -> None:
        now = datetime.now(timezone.utc)
        long_name = "GET /api/v1/" + "very-long-path-segment/" * 4
        records = [
            OperationRecord(
                operation_type="api_request",
                operation_name=name,
                duration_ms=1.0,
                timestamp=now,
            )
            for name in ("reset password for bob@example.com", "GET /cb?token=SECRET1", long_name)
        ]
        BatchWriter(tmp_path).write(records)
        table, as_json = run("summarize", tmp_path), run("summarize", tmp_path, "--json")
        assert table.returncode == as_json.returncode == 0
        for output in (table.stdout, as_json.stdout):
            assert "bob@example.com" not in output
            assert "SECRET1" not in output
        names = {group["operation_name"] for group in json.loads(as_json.stdout)["groups"]}
        assert names == {"reset password for [REDACTED]", "GET /cb?token=REDACTED", long_name}
        assert long_name not in table.stdout  # cut to 48 characters in the table
        assert long_name[:45] + "..." in table.stdout


class TestValidate:
    def test_pipeline_files_are_valid(self, recorded: Recorded) -> None:
        files = batch_files(recorded.directory)
        result = run("validate", recorded.directory)
        assert result.returncode == 0, result.stdout
        assert result.stdout.splitlines() == [
            f"{len(files)} batch files checked in {recorded.directory}: "
            f"{len(files)} valid (1500 records), 0 invalid"
        ]

    def test_reports_each_bad_file_and_why(self, pipeline_copy: Path) -> None:
        broken = break_files(pipeline_copy)
        add_foreign_files(pipeline_copy)
        result = run("validate", pipeline_copy)
        assert result.returncode == 1
        *findings, last = result.stdout.splitlines()
        assert len(findings) == len(broken)
        for line in findings:
            path, reason = line.split(": ", 1)
            assert Path(path).parent == pipeline_copy
            assert broken[Path(path).name] in reason
        valid = [p for p in batch_files(pipeline_copy) if p.name not in broken | FOREIGN.keys()]
        records = sum(json.loads(p.read_text())["total_records"] for p in valid)
        assert last == (
            f"{len(valid) + len(broken)} batch files checked in {pipeline_copy}: "
            f"{len(valid)} valid ({records} records), {len(broken)} invalid; "
            "4 other metrics_*.json names left alone"
        )
        assert CANARY not in result.stdout + result.stderr
        assert_foreign_untouched(pipeline_copy)

    def test_foreign_files_alone_are_not_findings(self, tmp_path: Path) -> None:
        add_foreign_files(tmp_path)
        result = run("validate", tmp_path)
        assert result.returncode == 0
        assert "0 batch files checked" in result.stdout
        assert "4 other metrics_*.json names left alone" in result.stdout
        assert_foreign_untouched(tmp_path)

    def test_keys_that_are_addresses_are_masked_in_every_reason(self, pipeline_copy: Path) -> None:
        files = batch_files(pipeline_copy)

        def extra_keys(doc: dict[str, Any]) -> None:
            doc["records"][0]["jane.doe@example.com"] = 1
            doc["records"][1]["ann\uff20example.org"] = 2  # a full-width at sign
            doc["records"][2]["duration_ms"] = -1.0
            doc["records"][3]["timestamp"] = "yesterday"

        edit_json(files[0], extra_keys)
        validate, summarize = run("validate", pipeline_copy), run("summarize", pipeline_copy)
        assert validate.returncode == summarize.returncode == 1
        expected = (
            f"{files[0]}: records.0.[REDACTED]: Extra inputs are not permitted; "
            "records.1.[REDACTED]: Extra inputs are not permitted; "
            "records.2.duration_ms: Input should be greater than or equal to 0; "
            "and 1 more errors"
        )
        assert expected in validate.stdout.splitlines()
        assert f"warning: skipped {expected}" in summarize.stderr
        for output in (validate.stdout + validate.stderr, summarize.stdout + summarize.stderr):
            assert "jane" not in output
            assert "ann" not in output


def old_batches(directory: Path, ages: dict[str, timedelta]) -> dict[str, Path]:
    """One real batch file per age, written by BatchWriter as if at that moment."""
    writer = BatchWriter(directory)
    now = datetime.now(timezone.utc)
    written: dict[str, Path] = {}
    for label, age in sorted(ages.items(), key=lambda item: -item[1]):
        record = OperationRecord(
            operation_type="job", operation_name=label, duration_ms=1.0, timestamp=now - age
        )
        path = writer.write([record], now=now - age).path
        assert path is not None  # a batch of one record is always written
        written[label] = path
    return written


AGES = {
    "40 days": timedelta(days=40),
    "31 days": timedelta(days=31),
    "29 days": timedelta(days=29),
    "1 hour": timedelta(hours=1),
}


class TestCleanup:
    @pytest.fixture
    def directory(self, tmp_path: Path) -> Path:
        add_foreign_files(tmp_path)
        (tmp_path / "metrics_20201399_000000_000000.json").write_text("not a real date")
        (tmp_path / "metrics_20200101_000000_000000.json").mkdir()  # not a file
        return tmp_path

    def test_dry_run_deletes_nothing(self, directory: Path) -> None:
        batches = old_batches(directory, AGES)
        before = sorted(p.name for p in directory.iterdir())
        result = run("cleanup", directory, "--older-than", "30d", "--dry-run")
        assert result.returncode == 0
        assert sorted(p.name for p in directory.iterdir()) == before
        lines = result.stdout.splitlines()
        assert lines[:2] == [
            f"would delete {batches['40 days']}",
            f"would delete {batches['31 days']}",
        ]
        assert lines[2].startswith("dry run: 2 batch files written before ")

    def test_deletes_only_old_exact_names(self, directory: Path) -> None:
        batches = old_batches(directory, AGES)
        result = run("cleanup", directory, "--older-than", "30d")
        assert result.returncode == 0
        assert not batches["40 days"].exists()
        assert not batches["31 days"].exists()
        assert batches["29 days"].exists()
        assert batches["1 hour"].exists()
        assert_foreign_untouched(directory)
        assert (directory / "metrics_20201399_000000_000000.json").read_text() == "not a real date"
        assert (directory / "metrics_20200101_000000_000000.json").is_dir()
        assert result.stdout.splitlines()[-1].startswith("deleted 2 batch files written before ")
        again = run("cleanup", directory, "--older-than", "30d")
        assert again.returncode == 0
        assert again.stdout.startswith("deleted 0 batch files")

    @pytest.mark.parametrize(
        ("age", "deleted"),
        [
            ("720h", {"40 days", "31 days"}),
            ("43200m", {"40 days", "31 days"}),
            ("4w", {"40 days", "31 days", "29 days"}),
            ("7200s", {"40 days", "31 days", "29 days"}),
            ("2h", {"40 days", "31 days", "29 days"}),
            ("90m", {"40 days", "31 days", "29 days"}),
            ("59m", set(AGES)),
            ("61m", {"40 days", "31 days", "29 days"}),
            ("1000d", set()),
        ],
    )
    def test_units(self, tmp_path: Path, age: str, deleted: set[str]) -> None:
        batches = old_batches(tmp_path, AGES)
        result = run("cleanup", tmp_path, "--older-than", age)
        assert result.returncode == 0
        assert {label for label, path in batches.items() if not path.exists()} == deleted

    @pytest.mark.parametrize("age", ["30", "d", "-1d", "1.5d", "0d", "30D", "30 days", ""])
    def test_bad_ages_are_usage_errors(self, tmp_path: Path, age: str) -> None:
        old_batches(tmp_path, AGES)
        result = run("cleanup", tmp_path, "--older-than", age)
        assert result.returncode == 2
        assert "--older-than" in result.stderr
        assert len(batch_files(tmp_path)) == len(AGES)

    def test_a_file_that_cannot_be_deleted_is_reported(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        batches = old_batches(tmp_path, AGES)
        victim = batches["31 days"]
        real_unlink = os.unlink

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            if os.fspath(path) == str(victim):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "unlink", unlink)
        assert main(["cleanup", str(tmp_path), "--older-than", "30d"]) == 1
        out, err = capsys.readouterr()
        assert not batches["40 days"].exists()
        assert victim.exists()
        assert f"deleted {batches['40 days']}" in out
        assert "deleted 1 of 2 batch files" in out
        assert f"cannot delete {victim}: Permission denied" in err


# A JSON Schema checker for exactly the keywords the generated schema uses. An
# unknown keyword fails the test rather than being ignored.
ANNOTATIONS = {"title", "description", "default", "format", "$comment", "$schema", "$defs"}
JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def schema_errors(
    schema: dict[str, Any], value: Any, root: dict[str, Any], at: str = ""
) -> list[str]:
    errors: list[str] = []
    for keyword, rule in schema.items():
        if keyword in ANNOTATIONS or keyword in {"properties", "additionalProperties"}:
            continue
        if keyword == "$ref":
            assert rule.startswith("#/$defs/"), rule
            errors += schema_errors(root["$defs"][rule.removeprefix("#/$defs/")], value, root, at)
        elif keyword == "type":
            if not JSON_TYPES[rule](value):
                errors.append(f"{at}: not {rule}")
        elif keyword == "anyOf":
            if all(schema_errors(option, value, root, at) for option in rule):
                errors.append(f"{at}: matches no option")
        elif keyword == "required":
            errors += [
                f"{at}.{n}: missing" for n in rule if isinstance(value, dict) and n not in value
            ]
        elif keyword == "items":
            for index, item in enumerate(value if isinstance(value, list) else []):
                errors += schema_errors(rule, item, root, f"{at}[{index}]")
        elif keyword == "pattern":
            if isinstance(value, str) and not re.search(rule, value):
                errors.append(f"{at}: does not match {rule}")
        elif keyword == "minLength":
            if isinstance(value, str) and len(value) < rule:
                errors.append(f"{at}: too short")
        elif keyword == "maxLength":
            if isinstance(value, str) and len(value) > rule:
                errors.append(f"{at}: too long")
        elif keyword == "minimum":
            if JSON_TYPES["number"](value) and value < rule:
                errors.append(f"{at}: below {rule}")
        else:
            raise AssertionError(f"schema keyword {keyword!r} is not checked by this test")
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += schema_errors(properties[name], item, root, f"{at}.{name}")
            elif extra is False:
                errors.append(f"{at}.{name}: not allowed")
    return errors


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    result = run("schema")
    assert result.returncode == 0
    document: dict[str, Any] = json.loads(result.stdout)
    return document


class TestSchema:
    def test_is_a_draft_2020_12_schema_of_the_batch_file(self, schema: dict[str, Any]) -> None:
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["type"] == "object"
        assert set(schema["required"]) == {
            "records",
            "batch_timestamp",
            "batch_id",
            "total_records",
        }
        assert schema["additionalProperties"] is False
        assert set(schema["required"]) <= set(schema["properties"])
        record = schema["$defs"]["OperationRecord"]
        assert set(record["required"]) <= set(record["properties"])
        assert "total_records" in schema["$comment"]

    def test_accepts_every_file_the_pipeline_wrote(
        self, schema: dict[str, Any], recorded: Recorded
    ) -> None:
        for path in batch_files(recorded.directory):
            assert schema_errors(schema, json.loads(path.read_text()), schema) == []

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            (lambda d: d["records"][0].update(timestamp="2025-12-16T08:00:00Z"), "does not match"),
            (lambda d: d.update(batch_timestamp="2025-12-16 08:00:00"), "does not match"),
            (lambda d: d.pop("total_records"), "missing"),
            (lambda d: d.update(extra=1), "not allowed"),
            (lambda d: d["records"][0].update(duration_ms=-1), "below 0"),
            (lambda d: d["records"][0].update(duration_ms="1"), "not number"),
            (lambda d: d["records"][0].update(success="yes"), "not boolean"),
            (lambda d: d["records"][0].update(error_message=7), "matches no option"),
            (lambda d: d["records"][0].update(operation_name=""), "too short"),
            (lambda d: d.update(batch_id="2025-12-16"), "does not match"),
        ],
    )
    def test_rejects_broken_files(
        self,
        schema: dict[str, Any],
        recorded: Recorded,
        change: Callable[[dict[str, Any]], object],
        error: str,
    ) -> None:
        document = json.loads(batch_files(recorded.directory)[0].read_text())
        change(document)
        errors = schema_errors(schema, document, schema)
        assert any(error in message for message in errors), errors


class TestLogHistogram:
    @given(
        st.lists(
            st.one_of(
                st.just(0.0),
                st.floats(min_value=1e-6, max_value=1e9),
                st.floats(sys.float_info.min, sys.float_info.max),  # the whole range too
            ),
            min_size=1,
            max_size=300,
        ),
        st.floats(min_value=0, max_value=1),
    )
    @example([sys.float_info.max], 0.5)
    @example([1.79e308, 1e-300, 0.0], 1.0)
    @example([8.93533108155191e307, 9.024684392456783e307], 0.0)
    def test_quantiles_are_within_the_relative_accuracy(
        self, values: list[float], q: float
    ) -> None:
        sketch = LogHistogram(ACCURACY)
        for value in values:
            sketch.add(value)
        estimate = sketch.quantile(q)
        assert estimate is not None
        assert_close(estimate, exact_quantile(values, q))
        assert sketch.count == len(values)
        assert sketch.max == max(values)

    @given(
        st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=100),
        st.lists(st.floats(min_value=1e-3, max_value=1e6), min_size=1, max_size=100),
    )
    def test_merging_equals_adding_everything(self, left: list[float], right: list[float]) -> None:
        merged, single, other = LogHistogram(), LogHistogram(), LogHistogram()
        for value in left:
            merged.add(value)
            single.add(value)
        for value in right:
            other.add(value)
            single.add(value)
        merged.merge(other)
        for q in (0, 0.5, 0.95, 0.99, 1):
            assert merged.quantile(q) == single.quantile(q)
        assert merged.count == single.count

    def test_memory_is_bounded_by_the_range_not_the_count(self) -> None:
        sketch = LogHistogram(ACCURACY)
        rng = random.Random(1)
        for _ in range(100_000):
            sketch.add(10 ** rng.uniform(-3, math.log10(8.64e7)))  # 1 µs .. 1 day, in ms
        assert sketch.buckets <= 1260

    def test_empty_sketch_and_bad_values(self) -> None:
        sketch = LogHistogram()
        assert sketch.quantile(0.5) is None
        for bad in (-1.0, math.nan, math.inf):
            with pytest.raises(ValueError, match="finite, non-negative"):
                sketch.add(bad)
        with pytest.raises(ValueError, match="same relative accuracy"):
            sketch.merge(LogHistogram(0.02))
