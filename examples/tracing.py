"""Spans to batch files: a TracerProvider with ``BatchSpanProcessor(OperationSpanExporter())``.

Run it with ``python examples/tracing.py``. The exporter is built with no
arguments, as auto-instrumentation builds it, so it reads its settings from the
environment: set ``OTEL_EXPORTER_OPERATION_JSON_PATH`` to choose the directory
(default ``./metrics``). One order is processed: a server span with nested
database and HTTP client spans; the payment call fails. ``provider.shutdown()``
hands the last spans to the exporter, which writes them and stops.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_json_exporter import OperationSpanExporter


class PaymentDeclined(Exception):
    """The payment provider said no."""


def place_order(tracer: trace.Tracer, order_id: int) -> None:
    with tracer.start_as_current_span(
        "POST /api/orders",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "POST", "http.route": "/api/orders"},
    ) as request:
        with tracer.start_as_current_span(
            "SELECT stock",
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": "postgresql", "db.namespace": "shop"},
        ):
            pass
        try:
            with tracer.start_as_current_span(
                "POST",
                kind=SpanKind.CLIENT,
                attributes={
                    "http.request.method": "POST",
                    # credentials and the customer's address never reach the file
                    "url.full": "https://shop:s3cret@payments.example/charge?email=ann@mail.example",
                },
            ) as charge:
                charge.set_attribute("http.response.status_code", 402)
                raise PaymentDeclined(f"card declined for order {order_id}")
        except PaymentDeclined as exc:
            request.set_attribute("http.response.status_code", 402)
            request.record_exception(exc)
            request.set_status(Status(StatusCode.ERROR, "payment declined"))
        with tracer.start_as_current_span(
            "render receipt", attributes={"operation.type": "render"}
        ):
            pass


def main() -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "shop-api"}))
    exporter = OperationSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    place_order(trace.get_tracer(__name__), order_id=1042)

    provider.shutdown()
    stats = exporter.manager.stats()
    print(f"wrote {stats.total_persisted} span records to {exporter.manager.storage_path}")
    print(f"PII values masked or dropped: {stats.pii_redacted}")


if __name__ == "__main__":
    main()
