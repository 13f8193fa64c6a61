"""Content that instrumentations copy into spans whole, and who an identity proxy says signed in.

A survey of the OpenTelemetry Python instrumentations found these keys getting past
the rule, each holding a person's own words or values (all data here is fake):

- ``gen_ai.transcription.text`` and ``gen_ai.speech.input_text``: what a person said
  to an agent, written by the OpenAI Agents instrumentation by default.
- ``redis.search.query`` and ``redis.search.xdoc_<doc>.<field>``: a Redis search and
  every field of every document it found (the Redis instrumentation, by default).
- ``graphql.param.<arg>``: a GraphQL resolver's arguments (Strawberry's extension).
- ``code.function.parameters.<name>.value`` and ``code.function.return.value``: a tool
  call's arguments and result (google-genai's instrumentation, with content capture).
- ``process.command_args`` and ``process.command_line``: a command line (Click's).
- Captured request headers from an identity proxy: ``X-Forwarded-User``,
  ``X-Auth-Request-User`` (oauth2-proxy), ``X-MS-CLIENT-PRINCIPAL-NAME`` (Azure),
  ``X-Amzn-Oidc-Data`` (AWS ALB: a JWT holding the person's address and name),
  ``X-Forwarded-Client-Cert`` (Envoy: the client certificate's subject),
  ``X-AppEngine-CityLatLong``, and Django's ``X-CSRFToken``.
- With ``CLIENT_ADDRESS_KEYS`` blocked, the client addresses other proxies pass on:
  ``X-Original-Forwarded-For``, ``X-Envoy-External-Address``, ``CloudFront-Viewer-Address``.

Each key is PII now (rules 4 and 9); their neighbours that hold no content stay.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from otel_json_exporter import CLIENT_ADDRESS_KEYS, MetricsManager, OperationSpanExporter, PiiPolicy

from ._spans import export_spans, header_capturing_app, records_in

WRITERS = ["thread", "process"]

CONTENT: dict[str, AttributeValue] = {
    "gen_ai.transcription.text": "my name is Jean Tremblay",
    "gen_ai.speech.input_text": "Hello Jean Tremblay",
    "redis.search.query": "@name:(Jean Tremblay)",
    "redis.search.xdoc_user:42.name": "Jean Tremblay",
    "redis.search.xdoc_user:42.$": '{"city": "Jean Tremblay street"}',
    "graphql.param.input": "{name: Jean Tremblay, phone: 4165550199}",
    "code.function.parameters.who.value": "Jean Tremblay",
    "code.function.return.value": '{"customer": "Jean Tremblay"}',
    "process.command_args": ("manage", "create_user", "--name", "Jean Tremblay"),
    "process.command_line": "manage create_user --name 'Jean Tremblay'",
    "gen_ai.prompt.0.content": "I am Jean Tremblay",
}
KEPT: dict[str, AttributeValue] = {
    "redis.search.index": "users",
    "redis.search.total": 1,
    "graphql.path": "customer",
    "graphql.parentType": "Query",
    "code.function.parameters.who.type": "str",
    "code.function.return.type": "dict",
    "code.function.name": "lookup_customer",
    "gen_ai.prompt.name": "support-v2",  # a template's name, not a prompt
    "process.pid": 4242,
}


@pytest.mark.parametrize("writer", WRITERS)
def test_content_is_dropped_and_its_neighbours_kept(tmp_path: Path, writer: str) -> None:
    def make(tracer: Tracer) -> None:
        tracer.start_span("work", kind=SpanKind.INTERNAL, attributes={**CONTENT, **KEPT}).end()

    (record,), redacted = export_spans(tmp_path, make, writer=writer)
    assert "Tremblay" not in json.dumps(record)
    assert CONTENT.keys().isdisjoint(record["metadata"])
    assert {key: record["metadata"][key] for key in KEPT} == KEPT
    assert redacted == len(CONTENT)


async def test_record_operation_refuses_content(tmp_path: Path) -> None:
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        for key in ("redis.search.query", "graphql.param.name", "process.command_line"):
            with pytest.raises(ValueError, match="PII") as caught:
                await manager.record_operation("job", "job", 1.0, metadata={key: "Jean Tremblay"})
            assert "Tremblay" not in str(caught.value)
    finally:
        await manager.stop()


IDENTITY_HEADERS = {
    "X-Forwarded-User": "jtremblay",
    "X-Auth-Request-User": "jtremblay",
    "Remote-User": "jtremblay",
    "X-MS-CLIENT-PRINCIPAL-NAME": "jtremblay",
    "X-MS-CLIENT-PRINCIPAL-ID": "jtremblay",
    "X-Amzn-Oidc-Identity": "jtremblay",
    # The ALB's JWT: its payload, base64, is {"name": "jtremblay"}; no "@" to see.
    "X-Amzn-Oidc-Data": "eyJhbGciOiJFUzI1NiJ9.eyJuYW1lIjoianRyZW1ibGF5In0.c2ln",
    "X-Forwarded-Client-Cert": 'Subject="CN=jtremblay,O=Example";URI=spiffe://x',
    "X-AppEngine-CityLatLong": "45.501689,-73.567256",
    "X-CSRFToken": "jtremblay-csrf",
}
PROXIED_ADDRESSES = {
    "X-Original-Forwarded-For": "203.0.113.61",
    "X-Envoy-External-Address": "203.0.113.62",
    "CloudFront-Viewer-Address": "203.0.113.63:46532",
    "X-Azure-ClientIP": "203.0.113.64",
    "X-AppEngine-User-IP": "203.0.113.65",
    "Fastly-Client-IP": "203.0.113.66",
}


def _served(directory: Path, policy: PiiPolicy, headers: dict[str, str]) -> dict[str, object]:
    """One request through a real FastAPI app that captures every request header."""
    exporter = OperationSpanExporter(storage_path=directory, pii_policy=policy)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = header_capturing_app(provider)

    async def request() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://shop.test:8000"
        ) as client:
            assert (await client.get("/me", headers=headers)).status_code == 200

    asyncio.run(request())
    provider.shutdown()
    (record,) = [r for r in records_in(directory) if r["operation_type"] == "api_request"]
    return record


def test_who_an_identity_proxy_says_signed_in_is_dropped(tmp_path: Path) -> None:
    record = _served(tmp_path, PiiPolicy(), {**IDENTITY_HEADERS, "X-Request-Id": "r-1"})
    written = json.dumps(record)
    assert "jtremblay" not in written
    assert "eyJ" not in written
    assert "45.501689" not in written
    metadata = record["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["http.request.header.x_request_id"] == ["r-1"]  # captured, and kept


def test_client_address_keys_cover_more_proxies(tmp_path: Path) -> None:
    policy = PiiPolicy(blocked_keys=CLIENT_ADDRESS_KEYS)
    record = _served(tmp_path, policy, PROXIED_ADDRESSES)
    assert "203.0.113." not in json.dumps(record)
    # Without the blocked keys, these are kept: IP addresses are not in the default rule.
    record = _served(tmp_path / "default", PiiPolicy(), PROXIED_ADDRESSES)
    assert "203.0.113.61" in json.dumps(record)
