"""Direct recording: ``MetricsManager.record_operation`` against Python's logging pattern.

``python benchmarks/direct.py --system ours|logging --records N [--dir D]``

Both systems get the same records (``_common.record_pool``) in the same order,
from one coroutine, and both time from the first call until everything is on
disk and the background thread has stopped:

* ``ours``: ``await manager.record_operation(...)`` per record, then
  ``await manager.stop()``. Validation, the PII rule and an ``fsync`` of every
  batch file (and of the directory) are all on. ``--writer`` picks the
  manager's ``writer`` setting (``thread``, the default, or ``process``).
* ``logging``: the standard non-blocking pattern, ``QueueHandler`` on the logger
  and ``QueueListener`` feeding a ``FileHandler`` whose formatter writes one
  ``json.dumps`` line per record (the same fields, timestamp from the log
  record). The end is ``listener.stop()``, then one ``os.fsync`` and close of
  the file: the log file is made durable once, at the end, while ours fsyncs
  every batch. Nothing is validated or PII-checked.

The latency of each call is taken with ``time.perf_counter_ns`` around it.
Over the same span of time, the CPU time of the calling thread and of the
whole process are read too: the calling thread's is the producer's, the rest
belongs to the background thread that encodes and writes (and, for ours,
fsyncs). Under the GIL these two add up instead of overlapping. With
``--writer process`` the encoding and writing happen in a child process, whose
CPU time is not the application's and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.handlers
import os
import queue
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from _common import (
    POOL_SIZE,
    count_batch_records,
    emit,
    latency_summary,
    record_pool,
    remove_tree,
    scratch_dir,
)

from otel_json_exporter import MetricsManager
from otel_json_exporter.manager import WriterKind

FLUSH_INTERVAL_SECONDS = 5.0
MAX_BATCH_SIZE = 1000
MAX_QUEUE_SIZE = 10_000


async def run_ours(
    records: int, directory: Path, max_batch_size: int, writer: WriterKind = "thread"
) -> dict[str, Any]:
    """Time ``record_operation`` for ``records`` calls plus ``stop()``."""
    pool = record_pool()
    manager = MetricsManager(
        directory,
        flush_interval_seconds=FLUSH_INTERVAL_SECONDS,
        max_batch_size=max_batch_size,
        max_queue_size=max(MAX_QUEUE_SIZE, max_batch_size),
        writer=writer,
    )
    await manager.start()
    record = manager.record_operation
    clock = time.perf_counter_ns
    latencies = [0] * records
    mask = POOL_SIZE - 1
    cpu = CpuClock()
    started = time.perf_counter()
    for index in range(records):
        args = pool[index & mask]
        before = clock()
        await record(*args)
        latencies[index] = clock() - before
    calls_done = time.perf_counter()
    await manager.stop(timeout=120.0)
    finished = time.perf_counter()
    split = cpu.per_item(records)
    stats = manager.stats()
    on_disk = count_batch_records(directory)
    return {
        "system": "ours",
        "records": records,
        "on_disk": on_disk,
        "batches": stats.batches_written,
        "bytes_written": stats.bytes_written,
        "calls_seconds": calls_done - started,
        "end_to_end_seconds": finished - started,
        "end_to_end_per_second": records / (finished - started),
        **split,
        "settings": {
            "flush_interval_seconds": FLUSH_INTERVAL_SECONDS,
            "max_batch_size": manager.max_batch_size,
            "max_queue_size": manager.max_queue_size,
            "queue_full_policy": manager.queue_full_policy,
            "writer": manager.writer,
        },
        **latency_summary(latencies),
    }


class CpuClock:
    """CPU time since creation: the calling thread's, and the rest of the process's."""

    def __init__(self) -> None:
        self.thread = time.thread_time()
        self.process = time.process_time()

    def per_item(self, items: int) -> dict[str, float]:
        """Microseconds of CPU per item: ``producer_cpu_us`` and ``background_cpu_us``."""
        thread = time.thread_time() - self.thread
        process = time.process_time() - self.process
        return {
            "producer_cpu_us": thread / items * 1e6,
            "background_cpu_us": max(process - thread, 0.0) / items * 1e6,
        }


class JsonLineFormatter(logging.Formatter):
    """One ``json.dumps`` line per record, the fields of an operation record."""

    def format(self, record: logging.LogRecord) -> str:
        operation: dict[str, Any] = record.operation  # type: ignore[attr-defined]
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        return json.dumps({**operation, "timestamp": moment.isoformat(timespec="microseconds")})


def run_logging(records: int, directory: Path) -> dict[str, Any]:
    """Time ``logger.info`` for ``records`` calls plus ``listener.stop()`` and fsync."""
    pool = record_pool()
    path = directory / "operations.jsonl"
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(JsonLineFormatter())
    channel: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(channel, handler)
    logger = logging.getLogger("bench.operations")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.handlers.QueueHandler(channel))
    listener.start()
    info = logger.info
    clock = time.perf_counter_ns
    latencies = [0] * records
    mask = POOL_SIZE - 1
    cpu = CpuClock()
    started = time.perf_counter()
    for index in range(records):
        kind, name, duration, success, error, metadata = pool[index & mask]
        before = clock()
        info(
            "operation",
            extra={
                "operation": {
                    "operation_type": kind,
                    "operation_name": name,
                    "duration_ms": duration,
                    "success": success,
                    "error_message": error,
                    "metadata": metadata,
                }
            },
        )
        latencies[index] = clock() - before
    calls_done = time.perf_counter()
    listener.stop()
    handler.flush()
    assert handler.stream is not None
    os.fsync(handler.stream.fileno())
    handler.close()
    finished = time.perf_counter()
    split = cpu.per_item(records)
    with path.open("rb") as lines:
        on_disk = sum(1 for _ in lines)
    return {
        "system": "logging",
        "records": records,
        "on_disk": on_disk,
        "bytes_written": path.stat().st_size,
        "calls_seconds": calls_done - started,
        "end_to_end_seconds": finished - started,
        "end_to_end_per_second": records / (finished - started),
        **split,
        "settings": {"fsync": "once, after listener.stop()"},
        **latency_summary(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", choices=("ours", "logging"), required=True)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--max-batch-size", type=int, default=MAX_BATCH_SIZE)
    parser.add_argument("--writer", choices=("thread", "process"), default="thread")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    args = parser.parse_args()
    directory = scratch_dir(args.dir, f"direct-{args.system}")
    try:
        if args.system == "ours":
            result = asyncio.run(
                run_ours(args.records, directory, args.max_batch_size, args.writer)
            )
        else:
            result = run_logging(args.records, directory)
    finally:
        remove_tree(directory)
    emit(result)


if __name__ == "__main__":
    main()
