"""Memory: bytes per queued record, and peak RSS under sustained overload.

``python benchmarks/memory.py --mode queued --queue N [--dir D]``
``python benchmarks/memory.py --mode overload --seconds S [--dir D]``

* ``queued``: ``tracemalloc`` counts what ``N`` accepted records cost while they
  all wait in the queue. No batch is due: the flush interval is an hour, the
  batch size is above ``N``, and the queue holds ``N + 1`` (a full queue is
  written at once, which would free records while they are being counted). The records
  are the realistic ones of ``_common.record_pool``, each call passing its own
  fresh metadata dict and duration as an application would (the manager copies
  the dict and keeps the float; the names are the pool's shared constants). A
  warm-up record is written first so that one-off costs (caches, the writer
  thread) are not charged to the records. ``stop()`` then writes them all and
  the file count is checked.
* ``overload``: four coroutines record as fast as they can for ``S`` seconds
  into a manager whose writer cannot keep up (``max_batch_size=10``: one
  fsynced file per ten records), so the queue stays full and producers wait
  (the default ``"block"`` policy). Reports the peak RSS (``VmHWM``) against
  the RSS before the overload, and the largest queue seen.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc
from pathlib import Path
from typing import Any

from _common import (
    POOL_SIZE,
    count_batch_records,
    emit,
    proc_status_kib,
    record_pool,
    remove_tree,
    scratch_dir,
)

from otel_json_exporter import MetricsManager

OVERLOAD_QUEUE_SIZE = 10_000
OVERLOAD_BATCH_SIZE = 10
OVERLOAD_PRODUCERS = 4
_TUPLE_FREE_LIST = 2_000  # CPython 3.11's free list keeps up to 2,000 tuples of each size


async def run_queued(queue_size: int, directory: Path) -> dict[str, Any]:
    """Traced bytes per record with ``queue_size`` records waiting."""
    pool = record_pool()
    manager = MetricsManager(
        directory,
        flush_interval_seconds=3600.0,
        max_batch_size=queue_size + 2,
        max_queue_size=queue_size + 1,
    )
    await manager.start()
    for start in range(0, len(pool), queue_size):  # warm-up: every key through the PII cache
        for args in pool[start : start + queue_size]:
            await manager.record_operation(*args)
        await manager.flush()
    mask = POOL_SIZE - 1
    # The warm-up's writes left freed 7-tuples (a queued row is one) in CPython's free
    # list, which hands them out again without an allocation tracemalloc would see:
    # taken here, and held until the count is done, they cannot hide a row's tuple.
    spare_rows = [tuple(range(index, index + 7)) for index in range(_TUPLE_FREE_LIST)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for index in range(queue_size):
        kind, name, duration, success, error, metadata = pool[index & mask]
        # A duration of its own per call, as an application measures one; the names are
        # the pool's, as an application passes constants.
        await manager.record_operation(kind, name, duration + 0.0, success, error, dict(metadata))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del spare_rows
    waiting = manager.stats().queue_size
    await manager.stop(timeout=120.0)
    return {
        "mode": "queued",
        "queued": waiting,
        "on_disk": count_batch_records(directory) - len(pool),
        "bytes_per_record": (after - before) / waiting,
        "settings": {
            "max_queue_size": queue_size + 1,
            "max_batch_size": queue_size + 2,
            "flush_interval_seconds": 3600.0,
        },
    }


async def run_overload(seconds: float, directory: Path) -> dict[str, Any]:
    """Peak RSS while producers outrun the writer for ``seconds``."""
    pool = record_pool()
    manager = MetricsManager(
        directory,
        flush_interval_seconds=5.0,
        max_batch_size=OVERLOAD_BATCH_SIZE,
        max_queue_size=OVERLOAD_QUEUE_SIZE,
    )
    await manager.start()
    rss_before = proc_status_kib("VmRSS")
    deadline = time.monotonic() + seconds
    largest_queue = 0
    produced = 0

    async def produce(offset: int) -> None:
        nonlocal largest_queue, produced
        index = offset
        mask = POOL_SIZE - 1
        while time.monotonic() < deadline:
            for _ in range(100):
                kind, name, duration, success, error, metadata = pool[index & mask]
                await manager.record_operation(kind, name, duration, success, error, dict(metadata))
                index += 1
            produced += 100
            largest_queue = max(largest_queue, manager.stats().queue_size)

    await asyncio.gather(*(produce(n * 257) for n in range(OVERLOAD_PRODUCERS)))
    peak_during = proc_status_kib("VmHWM")
    await manager.stop(timeout=300.0)
    return {
        "mode": "overload",
        "seconds": seconds,
        "produced": produced,
        "on_disk": count_batch_records(directory),
        "largest_queue": largest_queue,
        "rss_before_kib": rss_before,
        "peak_rss_kib": peak_during,
        "settings": {
            "max_queue_size": OVERLOAD_QUEUE_SIZE,
            "max_batch_size": OVERLOAD_BATCH_SIZE,
            "producers": OVERLOAD_PRODUCERS,
            "queue_full_policy": manager.queue_full_policy,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("queued", "overload"), required=True)
    parser.add_argument("--queue", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    args = parser.parse_args()
    directory = scratch_dir(args.dir, f"memory-{args.mode}")
    try:
        if args.mode == "queued":
            result = asyncio.run(run_queued(args.queue, directory))
        else:
            result = asyncio.run(run_overload(args.seconds, directory))
    finally:
        remove_tree(directory)
    emit(result)


if __name__ == "__main__":
    main()
