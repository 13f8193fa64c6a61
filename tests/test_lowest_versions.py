"""Defects found on the lowest versions pyproject.toml declares (opentelemetry-api and
-sdk 1.27, pydantic 2.7), which ``make test-lowest`` runs the whole suite on.

Each test here failed on the code before its fix: on those versions, and on the newest.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from opentelemetry.trace import Tracer

from otel_json_exporter import MetricsManager
from otel_json_exporter.cli import main
from otel_json_exporter.records import MAX_INTEGER_DIGITS

from ._spans import export_spans
from .conftest import load_records

WRITERS = ("thread", "process")

# -- 1. Integers whose JSON pydantic's reader refuses --------------------------------------
# pydantic-core's JSON reader before 2.50 (pydantic 2.7 to 2.13, at least) counts a minus
# sign among the 4,300 characters it takes of an integer: a file holding -(10**4300 - 1)
# could not be read back by MetricsBatch.model_validate_json, nor by the command line's
# validate and summarize ("Invalid JSON: number out of range"), on the versions that wrote
# it. A negative integer may now have 4,299 digits: its JSON is at most 4,300 characters.

LONGEST_NEGATIVE = -(10 ** (MAX_INTEGER_DIGITS - 1) - 1)  # "-" and 4,299 nines
TOO_LONG_NEGATIVE = -(10**MAX_INTEGER_DIGITS - 1)  # "-" and 4,300 nines
LONGEST = 10**MAX_INTEGER_DIGITS - 1  # 4,300 nines


def test_a_negative_integer_of_4300_digits_is_refused(tmp_path: Path) -> None:
    manager = MetricsManager(tmp_path, flush_interval_seconds=3600)
    manager.start_sync()
    try:
        with pytest.raises(ValueError, match="longer than 4300 characters") as caught:
            manager.record_operation_sync("job", "step", 1.0, metadata={"n": TOO_LONG_NEGATIVE})
        assert "9999" not in str(caught.value)
    finally:
        manager.stop_sync()
    assert load_records(tmp_path) == []


def test_the_longest_integers_accepted_read_back(tmp_path: Path) -> None:
    """What is accepted, pydantic reads back on every version: the files and the CLI."""
    manager = MetricsManager(tmp_path, flush_interval_seconds=3600)
    manager.start_sync()
    try:
        manager.record_operation_sync(
            "job", "step", 1.0, metadata={"low": LONGEST_NEGATIVE, "high": LONGEST}
        )
    finally:
        manager.stop_sync()
    (record,) = load_records(tmp_path)  # MetricsBatch.model_validate_json
    assert record.metadata == {"low": LONGEST_NEGATIVE, "high": LONGEST}
    assert main(["validate", str(tmp_path)]) == 0
    assert main(["summarize", str(tmp_path)]) == 0


@pytest.mark.parametrize("writer", WRITERS)
def test_a_span_attribute_negative_integer_of_4300_digits_is_dropped(
    tmp_path: Path, writer: str
) -> None:
    def make(tracer: Tracer) -> None:
        attributes = {"low": TOO_LONG_NEGATIVE, "ok": LONGEST_NEGATIVE, "region": "ca"}
        with tracer.start_as_current_span("job", attributes=attributes):
            pass

    records, redacted = export_spans(tmp_path, make, writer=writer)
    assert redacted == 1  # the attribute dropped is counted
    (record,) = records
    assert "low" not in record["metadata"]
    assert record["metadata"]["ok"] == LONGEST_NEGATIVE
    assert [r.metadata["ok"] for r in load_records(tmp_path)] == [LONGEST_NEGATIVE]
    assert main(["validate", str(tmp_path)]) == 0


# -- 2. Text in UTF-16 or UTF-32, as the API before 1.45 hands bytes over -----------------
# OpenTelemetry's API before 1.45 decodes a bytes span attribute as UTF-8 (and drops it
# when that fails): ASCII text in UTF-16 or UTF-32 without a byte-order mark decodes, with
# a NUL beside each character, and reached the exporter as a str. Only bytes were read
# with their NULs left out, so "password=hunter2" and addresses in such text were written
# whole. The text is given here as that str, which every SDK version keeps as it is.

SECRETS = {
    "rpc.request.body": "password=hunter2&user=jtremblay",
    "message": "reply to bob@example.com",
    "url.full": "https://shop.example/login?password=hunter2",
    "note": "https://jt:hunter2@db.example/app",
}


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_text_with_nuls_between_its_characters_is_masked(
    tmp_path: Path, writer: str, codec: str
) -> None:
    held = {key: text.encode(codec).decode("utf-8") for key, text in SECRETS.items()}

    def make(tracer: Tracer) -> None:
        attributes = {**held, "payload": "plain\x00text"}
        with tracer.start_as_current_span(held["message"], attributes=attributes):
            pass

    (record,), redacted = export_spans(tmp_path, make, writer=writer)
    for key in SECRETS:
        assert record["metadata"][key] == "[REDACTED]", key
    assert record["metadata"]["payload"] == "plain\x00text"  # no PII: kept
    assert record["operation_name"] == "[REDACTED]"
    assert redacted == len(SECRETS) + 1
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("metrics_*.json"))
    readable = raw.replace(b"\\u0000", b"")
    assert b"hunter2" not in readable
    assert b"bob@" not in readable


@pytest.mark.parametrize("writer", WRITERS)
def test_utf16_bytes_attribute_is_masked_whatever_the_api_makes_of_it(
    tmp_path: Path, writer: str
) -> None:
    """Bytes through the SDK: before 1.45 they arrive decoded, from 1.45 on as bytes."""

    def make(tracer: Tracer) -> None:
        body = "password=hunter2".encode("utf-16-le")
        with tracer.start_as_current_span("login", attributes={"rpc.request.body": body}):
            pass

    (record,), redacted = export_spans(tmp_path, make, writer=writer)
    assert record["metadata"]["rpc.request.body"] == "[REDACTED]"
    assert redacted == 1


# The same text through record_operation, and as a key: the rule's folded forms leave
# NULs out wherever they leave invisible characters out (found after the span fix above:
# the direct path wrote the UTF-16 "password=hunter2" whole, and a NUL inside a key hid it).


async def test_text_with_nuls_is_refused_or_masked_by_record_operation(tmp_path: Path) -> None:
    secret = "password=hunter2".encode("utf-16-le").decode("utf-8")
    address = "reply to bob@example.com".encode("utf-32-be").decode("utf-8")
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        for value in (secret, address, {"nested": [address]}):
            with pytest.raises(ValueError, match="'note'"):
                await manager.record_operation("api_request", "x", 1.0, metadata={"note": value})
        with pytest.raises(ValueError, match="PII"):
            await manager.record_operation("api_request", "x", 1.0, metadata={"pass\x00word": 1})
        await manager.record_operation(
            "api_request", address, 1.0, success=False, error_message=f"failed: {secret}"
        )
    finally:
        await manager.stop()
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("metrics_*.json"))
    readable = raw.replace(b"\\u0000", b"")
    assert b"hunter2" not in readable
    assert b"bob@" not in readable
    assert b"REDACTED" in readable
