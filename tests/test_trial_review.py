"""A review of the user-trial fixes (3261010..0b481d9, a51ec0d): failing tests for its defects.

Real SDK, real exporter, real batch files; subprocesses where a signal is involved.
Only OS calls are replaced to inject a fault (a slow ``os.fsync``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from otel_json_exporter import MetricsManager, OperationSpanExporter

from ._spans import header_capturing_app
from .conftest import load_records


def _raw(directory: Path) -> str:
    return "".join(path.read_text() for path in sorted(directory.glob("metrics_*.json")))


def _records(directory: Path) -> list[dict[str, object]]:
    return [
        record
        for path in sorted(directory.glob("metrics_*.json"))
        for record in json.loads(path.read_text())["records"]
    ]


def _httpx_error(url: str) -> httpx.HTTPStatusError:
    """The error a FastAPI service's httpx client raises for a 4xx answer: the URL quoted."""
    response = httpx.Response(404, request=httpx.Request("GET", url))
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError("no error raised")


# -- 1. PII in a URL quoted in free text (or in a bare parameter) reaches the disk -------
# 3261010 read such a text whole as a URL and looked into each parameter's value
# percent-decoded; 0b481d9 masks as a URL only a URL that follows white space, and
# PiiPolicy.redact (and check_row) do not decode. Each secret below was masked by
# 3261010 (the differential fuzzer: 8,368 of 20,000 realistic error texts leak now).
LEAKS = [
    # httpx's raise_for_status(): "Client error '404 Not Found' for url '<url>'"
    (
        "httpx, a nested return URL holding an address",
        "https://api.example.com/login?next=%2Faccount%3Femail%3Djean.tremblay%40example.com",
        "jean.tremblay",
    ),
    (
        "httpx, a redirect_uri holding credentials",
        "https://auth.example.com/authorize?redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db.example.com%2F",
        "hunter2",
    ),
    (
        "httpx, a state holding a nested token",
        "https://auth.example.com/cb?state=%2Freset%3Ftoken%3Ds3cr3tTok",
        "s3cr3tTok",
    ),
    (
        "httpx, a search query holding an address",
        "https://mail.example.com/search?q=from%3Ajean.tremblay%40example.com",
        "jean.tremblay",
    ),
]


@pytest.mark.parametrize("writer", ["thread", "process"])
@pytest.mark.parametrize(("case", "url", "secret"), LEAKS, ids=[case for case, _, _ in LEAKS])
def test_pii_in_a_quoted_url_of_an_error_message_is_masked(
    tmp_path: Path, writer: str, case: str, url: str, secret: str
) -> None:
    storage = tmp_path / "spans"
    exporter = OperationSpanExporter(storage, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("review")
    error = _httpx_error(url)
    assert secret in str(error)
    with (
        pytest.raises(httpx.HTTPStatusError),
        tracer.start_as_current_span("GET /proxy", kind=SpanKind.SERVER),
    ):
        raise error
    provider.shutdown()
    (record,) = _records(storage)  # written, not refused: the manager's check saw nothing
    assert record["success"] is False
    assert secret not in _raw(storage), record["error_message"]


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_pii_in_an_encoded_parameter_of_free_text_is_masked(tmp_path: Path, writer: str) -> None:
    """No URL at all: 'callback failed; redirect_uri=<encoded URL with credentials>'."""
    storage = tmp_path / "spans"
    exporter = OperationSpanExporter(storage, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    text = "callback failed; redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db.example.com%2F"
    with provider.get_tracer("review").start_as_current_span("callback", attributes={"note": text}):
        pass
    provider.shutdown()
    (record,) = _records(storage)
    assert "hunter2" not in _raw(storage), record["metadata"]


# -- 4. Credential headers that still pass the new key rule ----------------------------
# a51ec0d blocks X-JWT, X-Auth and X-OTP, but not the headers that carry a JWT in
# production (Google IAP, Cloudflare Access, WSO2) or an OTP with a suffix. A JWT's
# payload is base64url JSON with the user's e-mail address in it.
_PAYLOAD = base64.urlsafe_b64encode(b'{"email":"jean.tremblay@example.com","sub":"1"}')
_JWT = "eyJhbGciOiJSUzI1NiJ9." + _PAYLOAD.decode().rstrip("=") + ".c2lnbmF0dXJl"


@pytest.mark.parametrize(
    "header",
    ["x-goog-iap-jwt-assertion", "cf-access-jwt-assertion", "x-jwt-assertion", "x-otp-code"],
)
def test_credential_headers_beyond_the_bare_words_are_dropped(tmp_path: Path, header: str) -> None:
    storage = tmp_path / "spans"
    exporter = OperationSpanExporter(storage)
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    app = header_capturing_app(provider)
    value = "902114" if "otp" in header else _JWT

    async def drive() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return (await client.get("/me", headers={header: value})).status_code

    assert asyncio.run(drive()) == 200
    provider.shutdown()
    assert value not in _raw(storage)


# -- 4b. Yes/no flags ending in auth/otp: records that were accepted are refused ---------


def test_flag_keys_ending_in_a_credential_word_are_accepted(tmp_path: Path) -> None:
    """``has_auth`` and ``is_otp`` pass (README); ``requires_auth``, ``skip_auth`` and
    ``send_otp`` are the same kind of yes/no, accepted by 3261010, refused now."""

    async def scenario() -> None:
        manager = MetricsManager(tmp_path / "m")
        await manager.start()
        try:
            await manager.record_operation(
                "api_request",
                "GET /admin",
                1.0,
                metadata={"requires_auth": True, "skip_auth": False, "send_otp": False},
            )
        finally:
            await manager.stop()

    asyncio.run(scenario())
    assert len(load_records(tmp_path / "m")) == 1


# -- 2. SIGTERM while the main thread exports: the handler deadlocks ---------------------
# The handler calls the tracer provider's force_flush() on the main thread. When the
# main thread is itself inside force_flush() (the end of a job, a lifespan shutdown), the
# BatchSpanProcessor's export lock (a threading.Lock) is held below the handler: the
# handler waits for it forever, and the process neither writes nor ends on SIGTERM.
_DEADLOCK = """
import os, signal, sys, threading, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from otel_json_exporter import MetricsManager, OperationSpanExporter

real_fsync = os.fsync

def slow_fsync(fd):  # a slow disk: the OS call takes 0.2 s
    time.sleep(0.2)
    return real_fsync(fd)

os.fsync = slow_fsync
manager = MetricsManager(sys.argv[1], flush_interval_seconds=3600, max_queue_size=10)
manager.start_sync()  # SIGTERM has its default action: the handler is installed
exporter = OperationSpanExporter(manager=manager, export_timeout_seconds=30)
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("job")
for index in range(50):
    with tracer.start_as_current_span(f"step-{index}"):
        pass
threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
provider.force_flush()  # the end of a job, on the main thread
signal.pause()
"""


def test_sigterm_during_a_main_thread_force_flush_ends_the_process(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(_DEADLOCK))
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "metrics")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        process.wait(timeout=30)  # 50 records at 10 a batch and 0.2 s a batch: about 1 s
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        written = len(load_records(tmp_path / "metrics"))
        pytest.fail(f"still running 30 s after SIGTERM (deadlocked); {written} of 50 on disk")
    assert process.returncode == -signal.SIGTERM
    assert len(load_records(tmp_path / "metrics")) == 50
