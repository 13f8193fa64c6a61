"""Addresses in text that reached the service misread: UTF-8 decoded as latin-1 or cp1252,
and characters that print as nothing inside an address's domain or local part.

Starlette decodes request headers as latin-1 (as the ASGI specification asks, and as
WSGI's environ holds every header and the path), so ``zoë@example.com`` sent in UTF-8
reaches the application as ``zoÃ«@example.com``. Its ``«`` (U+00AB, the byte 0xAB read as
latin-1) is no word character, and before the fix the address was found from that
character on only, or not at all: ``josÃ©@example.com`` was written whole. Each test
below failed on the code before it (cc2496f), in 38 of its cases, but the ``test_held_*``,
which hold what must not change. The cases that passed then hold earlier fixes: a
latin-1 U+2019 is C1 controls, which already counted, and a cut inside a misread domain
leaves a local part that was found. All personal data here is fake.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_json_exporter import MetricsManager, OperationSpanExporter, PiiPolicy
from otel_json_exporter.pii import mask_cut_end

# (address, the part that must never reach the disk whole): local parts and domains
# holding a character that UTF-8 writes in two to four bytes.
ADDRESSES = [
    "josé@example.com",
    "zoë@example.com",
    "françois.tremblay@exemple.ca",
    "jean@exémple.ca",
    "mary.o\u2019brien@example.ie",
    "שלום@example.co.il",
    "дмитрий@пример.рф",
    "田中@例え.jp",
]


def _misread(address: str, codec: str) -> str:
    return address.encode("utf-8").decode(codec, "replace")


MISREAD = [
    pytest.param(_misread(address, codec), id=f"{codec}-{index}")
    for index, address in enumerate(ADDRESSES)
    for codec in ("latin-1", "cp1252")
] + [
    # Misread twice (a misread text stored, then misread again).
    pytest.param(_misread(_misread("zoë@example.com", "latin-1"), "latin-1"), id="latin-1-twice"),
    pytest.param(_misread(_misread("zoë@example.com", "cp1252"), "cp1252"), id="cp1252-twice"),
]


def _local_part(text: str) -> str:
    return text.rsplit("@", 1)[0]


def _batch_text(directory: Path) -> str:
    """Every record on disk, JSON escapes decoded, so that a value is found however written."""
    return "\n".join(
        json.dumps(record, ensure_ascii=False)
        for path in sorted(directory.glob("metrics_*.json"))
        for record in json.loads(path.read_text(encoding="utf-8"))["records"]
    )


@pytest.mark.parametrize("text", MISREAD)
def test_a_misread_address_is_masked_whole(text: str) -> None:
    policy = PiiPolicy()
    masked, count = policy.redact(f"reply to {text} today")
    assert (masked, count) == ("reply to [REDACTED] today", 1)
    assert policy.contains_pii(text)


@pytest.mark.parametrize("text", MISREAD)
def test_a_misread_address_cut_short_is_masked(text: str) -> None:
    """The SDK's length limit cuts a value anywhere: ``josÃ©@exa`` is still an address."""
    cut = text[: text.index("@") + 4]
    assert mask_cut_end(f"reply to {cut}") == ("reply to [REDACTED]", 1)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("ann@exa\x7fmple.com", id="DEL"),
        pytest.param("ann@exa\x00mple.com", id="NUL"),
        pytest.param("ann@exa\x9bmple.com", id="C1"),
        pytest.param("ann@example.c\x1bom", id="ESC-in-the-last-label"),
    ],
)
def test_a_silent_control_in_the_domain_hides_no_address(text: str) -> None:
    """Printed, ``ann@exa<DEL>mple.com`` shows ``ann@example.com``; the local part
    already took these characters, the domain did not."""
    masked, count = PiiPolicy().redact(f"from {text}.")
    assert count == 1
    assert masked == "from [REDACTED]." or "ann" not in masked


def test_an_egyptian_format_control_leaves_no_part_of_the_address() -> None:
    """U+13439 to U+1343F are Unicode 15's format characters (invisible), as U+13430 to
    U+13438 before them, which the rule already read as part of an address."""
    for code in range(0x13439, 0x13440):
        text = f"jean{chr(code)}tremblay@example.com"
        assert PiiPolicy().redact(text) == ("[REDACTED]", 1), hex(code)


async def test_record_operation_refuses_a_misread_address_and_masks_it_in_names(
    tmp_path: Path,
) -> None:
    misread = _misread("josé@example.com", "latin-1")
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        with pytest.raises(ValueError, match="'note'") as refused:
            await manager.record_operation("api_request", "x", 1.0, metadata={"note": misread})
        assert _local_part(misread) not in str(refused.value)
        await manager.record_operation(
            "api_request",
            f"GET /users/{misread}",
            1.0,
            success=False,
            error_message=f"no account for {misread}",
        )
    finally:
        await manager.stop()
    written = _batch_text(tmp_path)
    assert "GET /users/[REDACTED]" in written
    assert "no account for [REDACTED]" in written
    assert "jos" not in written
    assert "example.com" not in written


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_header_starlette_decoded_as_latin1_is_masked_in_spans(
    tmp_path: Path, writer: str
) -> None:
    """A real FastAPI app reads a UTF-8 header (as latin-1: Starlette's decoding) into its
    span, and fails quoting it; neither reaches the disk."""
    exporter = OperationSpanExporter(storage_path=tmp_path, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = FastAPI()
    seen: list[str] = []

    @app.get("/invite")
    def invite(request: Request) -> dict[str, Any]:
        contact = request.headers["x-contact"]
        seen.append(contact)
        span = trace.get_current_span()
        span.set_attribute("app.contact", contact)
        span.set_attribute("app.contacts", [contact, "none"])
        raise RuntimeError(f"cannot invite {contact}")

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)

    async def call() -> int:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            response = await client.get(
                "/invite", headers={b"x-contact": "zoë.tremblay@exemple.ca".encode()}
            )
            return response.status_code

    try:
        assert asyncio.run(call()) == 500
    finally:
        provider.shutdown()
        FastAPIInstrumentor.uninstrument_app(app)
    assert seen == [_misread("zoë.tremblay@exemple.ca", "latin-1")]  # the test's premise
    written = _batch_text(tmp_path)
    records = [json.loads(line) for line in written.splitlines()]
    server = next(record for record in records if record["operation_type"] == "api_request")
    assert server["metadata"]["app.contact"] == "[REDACTED]"
    assert server["metadata"]["app.contacts"] == ["[REDACTED]", "none"]
    assert server["error_message"] == "RuntimeError: cannot invite [REDACTED]"
    assert "tremblay" not in written
    assert "exemple" not in written


@pytest.mark.parametrize(
    "text",
    [
        "Ã©tÃ© chaud: 30 Â°C",  # misread text without an address
        "prix: 5 € (« promo »)",
        "© 2026 Boutique Zoë",
        "merci@ bientôt",  # no domain
    ],
)
def test_held_misread_text_without_an_address_is_kept(text: str) -> None:
    assert PiiPolicy().redact(text) == (text, 0)


def test_held_guillemets_around_an_address_are_kept() -> None:
    """A guillemet that follows a space or starts the text is no misread byte."""
    assert PiiPolicy().redact("écrire à «bob@example.com» ou « ann@example.org »") == (
        "écrire à «[REDACTED]» ou « [REDACTED] »",
        2,
    )
