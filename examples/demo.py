"""The main job of ``make demo``: a short, realistic workload written to batch files.

Fifty concurrent "requests" each make a couple of database queries and record
them through :class:`MetricsManager`; a few fail. One call tries to record an
e-mail address and is refused by the PII rule. The demo then prints what it
wrote: the files, the record counts and the start of one batch.

Run it with ``python examples/demo.py [STORAGE_DIR]`` (default ``./metrics``).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path

from otel_json_exporter import MetricsManager

ROUTES = ["GET /api/users", "GET /api/orders", "POST /api/orders", "GET /api/products"]


async def handle_request(manager: MetricsManager, request_no: int, rng: random.Random) -> None:
    """One simulated request: two queries, then the request itself."""
    route = rng.choice(ROUTES)
    started = time.perf_counter()
    for table in ("users", "orders"):
        query_ms = rng.uniform(0.5, 8.0)
        await asyncio.sleep(query_ms / 1000)
        await manager.record_operation(
            operation_type="database_query",
            operation_name=f"SELECT {table}",
            duration_ms=query_ms,
            metadata={"db.system": "postgresql", "rows_returned": rng.randint(0, 50)},
        )
    failed = request_no % 17 == 0
    await manager.record_operation(
        operation_type="api_request",
        operation_name=route,
        duration_ms=(time.perf_counter() - started) * 1000,
        success=not failed,
        error_message="TimeoutError: upstream did not answer" if failed else None,
        metadata={
            "status_code": 504 if failed else 200,
            "region": rng.choice(["ca-central", "us-east"]),
            "user_hash": f"{rng.getrandbits(32):08x}",
        },
    )


async def main(storage: Path) -> None:
    manager = MetricsManager(storage, flush_interval_seconds=0.5, max_batch_size=40)
    await manager.start()
    rng = random.Random(25)
    await asyncio.gather(*(handle_request(manager, n, rng) for n in range(50)))
    try:
        await manager.record_operation(
            "api_request", "GET /api/profile", 3.0, metadata={"email": "someone@example.com"}
        )
    except ValueError as exc:
        print(f"refused by the PII rule: {exc}")
    await manager.stop()
    stats = await manager.get_stats()

    files = sorted(storage.glob("metrics_*.json"))
    written_now = files[-stats.batches_written :] if stats.batches_written else []
    print(f"\nwrote {stats.total_persisted} records in {stats.batches_written} batch files")
    print(f"into {storage.resolve()} ({stats.bytes_written} bytes, fsynced):")
    for path in written_now:
        batch = json.loads(path.read_text())
        print(f"  {path.name}  {batch['total_records']:>3} records")
    if written_now:
        print(f"\nthe start of {written_now[0].name}:")
        print("\n".join(written_now[0].read_text().splitlines()[:16]))
        print("  ...")
    print(f"\nstats: {stats.model_dump_json()}")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1] if len(sys.argv) > 1 else "./metrics")))
