"""Every script in examples/ runs in a subprocess and writes what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import load_records

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def check_demo(storage: Path) -> None:
    output = run("demo.py", str(storage))
    assert "refused by the PII rule" in output
    records = load_records(storage)
    types = Counter(record.operation_type for record in records)
    assert types == {"database_query": 100, "api_request": 50}
    assert sum(not record.success for record in records) == 3  # requests 0, 17 and 34
    assert b"someone@example.com" not in b"".join(p.read_bytes() for p in storage.iterdir())


def check_basic_usage(storage: Path) -> None:
    assert "wrote 3 records in 1 file(s)" in run("basic_usage.py", str(storage))
    records = {record.operation_name: record for record in load_records(storage)}
    assert sorted(records) == ["GET /api/users", "nightly_report", "process_user_data"]
    assert records["GET /api/users"].metadata == {"status_code": 200, "region": "us-east"}
    assert records["process_user_data"].operation_type == "computation"
    assert all(record.success for record in records.values())


def check_tracing(storage: Path) -> None:
    output = run("tracing.py", env={"OTEL_EXPORTER_OPERATION_JSON_PATH": str(storage)})
    assert "wrote 4 span records" in output
    records = {record.operation_name: record for record in load_records(storage)}
    assert {name: r.operation_type for name, r in records.items()} == {
        "POST /api/orders": "api_request",
        "SELECT stock": "database_query",
        "POST": "http_client",
        "render receipt": "render",
    }
    request = records["POST /api/orders"]
    assert (request.success, request.error_message) == (False, "payment declined")
    charge = records["POST"]
    assert charge.success is False
    assert charge.metadata["url.full"] == (
        "https://REDACTED:REDACTED@payments.example/charge?email=REDACTED"
    )
    children = [r for r in records.values() if r is not request]
    assert {r.metadata["parent_span_id"] for r in children} == {request.metadata["span_id"]}


def check_fastapi_app(storage: Path) -> None:
    output = run("fastapi_app.py", str(storage))
    assert "GET /api/payments/health -> 500" in output
    assert 'GET /api/orders/1 -> 200 {"id":1,"total":42.5}' in output  # the id an int
    records = load_records(storage)
    kinds = Counter((record.operation_type, record.operation_name) for record in records)
    assert kinds == {
        ("api_request", "GET /api/orders/{order_id}"): 2,
        ("api_request", "POST /api/orders"): 1,
        ("api_request", "GET /api/payments/health"): 1,
        ("business_event", "order_placed"): 1,
    }
    raw = b"".join(path.read_bytes() for path in storage.iterdir())
    assert b"ann@mail.example" not in raw
    assert b"not-for-files" not in raw


def check_auto_instrumented_app(storage: Path) -> None:
    # Without opentelemetry-instrument it is a plain app: it runs and writes nothing.
    # tests/test_auto_instrumentation.py runs it under opentelemetry-instrument.
    output = run(
        "auto_instrumented_app.py", env={"OTEL_EXPORTER_OPERATION_JSON_PATH": str(storage)}
    )
    assert "GET /stock/apple -> 200" in output
    assert not storage.exists()


CHECKS: dict[str, Callable[[Path], None]] = {
    "demo.py": check_demo,
    "basic_usage.py": check_basic_usage,
    "tracing.py": check_tracing,
    "fastapi_app.py": check_fastapi_app,
    "auto_instrumented_app.py": check_auto_instrumented_app,
}


def test_every_example_has_a_check() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(CHECKS)


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_example(script: str, storage: Path) -> None:
    CHECKS[script](storage)
