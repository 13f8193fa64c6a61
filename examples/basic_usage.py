"""The specification's quick start: record operations directly, with and without a timer.

Run it with ``python examples/basic_usage.py [STORAGE_DIR]`` (default ``./metrics``).
It records one API request by hand, times a computation with ``track_operation``
(once as a context manager, once as a decorator), and stops the manager, which
writes everything to one batch file.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from otel_json_exporter import MetricsManager, track_operation


async def expensive_computation() -> int:
    await asyncio.sleep(0.01)
    return sum(range(10_000))


async def main(storage: Path) -> None:
    manager = MetricsManager(storage_path=storage, flush_interval_seconds=5.0, max_batch_size=1000)
    await manager.start()

    # Record operations (non-blocking, O(1))
    await manager.record_operation(
        operation_type="api_request",
        operation_name="GET /api/users",
        duration_ms=42.5,
        success=True,
        metadata={"status_code": 200, "region": "us-east"},
    )

    # Time a block...
    async with track_operation(manager, "computation", "process_user_data"):
        await expensive_computation()

    # ...or every call of a coroutine function.
    @track_operation(manager, "computation", "nightly_report")
    async def nightly_report() -> int:
        return await expensive_computation()

    await nightly_report()

    # Graceful shutdown (flushes remaining metrics)
    await manager.stop()
    stats = await manager.get_stats()
    print(f"wrote {stats.total_persisted} records in {stats.batches_written} file(s) to {storage}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "./metrics")))
