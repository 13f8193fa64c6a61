"""A real FastAPI app with FastAPIInstrumentor, driven through httpx, lifespan included.

The exporter is attached to the manager the app's lifespan runs, so request
spans and a business event recorded with ``record_operation`` share one
pipeline. An in-memory exporter on the same provider shows what the
instrumentation really produced, so the test can tell what was filtered out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from otel_json_exporter import MetricsManager, OperationSpanExporter
from tests.conftest import load_records

PROCESSORS: dict[str, Callable[[SpanExporter], SpanProcessor]] = {
    "simple": SimpleSpanProcessor,
    "batch": lambda exporter: BatchSpanProcessor(exporter, schedule_delay_millis=50),
}


class Item(BaseModel):
    name: str
    quantity: int


class Shop:
    """The app under test, with its manager, provider and a view of the raw spans."""

    def __init__(self, storage: Path, processor: Callable[[SpanExporter], SpanProcessor]) -> None:
        self.manager = MetricsManager(storage, flush_interval_seconds=0.05)
        self.raw_spans = InMemorySpanExporter()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": "shop"}), shutdown_on_exit=False
        )
        self.provider.add_span_processor(processor(OperationSpanExporter(manager=self.manager)))
        self.provider.add_span_processor(SimpleSpanProcessor(self.raw_spans))
        self.app = FastAPI(lifespan=self.lifespan)
        self._routes()
        FastAPIInstrumentor.instrument_app(
            self.app,
            tracer_provider=self.provider,
            http_capture_headers_server_request=["x-region", "authorization"],
        )

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        await self.manager.start()
        yield
        self.provider.shutdown()  # on the event loop's thread, before the manager stops
        await self.manager.stop()

    def _routes(self) -> None:
        manager = self.manager

        @self.app.get("/items/{item_id}")
        async def get_item(item_id: int) -> dict[str, int]:
            return {"id": item_id}

        @self.app.post("/items")
        async def add_item(item: Item) -> dict[str, str]:
            await manager.record_operation(
                "business_event", "item_added", 0.5, metadata={"quantity": item.quantity}
            )
            return {"added": item.name}

        @self.app.get("/fail")
        async def fail() -> None:
            raise ValueError("could not notify ann@mail.example")

        @self.app.get("/unavailable")
        async def unavailable() -> JSONResponse:
            return JSONResponse({"retry": True}, status_code=503)


@pytest.mark.parametrize("processor", sorted(PROCESSORS))
async def test_requests_and_business_events_end_up_on_disk(storage: Path, processor: str) -> None:
    shop = Shop(storage, PROCESSORS[processor])
    transport = httpx.ASGITransport(app=shop.app, raise_app_exceptions=False)
    headers = {"x-region": "ca-central", "authorization": "Bearer tok-123"}
    async with (
        shop.app.router.lifespan_context(shop.app),
        # A port of its own: httpx gives the ASGI scope's server no port for the default
        # one, which the ASGI instrumentation 0.48b0 writes as "shop.local:None" (0.66b2
        # leaves it out), and the PII rule reads "shop.local:None/items/7?email=ann" before
        # the "@" as a user and a password.
        httpx.AsyncClient(transport=transport, base_url="http://shop.local:8000") as client,
    ):
        assert (
            await client.get("/items/7?email=ann@mail.example&page=2", headers=headers)
        ).status_code == 200
        assert (
            await client.post("/items", json={"name": "pear", "quantity": 3})
        ).status_code == 200
        assert (await client.get("/fail", headers=headers)).status_code == 500
        assert (await client.get("/unavailable")).status_code == 503
    assert not shop.manager.is_running

    records = load_records(storage)
    by_name = {record.operation_name: record for record in records}
    assert sorted(by_name) == [
        "GET /fail",
        "GET /items/{item_id}",
        "GET /unavailable",
        "POST /items",
        "item_added",
    ]
    assert len(records) == 5

    # The ASGI per-message spans existed, and none of them became a record.
    raw_names = [span.name for span in shop.raw_spans.get_finished_spans()]
    assert any(name.endswith("http send") for name in raw_names)
    assert any(name.endswith("http receive") for name in raw_names)
    assert all("asgi.event.type" not in record.metadata for record in records)

    item = by_name["GET /items/{item_id}"]
    assert (item.operation_type, item.success, item.error_message) == ("api_request", True, None)
    assert item.metadata["http.route"] == "/items/{item_id}"
    assert item.metadata["span_kind"] == "server"
    assert item.metadata["parent_span_id"] is None
    assert item.metadata["service.name"] == "shop"
    assert item.metadata["http.request.header.x_region"] == ["ca-central"]
    assert "http.request.header.authorization" not in item.metadata
    assert item.metadata["http.url"] == "http://shop.local:8000/items/7?email=REDACTED&page=2"

    failed = by_name["GET /fail"]
    assert failed.success is False
    assert failed.error_message == "ValueError: could not notify [REDACTED]"
    unavailable = by_name["GET /unavailable"]
    assert (unavailable.success, unavailable.error_message) == (False, "HTTP 503")

    event = by_name["item_added"]
    assert (event.operation_type, event.metadata) == ("business_event", {"quantity": 3})

    raw = b"".join(path.read_bytes() for path in storage.glob("metrics_*.json"))
    assert b"ann@" not in raw
    assert b"tok-123" not in raw
    stats = shop.manager.stats()
    assert stats.total_persisted == 5
    assert stats.pii_redacted == 4  # two authorization headers, the query parameter, the address
