"""A FastAPI application with no OpenTelemetry set-up at all, for auto-instrumentation.

Run it under ``opentelemetry-instrument`` and the entry point does the rest::

    OTEL_SERVICE_NAME=inventory \\
    OTEL_TRACES_EXPORTER=operation_json \\
    OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none \\
    OTEL_EXPORTER_OPERATION_JSON_PATH=./metrics \\
    opentelemetry-instrument python examples/auto_instrumented_app.py

``opentelemetry-instrument`` instruments FastAPI before this module imports it,
builds ``OperationSpanExporter()`` from the ``operation_json`` entry point, and
shuts the tracer provider down at interpreter exit, which writes the last spans.
The application only uses the OpenTelemetry *API* for one span of its own.
Instead of starting a server, it sends a few requests to itself in-process.
"""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from opentelemetry import trace

app = FastAPI()
tracer = trace.get_tracer(__name__)
STOCK = {"apple": 12, "pear": 0}


@app.get("/stock/{item}")
async def stock(item: str) -> dict[str, int]:
    with tracer.start_as_current_span("count stock", attributes={"operation.type": "lookup"}):
        return {item: STOCK.get(item, 0)}


async def main() -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://inventory.local") as client:
        for item in ("apple", "pear", "plum"):
            response = await client.get(f"/stock/{item}")
            print(f"GET /stock/{item} -> {response.status_code} {response.json()}")


if __name__ == "__main__":
    asyncio.run(main())
