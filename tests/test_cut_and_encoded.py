"""Personal data that the filter missed in two forms: cut short, and percent-encoded.

Cut short: with an attribute length limit (``SpanLimits(max_attribute_length=...)``,
``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``), the SDK cuts longer string values before
``export()`` sees them. A cut inside an address (``jean.tremblay@gmai``) or a
password (``postgresql://admin:s3c``) left text that was no longer an address or
credentials to the filter, and reached the batch file.

Percent-encoded: an address with its "@" written ``%40`` outside a URL attribute
(``Not Found for url: https://api.example.com/users/jean%40example.com``, as
``requests`` words an HTTP error) was not found in free text.

Each test failed before the fix, on the leak it names. Real SDK, real files on disk.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

from otel_json_exporter import MetricsManager
from otel_json_exporter._span_rows import plain_queued_row
from otel_json_exporter.mapping import snapshot_of, span_to_row
from otel_json_exporter.pii import DEFAULT_POLICY, mask_cut_end

from ._spans import export_spans, records_in

WRITERS = ["thread", "process"]
LIMIT = 24


_records = records_in


# Spans on a provider whose attribute length limit is LIMIT, unless a test gives its own.
_export = functools.partial(export_spans, limits=SpanLimits(max_attribute_length=LIMIT))


def _with(attributes: dict[str, Any]) -> Callable[[Tracer], None]:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("op") as span:
            span.set_attributes(attributes)

    return make


# -- cut short by the SDK's attribute length limit ---------------------------------


@pytest.mark.parametrize("writer", WRITERS)
def test_an_address_cut_by_the_limit_is_masked(tmp_path: Path, writer: str) -> None:
    # The SDK keeps "contact: jean.tremblay@gm" (24 characters) of this value.
    records, redacted = _export(
        tmp_path, _with({"note": "contact: jean.tremblay@gmail.com, merci"}), writer=writer
    )
    (record,) = records
    assert record["metadata"]["note"] == "contact: [REDACTED]"
    assert "tremblay" not in json.dumps(records)
    assert redacted == 1


@pytest.mark.parametrize("writer", WRITERS)
def test_credentials_cut_by_the_limit_are_masked(tmp_path: Path, writer: str) -> None:
    # Cut to "db postgresql://admin:s3" and "redis://u:pa#ss@cache:63"
    # (the second, cut after the "@", was masked before too).
    records, _ = _export(
        tmp_path,
        _with(
            {
                "connection": "db postgresql://admin:s3cretpw@db.internal/app",
                "cache": "redis://u:pa#ss@cache:6379/0",
            }
        ),
        writer=writer,
    )
    (record,) = records
    assert record["metadata"]["connection"] == "db postgresql://REDACTED:REDACTED@"
    assert record["metadata"]["cache"].startswith("redis://REDACTED:REDACTED@")
    assert "s3" not in record["metadata"]["connection"]


def test_texts_cut_inside_sequences_and_url_attributes_are_masked(tmp_path: Path) -> None:
    records, redacted = _export(
        tmp_path,
        _with(
            {
                "recipients": ["to jean.tremblay@gmail.com", "ok"],
                "url.full": "https://s.io/?q=jean%40gmail.com",
            }
        ),
    )
    (record,) = records
    metadata = record["metadata"]
    assert metadata["recipients"] == ["to [REDACTED]", "ok"]
    assert metadata["url.full"] == "https://s.io/?q=[REDACTED]"  # cut to "...?q=jean%40g"
    assert redacted == 2


def test_an_exception_message_cut_by_the_limit_is_masked(tmp_path: Path) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("op", record_exception=False) as span:
            span.record_exception(LookupError("user jean.tremblay@gmail.com"))
            span.set_status(Status(StatusCode.ERROR))  # no description: the event's text

    records, redacted = _export(tmp_path, make)
    (record,) = records
    # The event's message was cut to "user jean.tremblay@gmail".
    assert record["error_message"] == "LookupError: user [REDACTED]"
    assert redacted == 1


def test_the_environment_variable_limit_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "20")
    records, _ = _export(
        tmp_path, _with({"note": "from anne.roy@videotron.ca"}), limits=SpanLimits(), batch=True
    )
    (record,) = records
    assert record["metadata"]["note"] == "from [REDACTED]"


def test_values_shorter_than_the_limit_and_plain_long_values_are_kept(tmp_path: Path) -> None:
    text = "a plain text that is long"  # longer than the limit: cut, nothing to mask
    records, redacted = _export(
        tmp_path,
        _with({"short": "a@b", "long": text, "port": "http://localhost:8080/health"}),
    )
    (record,) = records
    assert record["metadata"]["short"] == "a@b"  # whole, and no address
    assert record["metadata"]["long"] == text[:LIMIT]
    assert record["metadata"]["port"] == "http://localhost:8080/he"  # a port, not a password
    assert redacted == 0


def test_without_a_limit_the_same_texts_are_left_alone(tmp_path: Path) -> None:
    # With no limit nothing is cut, and "a@b" at the end of a long text is no address.
    long_text = "the package is pinned as lodash@4"
    records, _ = _export(tmp_path, _with({"note": long_text}), limits=SpanLimits())
    (record,) = records
    assert record["metadata"]["note"] == long_text


def test_a_span_at_the_limit_maps_the_same_on_both_paths() -> None:
    """The shortcut for plain spans declines a span whose texts may be cut; the full
    path masks them. A span with texts under the limit keeps the shortcut's row."""
    provider = TracerProvider(span_limits=SpanLimits(max_attribute_length=LIMIT))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("cut")
    with tracer.start_as_current_span("a") as span:
        span.set_attribute("note", "x" * 8 + " jean.tremblay@gmail.com")  # "...jean.tremblay@g"
    with tracer.start_as_current_span("b") as span:
        span.set_attribute("note", "short")
    provider.shutdown()
    cut_span, short_span = memory.get_finished_spans()
    assert plain_queued_row(snapshot_of(cut_span), DEFAULT_POLICY) is None
    assert span_to_row(cut_span)[0][6]["note"] == "x" * 8 + " [REDACTED]"
    assert plain_queued_row(snapshot_of(short_span), DEFAULT_POLICY) is not None
    assert span_to_row(short_span)[0][6]["note"] == "short"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail from ann.lee@exa", "mail from [REDACTED]"),
        ("ann.lee@", "[REDACTED]"),
        ("'ann.lee@exa", "'[REDACTED]"),
        ("q=ann%40exa", "q=[REDACTED]"),
        ("x //admin:s3c", "x //REDACTED:REDACTED@"),
        ("postgresql://admin:pa/ss", "postgresql://REDACTED:REDACTED@"),
        # Whole credentials at the end: masked whole, the user too, the host kept.
        ("https://user:pw@host", "https://REDACTED:REDACTED@host"),
        ("http://host:8080", "http://host:8080"),
        ("http://host:80/x", "http://host:80/x"),
        ("see @mention", "see @mention"),
        ("nothing here", "nothing here"),
    ],
)
def test_mask_cut_end(text: str, expected: str) -> None:
    masked, count = mask_cut_end(text)
    assert masked == expected
    assert count == (masked != text)
    assert not DEFAULT_POLICY.contains_pii(masked)


