"""Failing tests from a second user trial (sync apps, DB spans, operations).

Real SDK, real manager, real batch files, real subprocesses; nothing mocked.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_json_exporter import MetricsManager, OperationRecord, OperationSpanExporter
from otel_json_exporter.writer import BatchWriter

from ._namespaces import needs_unshare, start_in_another_pid_namespace

PASSWORD = "Hunter2Pass!"


def _disk_text(directory: Path) -> str:
    return "".join(p.read_text() for p in sorted(directory.glob("metrics_*.json")))


def _records(directory: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("metrics_*.json")):
        out.extend(json.loads(path.read_text())["records"])
    return out


# -- 1. submit_records (the only API a sync app has) refuses what record_operation masks


def test_submit_records_masks_an_address_in_error_message_like_record_operation(
    tmp_path: Path,
) -> None:
    """A sync worker's error path: README says error_message is masked "so that an error
    path never raises"; OperationRecord masks a long message but not a short one, and
    submit_records then refuses the whole batch (the good record too)."""
    manager = MetricsManager(tmp_path / "m")
    manager.start_sync()
    now = datetime.now(timezone.utc)
    ok = OperationRecord(operation_type="task", operation_name="ok", duration_ms=1.0, timestamp=now)
    failed = OperationRecord(
        operation_type="task",
        operation_name="send_email",
        duration_ms=1.0,
        timestamp=now,
        success=False,
        error_message="SMTPRecipientsRefused: bob@example.com",
    )
    try:
        accepted = manager.submit_records([ok, failed])  # ValueError today
    finally:
        manager.stop_sync()
    assert accepted == 2
    records = _records(tmp_path / "m")
    assert [r["error_message"] for r in records] == [None, "SMTPRecipientsRefused: [REDACTED]"]


# -- 2. SQLAlchemy's exception text carries bound parameters: a password reaches the disk


SQLALCHEMY_MESSAGE = (
    "(psycopg2.errors.UniqueViolation) duplicate key value violates unique constraint "
    '"users_email_key"\n[SQL: INSERT INTO users (email, password) VALUES '
    "(%(email)s, %(password)s)]\n[parameters: {'email': 'jean@example.ca', "
    f"'password': '{PASSWORD}'}}]\n(Background on this error at: https://sqlalche.me/e/20/gkpj)"
)


def test_record_operation_masks_a_pii_keyed_value_in_a_repr_dict(tmp_path: Path) -> None:
    """``password=x`` is masked in error_message, ``'password': 'x'`` (str(dict), what
    SQLAlchemy prints as ``[parameters: {...}]`` for every failed statement) is not."""

    async def main() -> None:
        manager = MetricsManager(tmp_path / "m")
        await manager.start()
        await manager.record_operation(
            "database_query", "INSERT users", 1.0, success=False, error_message=SQLALCHEMY_MESSAGE
        )
        await manager.stop()

    asyncio.run(main())
    text = _disk_text(tmp_path / "m")
    assert "jean@example.ca" not in text  # masked today
    assert PASSWORD not in text  # on disk today


def test_flask_style_server_span_with_sqlalchemy_integrity_error_leaks_password(
    tmp_path: Path,
) -> None:
    """Real SQLAlchemy (named paramstyle, as psycopg2 prints it), real SDK span with the
    exception recorded as the Flask/WSGI instrumentation does; the span's error_message
    comes from the exception event."""
    import sqlalchemy  # in the test extra: missing is a failure, not a skip
    from opentelemetry.trace import SpanKind, Status, StatusCode

    exporter = OperationSpanExporter(storage_path=tmp_path / "m")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("trial2")
    engine = sqlalchemy.create_engine("sqlite://", paramstyle="named")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("create table u(email text unique, password text)"))
    with tracer.start_as_current_span(
        "GET /signup",
        kind=SpanKind.SERVER,
        attributes={"http.request.method": "GET", "http.response.status_code": 500},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            with engine.begin() as conn:
                for _ in range(2):
                    conn.execute(
                        sqlalchemy.text("insert into u values (:email, :password)"),
                        {"email": "jean@example.ca", "password": PASSWORD},
                    )
        except sqlalchemy.exc.IntegrityError as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    records = _records(tmp_path / "m")
    assert len(records) == 1
    assert records[0]["success"] is False
    assert PASSWORD not in _disk_text(tmp_path / "m")  # on disk today


# -- 3. start() in another PID namespace removes a live writer's temporary file


@needs_unshare
def test_start_in_another_pid_namespace_keeps_a_live_writers_temp_file(tmp_path: Path) -> None:
    """README: only temporary files whose process is gone, or older than 10 minutes, are
    removed. Two containers sharing a volume (a rolling restart) see different PIDs:
    the new one takes the old one's live writer for dead and deletes its file mid-write
    (observed: write_errors and 'No such file or directory' warnings in the live one)."""
    directory = tmp_path / "m"
    directory.mkdir()
    live = BatchWriter(directory)._temp_path()  # named as this live writer names it
    live.write_bytes(b"half a batch")
    start_in_another_pid_namespace(directory)
    assert live.exists()


# -- the row values database errors quote, in every form the masking knows ---------------

DATABASE_ERRORS = [
    (  # SQLAlchemy, sqlite's positional parameters
        "(sqlite3.IntegrityError) UNIQUE constraint failed: u.email\n"
        "[SQL: INSERT INTO u (name, phone, password) VALUES (?, ?, ?)]\n"
        f"[parameters: ('Jean Tremblay', '514-555-0199', '{PASSWORD}')]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
        "(sqlite3.IntegrityError) UNIQUE constraint failed: u.email\n"
        "[SQL: INSERT INTO u (name, phone, password) VALUES (?, ?, ?)]\n"
        "[parameters: REDACTED]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)",
    ),
    (  # PostgreSQL's detail of a unique violation
        'duplicate key value violates unique constraint "u_phone_key"\n'
        "DETAIL:  Key (phone)=(514-555-0199) already exists.",
        'duplicate key value violates unique constraint "u_phone_key"\n'
        "DETAIL:  Key (phone)=REDACTED already exists.",  # phone=...: a PII name=value
    ),
    (  # ... and of a foreign key
        'DETAIL:  Key (owner_name)=(Jean Tremblay) is not present in table "owners".',
        'DETAIL:  Key (owner_name)=(REDACTED) is not present in table "owners".',
    ),
    ("UNIQUE constraint failed: u.email", "UNIQUE constraint failed: u.email"),  # no values
]


@pytest.mark.parametrize(("message", "expected"), DATABASE_ERRORS)
def test_the_values_a_database_error_quotes_are_masked_on_every_path(
    tmp_path: Path, message: str, expected: str
) -> None:
    async def direct() -> None:
        manager = MetricsManager(tmp_path / "direct")
        await manager.start()
        await manager.record_operation("database_query", "INSERT u", 1.0, False, message)
        await manager.stop()

    asyncio.run(direct())
    exporter = OperationSpanExporter(storage_path=tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    from opentelemetry.trace import Status, StatusCode

    with provider.get_tracer("db").start_as_current_span("INSERT u") as span:
        span.set_status(Status(StatusCode.ERROR, message))
    provider.shutdown()
    for where in ("direct", "spans"):
        (record,) = _records(tmp_path / where)
        assert record["error_message"] == expected, where


SIGNED_URLS = [
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAZQ3DSECRET%2F20261207%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=5e1b0c0ffee5ecret&X-Amz-Expires=60",
    "https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Signature=5e1b0c0ffee5ecret",
    "https://acct.blob.core.windows.net/c/b?sv=2024-05-04&se=2026-12-08&sig=5e1b0c0ffee5ecret",
    "https://b.s3.amazonaws.com/k?AWSAccessKeyId=AKIAZQ3DSECRET&Signature=5e1b0c0ffee5ecret",
]


@pytest.mark.parametrize("url", SIGNED_URLS)
def test_a_signed_url_keeps_nothing_it_grants_access_with(tmp_path: Path, url: str) -> None:
    exporter = OperationSpanExporter(storage_path=tmp_path / "spans")
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    target = url.split(".com", 1)[1] if ".com" in url else url
    attributes = {"url.full": url, "http.target": target, "http.request.method": "GET"}
    with provider.get_tracer("client").start_as_current_span("GET", attributes=attributes):
        pass
    provider.shutdown()
    text = _disk_text(tmp_path / "spans")
    assert "5e1b0c0ffee5ecret" not in text
    assert "AKIAZQ3DSECRET" not in text
    (record,) = _records(tmp_path / "spans")
    assert "REDACTED" in record["metadata"]["url.full"]
