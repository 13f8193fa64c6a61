"""A writer process for the multi-process and SIGKILL reliability tests.

Run as ``python tests/_writer_process.py MODE ARGS...``; each record carries a
unique ``rid`` in its metadata so the parent can check every record on disk.

Modes:

``manager STORAGE FIRST COUNT BATCH_SIZE START_AT``
    Waits until the wall-clock time START_AT (so all processes write within the
    same seconds), records rids FIRST..FIRST+COUNT-1 through a MetricsManager
    with ``max_batch_size=BATCH_SIZE``, stops it, prints ``done``.
``clash STORAGE FIRST COUNT START_AT``
    Same start, but writes COUNT one-record batches straight through
    BatchWriter, all with the same batch timestamp as every other ``clash``
    process: every name is fought over. Prints how many links found their name taken.
``loop STORAGE FIRST``
    Records rids from FIRST on and flushes, forever; after every flush prints
    ``persisted <last rid>``.
    The parent kills it with SIGKILL at a random moment.
``exit STORAGE COUNT``
    Records COUNT rids and returns without ``stop()``: the interpreter-exit hook
    must write them.
``die STORAGE CALL``
    Kills itself with SIGKILL inside the writer's ``os.CALL`` (``fsync`` of the
    temporary file, ``link``, or ``unlink`` of the temporary file after the link).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from otel_json_exporter import MetricsManager, OperationRecord
from otel_json_exporter.writer import BatchWriter

CLASH_MOMENT = datetime(2025, 1, 1, tzinfo=timezone.utc)


def wait_until(start_at: float) -> None:
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)


async def manager_mode(storage: Path, first: int, count: int, batch: int, start_at: float) -> None:
    manager = MetricsManager(storage, flush_interval_seconds=0.01, max_batch_size=batch)
    await manager.start()
    wait_until(start_at)
    for rid in range(first, first + count):
        await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
        if rid % 20 == 0:
            await asyncio.sleep(0)
    await manager.stop(timeout=60)
    print("done", flush=True)


def clash_mode(storage: Path, first: int, count: int, start_at: float) -> None:
    writer = BatchWriter(storage)
    writer.prepare()
    clashes = 0
    real_link = os.link

    def counting_link(source: Any, target: Any) -> None:  # observes, never changes
        nonlocal clashes
        try:
            real_link(source, target)
        except FileExistsError:
            clashes += 1
            raise

    os.link = counting_link  # type: ignore[assignment]
    wait_until(start_at)
    for rid in range(first, first + count):
        record = OperationRecord(
            operation_type="job",
            operation_name="step",
            duration_ms=1.0,
            timestamp=CLASH_MOMENT,
            metadata={"rid": rid},
        )
        writer.write([record], now=CLASH_MOMENT)
    print(f"clashes {clashes}", flush=True)


async def loop_mode(storage: Path, first: int) -> None:
    manager = MetricsManager(storage, flush_interval_seconds=0.01, max_batch_size=3)
    await manager.start()
    rid = first
    pad = "x" * 20_000  # bigger files: more of the time is spent inside a write
    while True:
        for _ in range(7):
            await manager.record_operation("job", "step", 1.0, metadata={"rid": rid, "pad": pad})
            rid += 1
        await manager.flush()
        print(f"persisted {rid - 1}", flush=True)


async def exit_mode(storage: Path, count: int) -> None:
    manager = MetricsManager(storage, flush_interval_seconds=3600, max_batch_size=1000)
    await manager.start()
    for rid in range(count):
        await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
    print("leaving", manager.stats().total_persisted, flush=True)


def die_mode(storage: Path, call: str) -> None:
    real = getattr(os, call)

    def die_in_writer(*args: Any) -> Any:
        in_writer = threading.current_thread().name == "otel-json-exporter-writer"
        if in_writer and (call != "unlink" or ".metrics_" in os.fspath(args[0])):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)

    manager = MetricsManager(storage, flush_interval_seconds=60, max_batch_size=3)
    manager.start_sync()
    setattr(os, call, die_in_writer)
    for rid in range(3):
        manager.submit_records(
            [
                OperationRecord(
                    operation_type="job",
                    operation_name="step",
                    duration_ms=1.0,
                    timestamp=datetime.now(timezone.utc),
                    metadata={"rid": rid},
                )
            ]
        )
    time.sleep(30)  # the writer kills the process long before this ends
    sys.exit("the writer never reached os." + call)


def main(argv: list[str]) -> None:
    mode, storage = argv[0], Path(argv[1])
    if mode == "manager":
        first, count, batch = int(argv[2]), int(argv[3]), int(argv[4])
        asyncio.run(manager_mode(storage, first, count, batch, float(argv[5])))
    elif mode == "clash":
        clash_mode(storage, int(argv[2]), int(argv[3]), float(argv[4]))
    elif mode == "loop":
        asyncio.run(loop_mode(storage, int(argv[2])))
    elif mode == "exit":
        asyncio.run(exit_mode(storage, int(argv[2])))
    elif mode == "die":
        die_mode(storage, argv[2])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