# -- percent-encoded addresses ---------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS)
def test_a_percent_encoded_address_in_an_error_message_is_masked(
    tmp_path: Path, writer: str
) -> None:
    message = "404 Client Error: Not Found for url: https://api.example.com/users/jean%40gmail.com"

    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("GET /users") as span:
            span.set_status(Status(StatusCode.ERROR, message))
            span.set_attribute("detail", "lookup of jean%40gmail.com failed")

    records, redacted = _export(tmp_path, make, writer=writer, limits=SpanLimits())
    (record,) = records
    assert record["error_message"] == (
        "404 Client Error: Not Found for url: https://api.example.com/users/[REDACTED]"
    )
    assert record["metadata"]["detail"] == "lookup of [REDACTED] failed"
    assert "jean" not in json.dumps(records)
    assert redacted == 2


def test_a_percent_sign_alone_is_not_personal_data(tmp_path: Path) -> None:
    records, redacted = _export(
        tmp_path,
        _with({"discount": "50% off", "path.encoded": "/files/a%20b", "ratio": "3%4"}),
        limits=SpanLimits(),
    )
    (record,) = records
    assert record["metadata"]["discount"] == "50% off"
    assert record["metadata"]["path.encoded"] == "/files/a%20b"
    assert record["metadata"]["ratio"] == "3%4"
    assert redacted == 0


def test_record_operation_refuses_a_percent_encoded_address(tmp_path: Path) -> None:
    async def run() -> str:
        manager = MetricsManager(tmp_path)
        await manager.start()
        try:
            await manager.record_operation("t", "n", 1.0, metadata={"ratio": "50%"})
            with pytest.raises(ValueError, match="e-mail address") as caught:
                await manager.record_operation("t", "n", 1.0, metadata={"q": "jean%40gmail.com"})
            # Texts are masked, as with a plain "@".
            await manager.record_operation("t", "lookup jean%40gmail.com", 1.0)
        finally:
            await manager.stop()
        return str(caught.value)

    message = asyncio.run(run())
    assert "jean" not in message
    first, second = _records(tmp_path)
    assert first["metadata"] == {"ratio": "50%"}
    assert second["operation_name"] == "lookup [REDACTED]"
