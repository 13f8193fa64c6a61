"""``make bench``: every scenario, each in its own interpreter, then one table.

    python benchmarks/run.py                 # full size, median of 5 rounds
    python benchmarks/run.py --quick         # tiny sizes, one run (seconds; used by the tests)
    python benchmarks/run.py --records 500000 --spans 200000 --repeat 5 --json out.json

Scenarios (see each module's docstring for what exactly is timed):

* ``direct.py``: ``record_operation``, with each ``writer`` setting, vs
  ``QueueHandler``/``QueueListener``/``FileHandler``;
* ``spans.py``: ``BatchSpanProcessor`` with ``OperationSpanExporter``, a do-nothing
  exporter, an exporter that only reads each span's fields, the official OTLP
  JSON file exporter and ``ConsoleSpanExporter``;
* ``memory.py``: bytes per queued record, peak RSS under overload.

With ``--repeat`` above 1 every scenario runs that many times, in rounds (each
scenario once per round, in reverse order every second round), and each figure
is the median (p99 and p99.9: the worst round's); a throughput ratio is the median
of the rounds' ratios, each taken within its round. Nothing is hard-coded: every
number in the table comes from this run, and a target is MET only if this run's
figure meets it. Exit status is 0 even when a target is not met (the table is the
result); it is 1 when a scenario fails or loses records.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

FULL = {"records": 200_000, "spans": 100_000, "queue": 10_000, "overload_seconds": 5.0, "repeat": 5}
QUICK = {"records": 2_000, "spans": 1_000, "queue": 500, "overload_seconds": 0.3, "repeat": 1}

SPAN_EXPORTERS = ("ours", "ours_process", "noop", "read_only", "otlp_file", "console")


class ScenarioError(RuntimeError):
    """A scenario process failed or printed no result."""


def run_scenario(script: str, *args: str) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter and return its JSON result."""
    command = [sys.executable, str(HERE / script), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ScenarioError(
            f"{' '.join(command[1:])} exited with {done.returncode}:\n{done.stderr.strip()}"
        )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise ScenarioError(f"{' '.join(command[1:])} printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def paired_ratio(ours: dict[str, Any], other: dict[str, Any], key: str) -> float:
    """The median, over the rounds, of ``ours[key] / other[key]`` within each round.

    Both ran in the same round, minutes apart at most: each round's ratio keeps
    what the machine's drift between rounds would add to a ratio of medians.
    """
    ratio: float = statistics.median(
        mine[key] / theirs[key] for mine, theirs in zip(ours["runs"], other["runs"], strict=True)
    )
    return ratio


def worst(result: dict[str, Any], key: str) -> float:
    """The highest ``key`` over a result's runs (a latency: the worst round)."""
    return float(max(run[key] for run in result.get("runs", [result])))


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result whose numeric fields are the medians over ``runs``."""
    merged = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            merged[key] = statistics.median(run[key] for run in runs)
    merged["runs"] = runs
    return merged


# -- the machine -------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def filesystem_of(path: Path) -> str:
    """``<type> (<device>) mounted on <mount point>`` for the mount holding ``path``."""
    best = ("", "unknown", "unknown")
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type = line.split()[:3]
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best[0]):
                    best = (mount_point, fs_type, device)
    except OSError:
        return "unknown"
    return f"{best[1]} ({best[2]}) mounted on {best[0]}"


def version_of(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "not installed"


def machine(scratch_parent: Path) -> dict[str, str]:
    """What the figures depend on: CPU, cores, Python, filesystem, library versions."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()}",
        "filesystem": f"{filesystem_of(scratch_parent)}, scratch files under {scratch_parent}",
        "libraries": ", ".join(
            f"{name} {version_of(name)}"
            for name in (
                "pydantic",
                "opentelemetry-sdk",
                "opentelemetry-exporter-otlp-json-file",
            )
        ),
    }


# -- the table ---------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table; ``met`` is None for figures that have no target."""

    measurement: str
    result: str
    compared_with: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: bool | None = None

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "-"
        return "MET" if self.met else "NOT MET"


def per_second(value: float, unit: str) -> str:
    return f"{value:,.0f} {unit}/s"


def micros(value: float) -> str:
    return f"{value:,.1f} µs"


def direct_rows(label: str, ours: dict[str, Any], logging_: dict[str, Any]) -> list[Row]:
    """Throughput, latency and CPU of one ``writer`` setting against the logging baseline."""
    speed = ours["end_to_end_per_second"]
    base = logging_["end_to_end_per_second"]
    ratio = paired_ratio(ours, logging_, "end_to_end_per_second")
    rows = [
        Row(
            f"record_operation end to end, {label} (until stop() returns, fsynced)",
            per_second(speed, "records"),
            f"logging {per_second(base, 'records')}",
            f"{ratio:.2f}x",
            "≥ 5x logging",
            ratio >= 5,
        ),
        Row(
            f"record_operation end to end, {label}, absolute",
            per_second(speed, "records"),
            target="≥ 100,000 records/s",
            met=speed >= 100_000,
        ),
        Row(
            f"record_operation latency p50, {label}",
            micros(ours["p50_us"]),
            f"logger.info {micros(logging_['p50_us'])}",
            f"{ours['p50_us'] / logging_['p50_us']:.2f}x",
        ),
    ]
    # The tail targets are judged on the worst round, not the median of the rounds'
    # tails: two bad rounds of five would not move a median.
    for name, key, target, meets, limit in (
        ("p99", "p99_us", "≤ 25 µs", operator.le, 25.0),
        ("p99.9", "p999_us", "< 1 ms", operator.lt, 1000.0),
    ):
        mine, theirs = worst(ours, key), worst(logging_, key)
        rows.append(
            Row(
                f"record_operation latency {name} (worst round), {label}",
                micros(mine),
                f"logger.info {micros(theirs)}",
                f"{mine / theirs:.2f}x",
                target,
                bool(meets(mine, limit)),
            )
        )
    producer, background = ours["producer_cpu_us"], ours["background_cpu_us"]
    rows.append(
        Row(
            # A writer process's own CPU time is not the application's: not counted here.
            f"record_operation CPU per record, {label}: calling thread + the other threads",
            f"{producer:.2f} + {background:.2f} = {producer + background:.2f} µs",
            f"wall {1e6 / speed:.2f} µs per record; 5x logging needs at most "
            f"{1e6 / base / 5:.2f} µs",
        )
    )
    return rows


def build_rows(results: dict[str, Any]) -> list[Row]:
    """The table: absolute figures, ratios and a verdict for every target."""
    logging_ = results["direct_logging"]
    rows = direct_rows('writer="thread" (default)', results["direct_ours"], logging_)
    rows += direct_rows('writer="process"', results["direct_ours_process"], logging_)
    spans = results["spans"]
    read_rate = spans["read_only"]["end_to_end_per_second"]
    noop_rate = spans["noop"]["end_to_end_per_second"]
    rows.append(
        Row(
            "spans end to end, an exporter that only reads the fields a record needs",
            per_second(read_rate, "spans"),
            f"do-nothing exporter {per_second(noop_rate, 'spans')}",
            f"{paired_ratio(spans['read_only'], spans['noop'], 'end_to_end_per_second'):.2f}x",
        )
    )
    for ours, label in (
        ("ours", 'writer="thread" (default)'),
        ("ours_process", 'writer="process"'),
    ):
        ours_rate = spans[ours]["end_to_end_per_second"]
        for other, name, factor in (
            ("noop", "do-nothing exporter", 0.80),
            ("read_only", "read-only exporter", None),
            ("otlp_file", "official OTLP JSON file exporter", 2.0),
            ("console", "ConsoleSpanExporter to a file", None),
        ):
            rate = spans[other]["end_to_end_per_second"]
            ratio = paired_ratio(spans[ours], spans[other], "end_to_end_per_second")
            rows.append(
                Row(
                    f"spans end to end, OperationSpanExporter, {label} (until shutdown() returns)",
                    per_second(ours_rate, "spans"),
                    f"{name} {per_second(rate, 'spans')}",
                    f"{ratio:.2f}x",
                    f"≥ {factor:.2f}x" if factor is not None else "-",
                    ratio >= factor if factor is not None else None,
                )
            )
    queued = results["memory_queued"]
    rows.append(
        Row(
            f"memory per queued record ({queued['queued']:,} waiting, tracemalloc)",
            f"{queued['bytes_per_record']:,.0f} bytes",
            target="≤ 600 bytes",
            met=queued["bytes_per_record"] <= 600,
        )
    )
    overload = results["memory_overload"]
    rows.append(
        Row(
            f"peak RSS, {overload['seconds']:g} s overload (queue max "
            f"{overload['settings']['max_queue_size']:,})",
            f"{overload['peak_rss_kib'] / 1024:,.1f} MiB",
            f"RSS before {overload['rss_before_kib'] / 1024:,.1f} MiB; "
            f"largest queue {overload['largest_queue']:,}",
        )
    )
    return rows


def render_table(rows: list[Row]) -> str:
    header = ("Measurement", "Result", "Compared with", "Ratio", "Target", "This run")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (row.measurement, row.result, row.compared_with, row.ratio, row.target)
        lines.append("| " + " | ".join((*cells, row.verdict)) + " |")
    return "\n".join(lines)


def round_ratios(ours: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """``ours`` over ``other`` in end-to-end throughput, round by round."""
    key = "end_to_end_per_second"
    return [
        mine[key] / theirs[key] for mine, theirs in zip(ours["runs"], other["runs"], strict=True)
    ]


def render_rounds(results: dict[str, Any]) -> str:
    """Each round's own ratios and p99.9: how far the machine's drift moves a verdict."""
    logging_, spans = results["direct_logging"], results["spans"]
    lines: list[tuple[str, list[str]]] = []
    for label, name in (("thread", "direct_ours"), ("process", "direct_ours_process")):
        ratios = round_ratios(results[name], logging_)
        lines.append(
            (f"`record_operation`, {label} writer / logging", [f"{r:.2f}" for r in ratios])
        )
    for label, name in (
        ("thread writer", "direct_ours"),
        ("process writer", "direct_ours_process"),
        ("logging", "direct_logging"),
    ):
        values = [f"{run['p999_us']:,.0f}" for run in results[name]["runs"]]
        lines.append((f"p99.9, {label} (µs)", values))
    for label, name in (
        ("ours with the thread writer", "ours"),
        ("ours with the process writer", "ours_process"),
        ("read-only exporter", "read_only"),
    ):
        ratios = round_ratios(spans[name], spans["noop"])
        lines.append((f"spans, {label} / do-nothing", [f"{r:.2f}" for r in ratios]))
    rounds = len(lines[0][1])
    header = ["Ratio", *(f"Round {number}" for number in range(1, rounds + 1))]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join((label, *values)) + " |" for label, values in lines]
    return "\n".join(table)


def render_settings(results: dict[str, Any], sizes: dict[str, Any]) -> str:
    """The settings every scenario used, so the table can be reproduced."""
    direct = results["direct_ours"]["settings"]
    spans = results["spans"]
    span_settings: dict[str, Any] = next(
        (spans[name]["settings"] for name in SPAN_EXPORTERS if "settings" in spans[name]), {}
    )
    ours_spans = spans["ours"].get("settings", {})
    lines = [
        f"- direct: {sizes['records']:,} records per system; MetricsManager("
        + ", ".join(f"{key}={value!r}" for key, value in direct.items())
        + "), then the same with writer='process'; logging baseline fsyncs "
        + results["direct_logging"]["settings"]["fsync"],
        f"- spans: {sizes['spans']:,} spans per exporter; BatchSpanProcessor("
        f"max_queue_size={span_settings.get('bsp_max_queue_size')}, "
        f"schedule_delay_millis={span_settings.get('bsp_schedule_delay_millis')}, "
        f"max_export_batch_size={span_settings.get('bsp_max_export_batch_size')}) for all",
    ]
    if "max_batch_size" in ours_spans:
        lines.append(
            "- OperationSpanExporter("
            + ", ".join(
                f"{key}={ours_spans[key]!r}"
                for key in ("flush_interval_seconds", "max_batch_size", "max_queue_size")
            )
            + "), once with writer='thread' (the default) and once with writer='process'"
        )
    overload = results["memory_overload"]["settings"]
    lines.append(
        f"- memory: {results['memory_queued']['queued']:,} records queued; overload "
        + ", ".join(f"{key}={value!r}" for key, value in overload.items())
    )
    lines.append(
        f"- each figure is the median of {sizes['repeat']} run(s), but p99 and p99.9: the worst"
    )
    return "\n".join(lines)


def check_complete(results: dict[str, Any]) -> list[str]:
    """Runs whose output lost records: a benchmark that drops data proves nothing.

    Every run, not the medians: one lossy run of five would leave them as they are.
    """
    problems = []
    for name in (
        "direct_ours",
        "direct_ours_process",
        "direct_logging",
        "memory_queued",
        "memory_overload",
    ):
        for index, run in enumerate(results[name].get("runs", [results[name]]), 1):
            expected = run.get("records", run.get("queued", run.get("produced")))
            if run["on_disk"] != expected:
                problems.append(
                    f"{name}, run {index}: {run['on_disk']} on disk, {expected} expected"
                )
    for name, result in results["spans"].items():
        for index, run in enumerate(result.get("runs", [result]), 1):
            if run["on_disk"] != run["spans"]:
                problems.append(
                    f"spans {name}, run {index}: {run['on_disk']} on disk of {run['spans']}"
                )
    return problems


def collect(
    sizes: dict[str, Any], scratch: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run every scenario ``sizes['repeat']`` times, in rounds: each round runs each once.

    A shared machine speeds up and slows down over minutes; in rounds, every
    scenario meets the same drift, so the ratios between them hold better than
    if each ran its repeats back to back. Every second round runs the scenarios
    in reverse order, so that a drift within a round, or what one run leaves the
    next (dirty pages still being written back), does not always fall on the same
    side of a ratio.
    """
    extra = ["--dir", scratch] if scratch else []
    direct = ("direct.py", "--records", str(sizes["records"]), *extra)
    scenarios: dict[str, tuple[str, ...]] = {
        "direct_ours": (*direct, "--system", "ours"),
        "direct_ours_process": (*direct, "--system", "ours", "--writer", "process"),
        "direct_logging": (*direct, "--system", "logging"),
        **{
            f"spans_{exporter}": (
                "spans.py",
                "--exporter",
                exporter,
                "--spans",
                str(sizes["spans"]),
                *extra,
            )
            for exporter in SPAN_EXPORTERS
        },
        "memory_queued": ("memory.py", "--mode", "queued", "--queue", str(sizes["queue"]), *extra),
        "memory_overload": (
            "memory.py",
            "--mode",
            "overload",
            "--seconds",
            str(sizes["overload_seconds"]),
            *extra,
        ),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in scenarios}
    forwards = list(scenarios.items())
    for round_number in range(1, sizes["repeat"] + 1):
        for name, command in forwards if round_number % 2 else forwards[::-1]:
            log(f"round {round_number} of {sizes['repeat']}: {name}")
            runs[name].append(run_scenario(*command))
    results = {name: median_of(found) for name, found in runs.items()}
    results["spans"] = {exporter: results.pop(f"spans_{exporter}") for exporter in SPAN_EXPORTERS}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="otel-json-exporter benchmark")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run")
    parser.add_argument("--records", type=int, help="records per direct-recording run")
    parser.add_argument("--spans", type=int, help="spans per exporter run")
    parser.add_argument("--queue", type=int, help="records queued for the memory figure")
    parser.add_argument("--overload-seconds", type=float, help="length of the overload run")
    parser.add_argument("--repeat", type=int, help="runs per scenario (median reported)")
    parser.add_argument("--dir", help="where scratch files go (default: the system temp dir)")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    sizes = dict(QUICK if args.quick else FULL)
    for key in ("records", "spans", "queue", "overload_seconds", "repeat"):
        value = getattr(args, key)
        if value is not None:
            if value <= 0:
                parser.error(f"--{key.replace('_', '-')} must be positive")
            sizes[key] = value

    def log(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    scratch_parent = Path(args.dir) if args.dir else Path(os.environ.get("TMPDIR", "/tmp"))
    try:
        results = collect(sizes, args.dir, log)
    except ScenarioError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    info = machine(scratch_parent)
    rows = build_rows(results)
    print("Machine: " + "; ".join(f"{key}: {value}" for key, value in info.items()))
    print()
    print(render_table(rows))
    print()
    print("Each round's own figures (even rounds ran the scenarios in reverse order):")
    print()
    print(render_rounds(results))
    print()
    print(render_settings(results, sizes))
    problems = check_complete(results)
    for problem in problems:
        print(f"RECORDS LOST: {problem}", file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "sizes": sizes,
                    "results": results,
                    "table": [{**row.__dict__, "verdict": row.verdict} for row in rows],
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
