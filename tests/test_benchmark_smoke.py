"""``make bench`` at a tiny size: it runs, prints a complete table and loses nothing.

Timings are never asserted: only that every figure exists, is a positive
number, that every target has a verdict, and that every scenario wrote all
its records (a benchmark that drops data would prove nothing).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGETS = (
    "≥ 5x logging",
    "≥ 100,000 records/s",
    "≤ 25 µs",
    "< 1 ms",
    "≥ 0.80x",
    "≥ 2.00x",
    "≤ 600 bytes",
)


@dataclass(frozen=True)
class QuickRun:
    stdout: str
    stderr: str
    report: dict[str, Any]
    scratch: Path


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """Two quick rounds: what they print, the JSON report and the scratch directory."""
    workdir = tmp_path_factory.mktemp("bench")
    report = workdir / "report.json"
    scratch = workdir / "scratch"
    scratch.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--quick",
            "--repeat",
            "2",
            "--dir",
            str(scratch),
            "--json",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return QuickRun(
        done.stdout, done.stderr, json.loads(report.read_text(encoding="utf-8")), scratch
    )


class TestQuickRun:
    def test_prints_the_machine_and_one_markdown_table(self, bench: QuickRun) -> None:
        stdout = bench.stdout
        assert stdout.startswith("Machine: cpu: ")
        for field in ("cores: ", "python: CPython", "filesystem: "):
            assert field in stdout
        assert "| Measurement | Result | Compared with | Ratio | Target | This run |" in stdout
        # What explains the verdicts: the CPU split, and the read-only exporter's ceiling.
        for writer in ('writer="thread" (default)', 'writer="process"'):
            row = (
                f"| record_operation CPU per record, {writer}: calling thread + the other threads |"
            )
            assert row in stdout
        assert (
            "| spans end to end, an exporter that only reads the fields a record needs |" in stdout
        )

    def test_prints_each_rounds_own_ratios(self, bench: QuickRun) -> None:
        """One column per round, each ratio recomputed here from that round's runs."""
        stdout, results = bench.stdout, bench.report["results"]
        assert "| Ratio | Round 1 | Round 2 |" in stdout
        logging_ = results["direct_logging"]["runs"]
        for label, name in (("thread", "direct_ours"), ("process", "direct_ours_process")):
            runs = results[name]["runs"]
            expected = [
                f"{mine['end_to_end_per_second'] / theirs['end_to_end_per_second']:.2f}"
                for mine, theirs in zip(runs, logging_, strict=True)
            ]
            row = f"| `record_operation`, {label} writer / logging | " + " | ".join(expected) + " |"
            assert row in stdout
        spans = results["spans"]
        expected = [
            f"{mine['end_to_end_per_second'] / theirs['end_to_end_per_second']:.2f}"
            for mine, theirs in zip(
                spans["ours_process"]["runs"], spans["noop"]["runs"], strict=True
            )
        ]
        row = "| spans, ours with the process writer / do-nothing | " + " | ".join(expected) + " |"
        assert row in stdout

    def test_every_target_has_a_verdict(self, bench: QuickRun) -> None:
        stdout, report = bench.stdout, bench.report
        verdicts = {row["target"]: row["verdict"] for row in report["table"]}
        for target in TARGETS:
            assert verdicts.get(target) in ("MET", "NOT MET"), target
            line = next(line for line in stdout.splitlines() if f"| {target} |" in line)
            assert line.endswith(("| MET |", "| NOT MET |"))

    def test_verdicts_follow_the_figures(self, bench: QuickRun) -> None:
        report = bench.report
        results = report["results"]

        def met(measurement: str, target: str) -> bool:
            rows = [
                row
                for row in report["table"]
                if measurement in row["measurement"] and row["target"] == target
            ]
            assert len(rows) == 1, (measurement, target)
            verdict: str = rows[0]["verdict"]
            return verdict == "MET"

        def ratio(ours: dict[str, Any], other: dict[str, Any]) -> float:
            """The median of each round's ratio, recomputed from the runs."""
            pairs = zip(ours["runs"], other["runs"], strict=True)
            ratios: list[float] = sorted(
                a["end_to_end_per_second"] / b["end_to_end_per_second"] for a, b in pairs
            )
            middle = len(ratios) // 2
            return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2

        for writer, name in (
            ('writer="thread"', "direct_ours"),
            ('writer="process"', "direct_ours_process"),
        ):
            ours = results[name]
            # The tail targets are judged on the worst round.
            assert met(writer, "≤ 25 µs") == (max(r["p99_us"] for r in ours["runs"]) <= 25)
            assert met(writer, "< 1 ms") == (max(r["p999_us"] for r in ours["runs"]) < 1000)
            assert met(writer, "≥ 100,000 records/s") == (ours["end_to_end_per_second"] >= 100_000)
            assert met(writer, "≥ 5x logging") == (ratio(ours, results["direct_logging"]) >= 5)
            assert ours["settings"]["writer"] == writer.split('"')[1]
        spans = results["spans"]
        for writer, name in (('writer="thread"', "ours"), ('writer="process"', "ours_process")):
            exporter = f"OperationSpanExporter, {writer}"
            assert met(exporter, "≥ 0.80x") == (ratio(spans[name], spans["noop"]) >= 0.8)
            assert met(exporter, "≥ 2.00x") == (ratio(spans[name], spans["otlp_file"]) >= 2)
            assert spans[name]["settings"]["writer"] == writer.split('"')[1]
        queued = results["memory_queued"]["bytes_per_record"]
        assert met("memory per queued record", "≤ 600 bytes") == (queued <= 600)

    def test_figures_are_measured_and_nothing_is_lost(self, bench: QuickRun) -> None:
        report = bench.report
        results = report["results"]
        for name in ("direct_ours", "direct_ours_process", "direct_logging"):
            result = results[name]
            assert result["records"] == report["sizes"]["records"]
            assert result["on_disk"] == result["records"]
            assert math.isfinite(result["end_to_end_per_second"])
            assert result["end_to_end_per_second"] > 0
            assert 0 < result["p50_us"] <= result["p99_us"] <= result["p999_us"]
            assert result["producer_cpu_us"] > 0
            assert result["background_cpu_us"] > 0  # the writer or listener thread worked
        for name in ("direct_ours", "direct_ours_process"):  # max_batch_size 1000, 2000 records
            assert results[name]["batches"] >= 2
        for exporter in ("ours", "ours_process", "noop", "read_only", "otlp_file", "console"):
            result = results["spans"][exporter]
            assert result["on_disk"] == result["spans"] == report["sizes"]["spans"], exporter
            assert result["end_to_end_per_second"] > 0
        queued = results["memory_queued"]
        assert queued["queued"] == queued["on_disk"] == report["sizes"]["queue"]
        assert queued["bytes_per_record"] > 0
        overload = results["memory_overload"]
        assert overload["on_disk"] == overload["produced"] > 0
        assert overload["peak_rss_kib"] >= overload["rss_before_kib"] > 0

    def test_leaves_no_scratch_files(self, bench: QuickRun) -> None:
        assert list(bench.scratch.iterdir()) == []

    def test_every_second_round_runs_the_scenarios_backwards(self, bench: QuickRun) -> None:
        rounds: dict[str, list[str]] = {}
        for line in bench.stderr.splitlines():
            if line.startswith("... round "):
                number, _, name = line.removeprefix("... round ").partition(": ")
                rounds.setdefault(number, []).append(name)
        first, second = rounds["1 of 2"], rounds["2 of 2"]
        assert len(first) == len(set(first)) > 2
        assert second == first[::-1]
        assert all(
            len(bench.report["results"][name]["runs"]) == 2
            for name in ("direct_ours", "memory_queued")
        )


def _run_module() -> Any:
    """benchmarks/run.py as a module (it is a script, outside the package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run

        return run
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_one_lossy_run_of_several_is_reported(bench: QuickRun) -> None:
    """check_complete compared the medians: one run of five that lost records passed."""
    run = _run_module()
    results = json.loads(json.dumps(bench.report["results"]))
    assert run.check_complete(results) == []
    results["direct_ours"]["runs"][0]["on_disk"] -= 1
    results["spans"]["ours"]["runs"][1]["on_disk"] = 0
    problems = run.check_complete(results)
    assert len(problems) == 2
    assert problems[0].startswith("direct_ours, run 1: ")
    assert problems[1].startswith("spans ours, run 2: 0 on disk")
