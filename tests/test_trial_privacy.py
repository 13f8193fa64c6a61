"""Privacy trial (Loi 25, PIPEDA, GDPR): paths by which a personal value reaches the disk,
an exception message or a log line, against what README's "The PII rule" promises.

Tests named ``test_leak_*`` failed on the code as reviewed (231709c): each asserts what
README promises, and holds its fix. Tests named ``test_held_*`` passed then too: they hold
behaviour that was checked and is right (or surprising but as documented). All PII below
is fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import baggage
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode, Tracer
from pydantic import ValidationError

from otel_json_exporter import (
    MetricsManager,
    OperationRecord,
    OperationSpanExporter,
    PiiPolicy,
    track_operation,
)
from otel_json_exporter.records import MetricsBatch
from tests._spans import ended_span

WRITERS = ["thread", "process"]


def _records(directory: Path) -> list[dict[str, Any]]:
    return [
        record
        for path in sorted(directory.glob("metrics_*.json"))
        for record in json.loads(path.read_text(encoding="utf-8"))["records"]
    ]


def _disk_text(directory: Path) -> str:
    """Every batch file's text, JSON escapes decoded (so a value is found however written)."""
    return "\n".join(json.dumps(record, ensure_ascii=False) for record in _records(directory))


def _export(
    directory: Path,
    make_spans: Callable[[Tracer], None],
    *,
    writer: str = "thread",
    limits: SpanLimits | None = None,
    policy: PiiPolicy | None = None,
    resource: Resource | None = None,
    **exporter_options: Any,
) -> list[dict[str, Any]]:
    exporter = OperationSpanExporter(
        storage_path=directory,
        writer=writer,  # type: ignore[arg-type]
        pii_policy=policy,
        **exporter_options,
    )
    provider = TracerProvider(
        resource=resource or Resource.create({"service.name": "shop"}),
        span_limits=limits or SpanLimits(),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    make_spans(provider.get_tracer("trial"))
    provider.shutdown()
    return _records(directory)


async def _record(directory: Path, **fields: Any) -> None:
    manager = MetricsManager(directory)
    await manager.start()
    try:
        await manager.record_operation(
            **{"operation_type": "email", "operation_name": "send", "duration_ms": 1.0, **fields}
        )
    finally:
        await manager.stop()


# == Leak 1: an address whose local part holds a character \w does not take =============
# _EMAIL's local part is [\w.%+'-] plus the invisible characters; a match must start
# where such a run starts. A combining mark (category Mn/Mc: a decomposed accent, the
# vowel signs of Indic and Thai scripts), U+FFFD (which the library itself puts in for a
# lone surrogate) or a backslash escape (json.dumps' default \u00e9, repr's \udce9 or
# \xe9) ends the run: the address is masked from there on, and what comes before it stays;
# with the mark right before "@" (Hindi, Thai), nothing is found at all. README: "Addresses
# may be non-ASCII (jürgen@exämple.de)"; e-mail addresses become [REDACTED]; a metadata
# value holding one is refused.

INDIC_ADDRESS = "अमित.शर्मा@example.com"  # ends in the vowel sign U+093E (Mc)
THAI_ADDRESS = "สมศักดิ์@example.co.th"  # ends in U+0E4C THANTHAKHAT (Mn)
IDN_ADDRESS = "jean@उदाहरण.भारत"  # an IDN domain and TLD (.bharat) with vowel signs
NFD_ADDRESS = "andre\u0301.dupont@exemple.fr"  # "andré" decomposed, as macOS file names are


@pytest.mark.parametrize("address", [INDIC_ADDRESS, THAI_ADDRESS, IDN_ADDRESS])
async def test_leak_non_latin_address_in_metadata_is_accepted(tmp_path: Path, address: str) -> None:
    """README: record_operation raises ValueError when a metadata string holds an address.
    Today the record is accepted and the whole address is written."""
    with pytest.raises(ValueError, match="e-mail address"):
        await _record(tmp_path / "m", metadata={"contact": address})
    assert address not in _disk_text(tmp_path / "m")


@pytest.mark.parametrize(
    ("address", "left_behind"),
    [
        (INDIC_ADDRESS, "अमित"),
        (THAI_ADDRESS, "สมศ"),
        (NFD_ADDRESS, "andr"),  # today: "send failed for andré[REDACTED]"
    ],
)
async def test_leak_address_with_combining_marks_in_error_message(
    tmp_path: Path, address: str, left_behind: str
) -> None:
    await _record(tmp_path / "m", success=False, error_message=f"send failed for {address}")
    (record,) = _records(tmp_path / "m")
    assert left_behind not in record["error_message"]
    assert "example" not in record["error_message"]
    assert "exemple" not in record["error_message"]


async def test_leak_json_escaped_accented_address_in_error_message(tmp_path: Path) -> None:
    """json.dumps escapes non-ASCII by default: the message holds
    ``"tremblay.j\\u00e9r\\u00f4me@example.com"``, and today the disk holds
    ``tremblay.j\\u00e9r\\[REDACTED]``: the surname and the first initial."""
    payload = json.dumps({"to": "tremblay.jérôme@example.com"})
    await _record(
        tmp_path / "m", success=False, error_message=f"ValueError: rejected payload {payload}"
    )
    (record,) = _records(tmp_path / "m")
    assert "tremblay" not in record["error_message"]


def test_leak_sync_track_operation_file_name_with_an_address(tmp_path: Path) -> None:
    """A file name read with surrogateescape (os.fsdecode of Latin-1 bytes) holding an
    address; FileNotFoundError's text quotes it with repr() escapes (\\udce9). README's
    track_operation section names this very case ("a lone surrogate in it, from a file
    name say"). Today the disk holds ``.../tremblay.j\\udce9r\\[REDACTED]``."""
    manager = MetricsManager(tmp_path / "m")
    manager.start_sync()
    path = os.fsdecode(b"/nonexistent/exports/tremblay.j\xe9r\xf4me@example.com.csv")
    with pytest.raises(FileNotFoundError), track_operation(manager, "task", "export"):
        open(path, encoding="utf-8")  # noqa: SIM115  # it raises
    manager.stop_sync()
    (record,) = _records(tmp_path / "m")
    assert record["success"] is False
    assert "tremblay" not in record["error_message"]


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize(
    ("value", "left_behind"),
    [
        (f"to {INDIC_ADDRESS}", "अमित"),
        (f"to {NFD_ADDRESS}", "andr"),
        # a file.path decoded with surrogateescape: the mapping turns each lone surrogate
        # into U+FFFD, which then splits the local part ("tremblay.j\ufffdr\ufffd[REDACTED]")
        ("/exports/tremblay.j\udce9r\udcf4me@example.com.csv", "tremblay"),
    ],
)
def test_leak_span_attribute_address_with_a_non_word_character(
    tmp_path: Path, writer: str, value: str, left_behind: str
) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("upload", attributes={"file.path": value}):
            pass

    (record,) = _export(tmp_path / "m", make, writer=writer)
    assert left_behind not in record["metadata"]["file.path"]


@pytest.mark.parametrize("writer", WRITERS)
def test_leak_span_error_with_a_decomposed_accent(tmp_path: Path, writer: str) -> None:
    """The SDK's own status description (``ValueError: ...``) on a failed span."""

    def make(tracer: Tracer) -> None:
        with (
            pytest.raises(ValueError, match="could not reach"),
            tracer.start_as_current_span("notify"),
        ):
            raise ValueError(f"could not reach {NFD_ADDRESS}")

    (record,) = _export(tmp_path / "m", make, writer=writer)
    assert record["error_message"].startswith("ValueError: could not reach ")
    assert "andr" not in record["error_message"]


def test_leak_cli_summarize_prints_a_non_latin_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: summarize shows operation types and names "masked by the PII rule first:
    files this package wrote hold none, but files from elsewhere might". Both names
    below come out of summarize whole or in part today."""
    from otel_json_exporter.cli import main
    from otel_json_exporter.writer import BatchWriter

    now = datetime.now(timezone.utc)
    names = [f"notify {INDIC_ADDRESS}", f"notify {NFD_ADDRESS}", "notify bob@example.com"]
    BatchWriter(tmp_path).write(
        [
            OperationRecord(
                operation_type="email", operation_name=name, duration_ms=1.0, timestamp=now
            )
            for name in names
        ]
    )
    for options in ([], ["--json"]):
        assert main(["summarize", str(tmp_path), "--by", "name", *options]) == 0
        out = capsys.readouterr().out
        assert "bob@example.com" not in out  # held: an ASCII address is masked
        assert "अमित" not in out, out
        assert "andr" not in out, out


# == Leak 2: UTF-16 / UTF-32 bytes with a byte-order mark ================================
# README: "A bytes value that holds PII when read as text (as UTF-8, as Latin-1, or with
# its NUL bytes left out, as in UTF-16) becomes [REDACTED] rather than base64". Python's
# "utf-16" and "utf-32" codecs write a BOM first; read with the NULs left out it is
# "ÿþ" glued to the parameter's name ("ÿþpassword"), which is no PII key, so the value is
# written as base64 that decodes to the password.


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
def test_leak_bom_prefixed_utf16_bytes_holding_a_password(
    tmp_path: Path, writer: str, codec: str
) -> None:
    body = "password=hunter2&user=jtremblay".encode(codec)
    # The bytes as OpenTelemetry 1.45 and later hands them over; before 1.45 the SDK
    # drops bytes that are not UTF-8, as these (the BOM) are not. See ended_span.
    exporter = OperationSpanExporter(storage_path=tmp_path / "m", writer=writer)  # type: ignore[arg-type]
    exporter.export([ended_span("login", {}, {"rpc.request.body": body})])
    exporter.shutdown()
    (record,) = _records(tmp_path / "m")
    written = record["metadata"]["rpc.request.body"]
    assert written == "[REDACTED]", base64.b64decode(written).decode(codec)


@pytest.mark.parametrize("writer", WRITERS)
def test_held_utf16_bytes_without_a_bom_are_redacted(tmp_path: Path, writer: str) -> None:
    """The case README describes (NULs left out) holds; only the BOM breaks it."""

    def make(tracer: Tracer) -> None:
        body = "password=hunter2".encode("utf-16-le")
        with tracer.start_as_current_span("login", attributes={"rpc.request.body": body}):
            pass

    (record,) = _export(tmp_path / "m", make, writer=writer)
    assert record["metadata"]["rpc.request.body"] == "[REDACTED]"


# == Leak 3: a cut through percent-encoded credentials in a URL attribute =================
# README, "Values the SDK cut": a value as long as the limit is masked at its end, "from
# //user: followed by what is left of a password"; and in url.full a parameter is PII when
# its value, percent-decoded, holds credentials (next=https%3A%2F%2Fu%3Apw%40host). When
# the SDK's limit falls between the password and its encoded "%40", neither rule sees it:
# the encoded "//admin:<password>" is written whole.

SIGNED_REDIRECT = (
    "https://app.example.com/login?next=postgresql%3A%2F%2Fadmin%3As3cr3tP4ss%40db.internal%2Fapp"
)


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("cut_after", ["s3cr3tP4ss", "s3cr3tP4ss%4", "s3cr3t"])
def test_leak_sdk_cut_inside_percent_encoded_credentials(
    tmp_path: Path, writer: str, cut_after: str
) -> None:
    limit = SIGNED_REDIRECT.index(cut_after) + len(cut_after)

    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("GET /login", attributes={"url.full": SIGNED_REDIRECT}):
            pass

    (record,) = _export(
        tmp_path / "m", make, writer=writer, limits=SpanLimits(max_attribute_length=limit)
    )
    assert "s3cr3t" not in record["metadata"]["url.full"]


@pytest.mark.parametrize("writer", WRITERS)
def test_held_uncut_percent_encoded_credentials_are_masked(tmp_path: Path, writer: str) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("GET /login", attributes={"url.full": SIGNED_REDIRECT}):
            pass

    (record,) = _export(tmp_path / "m", make, writer=writer)
    assert "s3cr3t" not in record["metadata"]["url.full"]
    assert record["metadata"]["url.full"].endswith("?next=REDACTED")


# == Leak 4: the refusal of a PII name=value quotes the text glued before the name =========
# README: record_operation raises ValueError "naming the key and never its value". For a
# value holding a PII name=value, the message names "the PII parameter", taken as the run
# of characters before "=" back to white space or ?#;&/ : everything glued to the name
# (":", ",", "|"...) is quoted, and that is part of the value.


@pytest.mark.parametrize(
    ("value", "secrets"),
    [
        ("jean.tremblay:hunter2,token=abc123", ("jean.tremblay", "hunter2")),
        ("514-555-0199|password=hunter2", ("514-555-0199",)),
    ],
)
async def test_leak_refusal_message_quotes_the_value_before_a_pii_parameter(
    tmp_path: Path, value: str, secrets: tuple[str, ...]
) -> None:
    manager = MetricsManager(tmp_path / "m")
    await manager.start()
    with pytest.raises(ValueError, match="PII parameter") as refused:
        await manager.record_operation("login", "POST /sso", 1.0, metadata={"sso_debug": value})
    record = OperationRecord(
        operation_type="login",
        operation_name="POST /sso",
        duration_ms=1.0,
        timestamp=datetime.now(timezone.utc),
        metadata={"sso_debug": value},
    )
    with pytest.raises(ValueError, match="PII parameter") as refused_sync:
        manager.submit_records([record])
    await manager.stop()
    for message in (str(refused.value), str(refused_sync.value)):
        for secret in secrets:
            assert secret not in message, message


# == Leak 5: the public models' own validation errors quote keys holding values ===========
# README: "No error repeats a value. The validation errors of the public models
# (OperationRecord, MetricsBatch) leave their input out (pydantic's hide_input_in_errors)".
# The metadata validator names the key, as repr(): an address used as a key, or a key that
# holds a PII name=value (README itself counts "password=hunter2 as a key" as PII), is
# quoted whole. Building an OperationRecord is the documented way into submit_records; a
# caller who logs the error (logger.exception) logs the value. The manager and the CLI
# mask these keys; the models do not.


def test_leak_operation_record_error_quotes_a_key_holding_a_password() -> None:
    with pytest.raises(ValidationError) as caught:
        OperationRecord(
            operation_type="login",
            operation_name="POST /login",
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
            metadata={"password=hunter2": {1}},  # a set: not JSON-ready
        )
    assert "hunter2" not in str(caught.value)


def test_leak_operation_record_error_quotes_an_address_used_as_a_key() -> None:
    with pytest.raises(ValidationError) as caught:
        OperationRecord(
            operation_type="mail",
            operation_name="send",
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
            metadata={"per_recipient": {"jean.tremblay@example.com": float("nan")}},
        )
    assert "jean.tremblay@example.com" not in str(caught.value)


def test_leak_metrics_batch_error_quotes_an_unexpected_key() -> None:
    record = {
        "operation_type": "t",
        "operation_name": "n",
        "duration_ms": 1.0,
        "timestamp": "2025-12-16T08:00:00.000000+00:00",
        "success": True,
        "error_message": None,
        "metadata": {},
        "password=hunter2": 1,
        "jean.tremblay@example.com": 2,
    }
    document = {
        "records": [record],
        "batch_timestamp": "2025-12-16T08:00:00.000000+00:00",
        "batch_id": "20251216_080000_000000",
        "total_records": 1,
    }
    with pytest.raises(ValidationError) as caught:
        MetricsBatch.model_validate_json(json.dumps(document))
    message = str(caught.value)
    assert "hunter2" not in message
    assert "jean.tremblay@example.com" not in message


# == Leak 6: README's remedy for IP addresses left the client IP on disk =================
# README said: "OpenTelemetry's HTTP spans carry the client's in client.address; block it
# with a policy". The FastAPI instrumentation writes the client's IP as net.peer.ip by
# default (the old HTTP conventions; client.address only with
# OTEL_SEMCONV_STABILITY_OPT_IN=http), and captured proxy headers carry it too. The fix:
# CLIENT_ADDRESS_KEYS, every key that carries it, which README now gives as the remedy.


@pytest.mark.parametrize("semconv", ["", "http", "http/dup"])
def test_blocking_client_address_keys_leaves_no_client_ip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, semconv: str
) -> None:
    import httpx
    from opentelemetry.instrumentation import _semconv

    from otel_json_exporter import CLIENT_ADDRESS_KEYS

    from ._spans import header_capturing_app

    # The instrumentation reads the variable once per process: set it and read it again.
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", semconv)
    monkeypatch.setattr(_semconv._OpenTelemetrySemanticConventionStability, "_initialized", False)
    exporter = OperationSpanExporter(
        storage_path=tmp_path / "m", pii_policy=PiiPolicy(blocked_keys=CLIENT_ADDRESS_KEYS)
    )
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = header_capturing_app(provider)
    proxies = {
        "X-Forwarded-For": "203.0.113.46, 10.0.0.1",
        "X-Real-IP": "203.0.113.47",
        "Forwarded": "for=203.0.113.48;proto=https",
        "True-Client-IP": "203.0.113.49",
        "CF-Connecting-IP": "203.0.113.50",
    }

    async def request() -> None:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.45", 51234))
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            assert (await client.get("/me", headers=proxies)).status_code == 200

    try:
        asyncio.run(request())
    finally:
        provider.shutdown()
        # The variable as it was, read again at the next use. (Restoring "_initialized"
        # to True kept this test's conventions for the rest of the process: a later
        # FastAPI test then saw every HTTP attribute twice, under "http/dup".)
        monkeypatch.undo()
        _semconv._OpenTelemetrySemanticConventionStability._initialized = False
    (record,) = [r for r in _records(tmp_path / "m") if r["operation_type"] == "api_request"]
    assert "203.0.113." not in json.dumps(record), record["metadata"]
    assert record["metadata"]["http.route"] == "/me"  # the record itself is kept


# == Held: what a span carries besides its own attributes never reaches the disk ==========


@pytest.mark.parametrize("writer", WRITERS)
def test_held_events_links_resource_scope_and_baggage_are_not_written(
    tmp_path: Path, writer: str, capfd: pytest.CaptureFixture[str]
) -> None:
    resource = Resource.create(
        {
            "service.name": "shop",
            "host.owner": "owner.person@example.com",
            "deployment.contact_phone": "514-555-0142",
        }
    )

    def make(tracer: Tracer) -> None:
        context = baggage.set_baggage("user.email", "baggage.person@example.com")
        with tracer.start_as_current_span("checkout", context=context) as span:
            span.add_event("login", {"user": "event.person@example.com", "ssn": "046-454-286"})
            span.add_link(span.get_span_context(), {"email": "link.person@example.com"})
            span.set_attribute("order.id", 42)

    records = _export(tmp_path / "m", make, writer=writer, resource=resource)
    text = _disk_text(tmp_path / "m")
    assert len(records) == 1
    for value in (
        "owner.person",
        "514-555-0142",
        "baggage.person",
        "event.person",
        "046-454-286",
        "link.person",
    ):
        assert value not in text
    captured = capfd.readouterr()
    for value in ("owner.person", "baggage.person", "event.person", "link.person"):
        assert value not in captured.out + captured.err


def test_held_instrumentation_scope_is_not_written(tmp_path: Path) -> None:
    exporter = OperationSpanExporter(storage_path=tmp_path / "m")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope.person@example.com", "1.0", schema_url="https://x.test")
    with tracer.start_as_current_span("op"):
        pass
    provider.shutdown()
    assert "scope.person" not in _disk_text(tmp_path / "m")


# == Held: log lines and stats name types and counts, never a value =======================


@pytest.mark.parametrize("writer", WRITERS)
def test_held_a_failing_operation_type_function_is_logged_by_type_only(
    tmp_path: Path, writer: str, caplog: pytest.LogCaptureFixture
) -> None:
    def operation_type(span: ReadableSpan) -> str:
        raise KeyError(f"no type for {(span.attributes or {}).get('who')}")

    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("op", attributes={"who": "log.person@example.com"}):
            pass
        with tracer.start_as_current_span("failed") as span:
            span.set_status(Status(StatusCode.ERROR, "refused for log.person@example.com"))

    with caplog.at_level(logging.DEBUG):
        records = _export(tmp_path / "m", make, writer=writer, operation_type=operation_type)
    assert records == []
    assert "could not become records (KeyError)" in caplog.text
    assert "log.person" not in caplog.text


async def test_held_refused_records_leave_no_value_in_stats_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manager = MetricsManager(tmp_path / "m")
    await manager.start()
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError, match="is PII") as refused:
        await manager.record_operation(
            "login", "POST /login", 1.0, metadata={"user": {"password": "hunter2"}}
        )
    await manager.stop()
    assert "hunter2" not in str(refused.value)
    assert "hunter2" not in repr(manager.stats()) + caplog.text
    assert manager.stats().total_rejected == 1


# == Held, and a pitfall README does not warn of: an allowed key is allowed everywhere =====
# README's own example allows "name" (PiiPolicy(blocked_keys={"tenant"},
# allowed_keys={"name"})) so that a metadata key "name" passes. The same policy decides
# which name=value pairs are masked in URLs, query strings, span names and error
# messages: with "name" allowed, a person's name in ?name=... and in "name=..." is written.
# Consistent with the rule ("a name=value pair whose name is a PII key"), so this test
# passes; README says nothing of this side effect of allowed_keys.


@pytest.mark.parametrize("writer", WRITERS)
def test_held_allowing_a_key_also_unmasks_it_in_urls_and_errors(
    tmp_path: Path, writer: str
) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span(
            "GET /search",
            attributes={"url.full": "https://shop.test/search?name=Jean+Tremblay&page=2"},
        ) as span:
            span.set_status(Status(StatusCode.ERROR, "no account; name=Jean.Tremblay"))

    policy = PiiPolicy(blocked_keys={"tenant"}, allowed_keys={"name"})
    (record,) = _export(tmp_path / "m", make, writer=writer, policy=policy)
    assert record["metadata"]["url.full"].endswith("?name=Jean+Tremblay&page=2")
    assert record["error_message"] == "no account; name=Jean.Tremblay"
    (default,) = _export(tmp_path / "d", make, writer=writer)
    assert "Tremblay" not in json.dumps(default)
