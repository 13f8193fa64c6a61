"""What the benchmark scenarios share: the workload, percentiles, RSS, the result line.

Every scenario is a script that runs in its own interpreter (``run.py`` starts
it) and prints exactly one JSON object on its last stdout line. Keeping each
measurement in its own process means one scenario's garbage, threads, caches or
page cache state never slows down or speeds up the next.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RecordArgs = tuple[str, str, float, bool, "str | None", dict[str, Any]]
"""Positional arguments of one ``record_operation`` call."""

POOL_SIZE = 1024
"""Distinct records cycled through, so building the workload costs nothing while timing."""

SPAN_POOL_SIZE = 16384
"""Distinct spans cycled through: four times what the PII policy remembers of the texts it
found clean (4,096), so that a query seen once in real traffic is not found remembered."""

_ROUTES = (
    ("GET", "/api/users/{user_hash}"),
    ("GET", "/api/orders"),
    ("POST", "/api/orders"),
    ("GET", "/api/products/{sku}"),
    ("PUT", "/api/carts/{cart_id}"),
    ("DELETE", "/api/sessions/current"),
)
_REGIONS = ("ca-central-1", "us-east-1", "eu-west-3")
_USER_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "okhttp/4.12.0",
)


def record_pool(seed: int = 5) -> list[RecordArgs]:
    """Realistic ``record_operation`` arguments: API requests and DB queries, 2 % failures.

    The metadata is what the README recommends recording: small, PII-free and
    flat (method, route, status, region, row counts, cache hits).
    """
    rng = random.Random(seed)
    pool: list[RecordArgs] = []
    for index in range(POOL_SIZE):
        method, route = _ROUTES[index % len(_ROUTES)]
        failed = rng.random() < 0.02
        if index % 3 == 2:
            metadata: dict[str, Any] = {
                "db.system": "postgresql",
                "db.operation": "SELECT",
                "db.collection": route.split("/")[2],
                "rows_returned": rng.randrange(0, 500),
                "cache_hit": rng.random() < 0.3,
                "query_hash": f"{rng.getrandbits(64):016x}",
            }
            pool.append(
                (
                    "database_query",
                    f"SELECT {route.split('/')[2]}",
                    round(rng.lognormvariate(0.5, 0.8), 3),
                    not failed,
                    "deadlock detected; transaction rolled back" if failed else None,
                    metadata,
                )
            )
            continue
        status = 500 if failed else (201 if method == "POST" else 200)
        metadata = {
            "http.request.method": method,
            "http.route": route,
            "http.response.status_code": status,
            "server.address": "api.example.com",
            "region": _REGIONS[index % len(_REGIONS)],
            "response_bytes": rng.randrange(200, 20_000),
        }
        pool.append(
            (
                "api_request",
                f"{method} {route}",
                round(rng.lognormvariate(2.5, 0.7), 3),
                not failed,
                "upstream timed out after 3000 ms" if failed else None,
                metadata,
            )
        )
    return pool


def span_pool(seed: int = 5) -> list[tuple[str, dict[str, Any], bool]]:
    """Realistic HTTP server spans: (name, attributes, failed), OTel semantic conventions.

    Each has a query: a page of a list (``GET /api/orders``, 19 distinct), else a
    cursor of its own, as an API paging by cursor sends, seen once per round of the pool.
    """
    rng = random.Random(seed)
    pool = []
    for index in range(SPAN_POOL_SIZE):
        method, route = _ROUTES[index % len(_ROUTES)]
        path = route.replace("{user_hash}", f"{rng.getrandbits(32):08x}")
        path = path.replace("{sku}", f"SKU-{rng.randrange(10_000)}")
        path = path.replace("{cart_id}", str(rng.randrange(1_000_000)))
        failed = rng.random() < 0.02
        status = 500 if failed else (201 if method == "POST" else 200)
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": "https",
            "url.path": path,
            "url.query": (
                f"page={rng.randrange(1, 20)}&per_page=50"
                if route == "/api/orders" and method == "GET"
                else f"cursor={rng.getrandbits(64):016x}&limit=50"
            ),
            "http.route": route,
            "http.response.status_code": status,
            "server.address": "api.example.com",
            "server.port": 443,
            "network.protocol.version": "1.1",
            "client.address": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            "user_agent.original": _USER_AGENTS[index % len(_USER_AGENTS)],
            "http.request.body.size": rng.randrange(0, 4096) if method != "GET" else 0,
            "http.response.body.size": rng.randrange(200, 20_000),
        }
        pool.append((f"{method} {route}", attributes, failed))
    return pool


def percentile(sorted_values: Sequence[int], quantile: float) -> int:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    rank = max(math.ceil(quantile * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def latency_summary(latencies_ns: list[int]) -> dict[str, float]:
    """p50, p99, p99.9 and max, in microseconds."""
    latencies_ns.sort()
    return {
        "p50_us": percentile(latencies_ns, 0.50) / 1e3,
        "p99_us": percentile(latencies_ns, 0.99) / 1e3,
        "p999_us": percentile(latencies_ns, 0.999) / 1e3,
        "max_us": latencies_ns[-1] / 1e3,
    }


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``); 0 where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def scratch_dir(parent: str | None, label: str) -> Path:
    """A fresh directory for one scenario's files."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{label}-", dir=parent))


def count_batch_records(directory: Path) -> int:
    """Records in every ``metrics_*.json`` file of ``directory`` (each file parsed)."""
    total = 0
    for path in directory.glob("metrics_*.json"):
        batch = json.loads(path.read_bytes())
        if batch["total_records"] != len(batch["records"]):
            raise RuntimeError(f"{path.name}: total_records does not match its records")
        total += len(batch["records"])
    return total


def emit(result: dict[str, Any]) -> None:
    """Print the scenario's result as the last stdout line, for ``run.py``."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def remove_tree(directory: Path) -> None:
    """Delete a scenario's files (the benchmark leaves nothing behind)."""
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(directory)
