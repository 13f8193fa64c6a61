"""FastAPI with FastAPIInstrumentor, spans and business events in one pipeline.

The application's lifespan starts a :class:`MetricsManager`; the span exporter
is *attached* to it (``OperationSpanExporter(manager=...)``), so the request
spans that FastAPIInstrumentor makes and the business event recorded directly
with ``record_operation`` land in the same batch files. At shutdown the lifespan
calls ``tracer_provider.shutdown()`` on the event loop's thread (the exporter
flushes the manager without stopping it), then stops the manager.

Serve it with ``uvicorn --factory fastapi_app:create_app`` (from ``examples/``).
``python examples/fastapi_app.py [STORAGE_DIR]`` runs the lifespan and a few
requests in-process through httpx instead, then prints what was written.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, HTTPException
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_json_exporter import MetricsManager, OperationSpanExporter

ORDERS: dict[int, dict[str, int | float]] = {
    1: {"id": 1, "total": 42.5},
    2: {"id": 2, "total": 12.0},
}


def create_app(storage_path: str | os.PathLike[str] | None = None) -> FastAPI:
    """The application, its own tracer provider, and the manager its lifespan runs."""
    storage = storage_path or os.environ.get("OTEL_EXPORTER_OPERATION_JSON_PATH", "./metrics")
    manager = MetricsManager(storage, flush_interval_seconds=1.0)
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
    # Attached mode: constructing the exporter starts nothing; the lifespan does.
    tracer_provider.add_span_processor(BatchSpanProcessor(OperationSpanExporter(manager=manager)))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await manager.start()
        yield
        tracer_provider.shutdown()  # hands over the last spans and flushes the manager
        await manager.stop()

    app = FastAPI(lifespan=lifespan)

    @app.get("/api/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, int | float]:
        if order_id not in ORDERS:
            raise HTTPException(status_code=404, detail="no such order")
        return ORDERS[order_id]

    @app.post("/api/orders")
    async def place_order() -> dict[str, int]:
        started = time.perf_counter()
        order_id = max(ORDERS) + 1
        ORDERS[order_id] = {"id": order_id, "total": 99.0}
        # A business event, recorded directly next to the request's span.
        await manager.record_operation(
            operation_type="business_event",
            operation_name="order_placed",
            duration_ms=(time.perf_counter() - started) * 1000,
            metadata={"order_total": 99.0, "region": "ca-central"},
        )
        return {"id": order_id}

    @app.get("/api/payments/health")
    async def payments_health() -> None:
        raise RuntimeError("payment provider unreachable")

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        # Captured headers become span attributes; the PII rule drops authorization.
        http_capture_headers_server_request=["x-region", "authorization"],
    )
    return app


async def demo(storage: Path) -> None:
    app = create_app(storage)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://shop.local") as client,
    ):
        headers = {"x-region": "ca-central", "authorization": "Bearer not-for-files"}
        for request in (
            client.get("/api/orders/1?email=ann@mail.example", headers=headers),
            client.post("/api/orders", headers=headers),
            client.get("/api/orders/404", headers=headers),
            client.get("/api/payments/health", headers=headers),
        ):
            response = await request
            print(
                f"{response.request.method} {response.request.url.path}"
                f" -> {response.status_code} {response.text}"
            )

    for path in sorted(storage.glob("metrics_*.json")):
        for record in json.loads(path.read_text())["records"]:
            outcome = "ok" if record["success"] else f"failed: {record['error_message']}"
            print(f"  {record['operation_type']:<15} {record['operation_name']:<28} {outcome}")


if __name__ == "__main__":
    asyncio.run(demo(Path(sys.argv[1] if len(sys.argv) > 1 else "./metrics")))
