"""Failing tests found in a user trial: real SDK, real exporter, real batch files.

Span-path masking rewrites text it should only mask: when a string holds a PII
``name=value`` after ``;`` / ``?`` (or an address), the span mapping re-parses the
whole string as a URL, lower-cases a leading ``Word:`` (taken for a URL scheme) and
drops the text after the masked value, or replaces non-PII text with ``REDACTED``.
The direct path (``record_operation``) masks the same strings as README says.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from otel_json_exporter import MetricsManager, OperationSpanExporter

from ._spans import header_capturing_app


def _records(directory: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("metrics_*.json")):
        records.extend(json.loads(path.read_text())["records"])
    return records


# (exception message, what README's rule gives: only the value masked, the rest kept)
MESSAGES = [
    ("lookup failed; token=abc123 (retry in 5s)", "lookup failed; token=REDACTED (retry in 5s)"),
    (
        "Max retries exceeded with url: /v1/items?token=abc (Caused by NewConnectionError())",
        "Max retries exceeded with url: /v1/items?token=REDACTED (Caused by NewConnectionError())",
    ),
    (
        "no account for gina@example.com; token=abc123secret",
        "no account for [REDACTED]; token=REDACTED",
    ),
]


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize(("message", "expected"), MESSAGES)
def test_span_error_message_is_masked_not_rewritten(
    tmp_path: Path, writer: str, message: str, expected: str
) -> None:
    exporter = OperationSpanExporter(tmp_path / "spans", writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("trial")
    span = tracer.start_as_current_span(
        "GET /boom", kind=SpanKind.SERVER, attributes={"http.method": "GET"}
    )
    with pytest.raises(ValueError, match="="), span:
        raise ValueError(message)
    provider.shutdown()
    (record,) = _records(tmp_path / "spans")
    assert record["error_message"] == f"ValueError: {expected}"


def test_span_path_masks_like_record_operation(tmp_path: Path) -> None:
    """The same error text, recorded directly and via a span, should read the same."""
    text = "ValueError: lookup failed; token=abc123 (retry in 5s)"

    async def direct() -> None:
        manager = MetricsManager(tmp_path / "direct")
        await manager.start()
        await manager.record_operation("api_request", "GET /boom", 1.0, False, text)
        await manager.stop()

    asyncio.run(direct())
    (direct_record,) = _records(tmp_path / "direct")

    exporter = OperationSpanExporter(tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("trial")
    with tracer.start_as_current_span("GET /boom", attributes={"note": text}):
        pass
    provider.shutdown()
    (span_record,) = _records(tmp_path / "spans")

    masked = "ValueError: lookup failed; token=REDACTED (retry in 5s)"
    assert direct_record["error_message"] == masked
    assert span_record["metadata"]["note"] == direct_record["error_message"]


def test_span_name_case_is_kept(tmp_path: Path) -> None:
    exporter = OperationSpanExporter(tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    with provider.get_tracer("trial").start_as_current_span("Job: retry; token=abc"):
        pass
    provider.shutdown()
    (record,) = _records(tmp_path / "spans")
    assert record["operation_name"] == "Job: retry; token=REDACTED"


def test_fastapi_500_error_message_keeps_type_and_cause(tmp_path: Path) -> None:
    """A real FastAPI app under FastAPIInstrumentor, driven through httpx."""
    exporter = OperationSpanExporter(tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app = FastAPI()

    @app.get("/proxy")
    async def proxy() -> None:
        raise ConnectionError(
            "Max retries exceeded with url: /v1?token=abc (Caused by timeout after 30s)"
        )

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    async def drive() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/proxy")).status_code

    assert asyncio.run(drive()) == 500
    provider.shutdown()
    (record,) = [r for r in _records(tmp_path / "spans") if r["operation_type"] == "api_request"]
    assert record["success"] is False
    assert record["error_message"] == (
        "ConnectionError: Max retries exceeded with url: /v1?token=REDACTED "
        "(Caused by timeout after 30s)"
    )


# Free text quoting a URL: each URL in it is masked as a URL, the words around it are kept.
FREE_TEXT = [
    (
        "Max retries exceeded with url: /login?next=%2Faccount%3Femail%3Djean%2540x.io (X)",
        "Max retries exceeded with url: /login?next=REDACTED (X)",
    ),
    (
        "Error: could not reach https://bob:s3cret@db.example.com:5432/app?sslmode=require",
        "Error: could not reach https://REDACTED:REDACTED@db.example.com:5432/app?sslmode=require",
    ),
    (
        "Bad request: /api/users/jean.tremblay%40gmail.com?expand=1 (400)",
        "Bad request: /api/users/REDACTED?expand=1 (400)",
    ),
    ("Retry: /p?e%6Dail=jean&a=1 later", "Retry: /p?e%6Dail=REDACTED&a=1 later"),
    # A text that is a URL and nothing else is masked as a URL, as before.
    ("https://h.example/p;jsessionid=s1?x=1#t", "https://h.example/p;jsessionid=REDACTED?x=1#t"),
    ("/reset/token=abc?x=1", "/reset/token=REDACTED?x=1"),
]


@pytest.mark.parametrize(("text", "expected"), FREE_TEXT)
def test_a_url_inside_free_text_is_masked_as_a_url(
    tmp_path: Path, text: str, expected: str
) -> None:
    exporter = OperationSpanExporter(tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    with provider.get_tracer("trial").start_as_current_span(text, attributes={"note": text}):
        pass
    provider.shutdown()
    (record,) = _records(tmp_path / "spans")
    assert record["operation_name"] == expected
    assert record["metadata"]["note"] == expected


def test_a_storage_directory_removed_while_running_is_named_in_the_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning said only "No such file or directory". It names the directory and what
    is wrong; once the directory is back, the records held are written."""
    storage = tmp_path / "gone"

    async def scenario() -> None:
        manager = MetricsManager(storage, flush_interval_seconds=0.05)
        await manager.start()
        storage.rmdir()
        await manager.record_operation("job", "step", 1.0)
        for _ in range(200):
            if "no longer exists" in caplog.text:
                break
            await asyncio.sleep(0.01)
        storage.mkdir()
        await manager.stop(timeout=10)

    with caplog.at_level("WARNING", logger="otel_json_exporter"):
        asyncio.run(scenario())
    assert f"to {storage} failed (the directory no longer exists" in caplog.text
    assert [record["operation_name"] for record in _records(storage)] == ["step"]


def test_credential_headers_captured_by_the_fastapi_instrumentation_are_dropped(
    tmp_path: Path,
) -> None:
    """Every request header captured (``http_capture_headers_server_request=[".*"]``):
    X-JWT, X-Auth and X-OTP values reached the disk; the rule now blocks those keys."""
    exporter = OperationSpanExporter(tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app = header_capturing_app(provider)
    secrets = {"x-jwt": "eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "x-auth": "k-8731", "x-otp": "902114"}

    async def drive() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/me", headers={**secrets, "x-request-id": "r-1"})
            return response.status_code

    assert asyncio.run(drive()) == 200
    provider.shutdown()
    raw = "".join(path.read_text() for path in (tmp_path / "spans").glob("metrics_*.json"))
    (record,) = [r for r in _records(tmp_path / "spans") if r["operation_type"] == "api_request"]
    assert record["metadata"]["http.request.header.x_request_id"] == ["r-1"]  # captured
    for header, value in secrets.items():
        assert value not in raw, header
