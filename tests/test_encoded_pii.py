"""PII that shows only percent-decoded, on every path (found by a red-team review).

A URL quoted in an error message or a form body holds its values percent-encoded:
``redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db%2F``,
``next=%2Freset%3Ftoken%3Ds3cr3t``, ``password%3Dhunter2``. The span path decoded
some of these; ``record_operation`` and ``track_operation`` wrote them all, and a
span kept a form body's and a query part's. Now every path masks them alike, and
the check refuses them where it refuses the plain forms (metadata values).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Response
from opentelemetry.trace import Tracer

from otel_json_exporter import MetricsManager, track_operation
from otel_json_exporter.pii import DEFAULT_POLICY

from ._spans import PATHS, export_spans, failed_operation, records_in

SECRETS = ("hunter2", "s3cr3tResetTok", "BODYTOKEN", "QUERYPW", "jean")

# (an error text, what every path writes of it)
ERROR_TEXTS = [
    (  # README's example
        "callback failed; redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db%2F",
        "callback failed; redirect_uri=REDACTED",
    ),
    (  # httpx's HTTPStatusError
        "HTTPStatusError: Client error '404 Not Found' for url "
        "'https://api.example.com/login?next=%2Freset%3Ftoken%3Ds3cr3tResetTok'\n"
        "For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/404",
        "HTTPStatusError: Client error '404 Not Found' for url "
        "'https://api.example.com/login?next=REDACTED'\n"
        "For more information check: https://developer.mozilla.org/en-US/docs/Web/HTTP/404",
    ),
    (  # a form body quoted in an error
        "token request refused: grant_type=authorization_code&redirect_uri="
        "https%3A%2F%2Fapp.example.com%2Fcb%3Faccess_token%3DBODYTOKEN",
        "token request refused: grant_type=authorization_code&redirect_uri=REDACTED",
    ),
    (  # an address encoded twice
        "no account for jean%2540example.com",
        "no account for REDACTED",
    ),
    (  # the word that holds it goes, the others stay
        "Retry 3/5 failed: body was email%3Djean%40example.com (HTTP 400)",
        "Retry 3/5 failed: body was REDACTED (HTTP 400)",
    ),
    (  # a form's "+" is a space
        "login refused: q=reset+password=hunter2",
        "login refused: q=REDACTED",
    ),
    (  # a full-width "=", encoded
        "retry with password%EF%BC%9Dhunter2",
        "retry with REDACTED",
    ),
]


@pytest.mark.parametrize(("error", "expected"), ERROR_TEXTS)
@pytest.mark.parametrize("path", PATHS)
def test_an_error_text_is_masked_alike_on_every_path(
    tmp_path: Path, path: str, error: str, expected: str
) -> None:
    record = failed_operation(tmp_path, path, error)
    assert record["error_message"] == expected
    assert not any(secret in str(record) for secret in SECRETS)


@pytest.mark.parametrize(
    "value",
    [
        "callback failed; redirect_uri=https%3A%2F%2Fadmin%3Ahunter2%40db%2F",
        "grant_type=password&password%3Dhunter2",
        "%2Freset%3Ftoken%3Ds3cr3tResetTok",
    ],
)
def test_a_metadata_value_holding_it_is_refused_as_its_plain_form_is(
    tmp_path: Path, value: str
) -> None:
    manager = MetricsManager(tmp_path)
    manager.start_sync()
    try:
        with pytest.raises(
            ValueError, match=r"metadata .note. contains PII percent-encoded"
        ) as caught:
            manager.record_operation_sync("http", "POST /login", 1.0, metadata={"note": value})
        assert not any(secret in str(caught.value) for secret in SECRETS)
    finally:
        manager.stop_sync()
    assert manager.stats().total_recorded == 0


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_span_attributes_lose_only_the_encoded_values(tmp_path: Path, writer: str) -> None:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("POST /oauth/token") as span:
            span.set_attribute(
                "http.request.body",
                "grant_type=authorization_code&redirect_uri="
                "https%3A%2F%2Fapp.example.com%2Fcb%3Faccess_token%3DBODYTOKEN",
            )
            span.set_attribute("url.full", "https://app.example.com/p?x=1&password%3DQUERYPW")
            span.set_attribute("url.path", "/reset/token%3Ds3cr3tResetTok/done")
            span.set_attribute("note", "50% off, /files/a%20b, caf%C3%A9")  # nothing to mask

    (record,), redacted = export_spans(tmp_path, make, writer=writer)
    metadata = record["metadata"]
    assert metadata["http.request.body"] == ("grant_type=authorization_code&redirect_uri=REDACTED")
    assert metadata["url.full"] == "https://app.example.com/p?x=1&REDACTED"
    assert metadata["url.path"] == "/reset/REDACTED/done"
    assert metadata["note"] == "50% off, /files/a%20b, caf%C3%A9"
    assert redacted == 3
    assert not any(secret in str(record) for secret in SECRETS)


def test_a_real_httpx_error_tracked_directly_keeps_no_token(tmp_path: Path) -> None:
    """track_operation around a real httpx call whose 404 quotes the URL it asked for."""
    app = FastAPI()

    @app.get("/login")
    def login() -> Response:
        return Response(status_code=404)

    async def call() -> None:
        manager = MetricsManager(tmp_path)
        await manager.start()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="https://api.example.com"
        ) as client:

            async def fetch() -> None:
                async with track_operation(manager, "http", "GET /login"):
                    response = await client.get("/login?next=%2Freset%3Ftoken%3Ds3cr3tResetTok")
                    response.raise_for_status()

            with pytest.raises(httpx.HTTPStatusError):
                await fetch()
        await manager.stop()

    asyncio.run(call())
    (record,) = records_in(tmp_path)
    assert "s3cr3tResetTok" not in str(record)
    assert record["error_message"].startswith(
        "HTTPStatusError: Client error '404 Not Found' for url "
        "'https://api.example.com/login?next=REDACTED'"
    )


def test_text_whose_percent_signs_hide_nothing_is_kept() -> None:
    for text in ("50% off", "/files/a%20b", "progress 100%", "q=caf%C3%A9", "%%", "%zz"):
        assert not DEFAULT_POLICY.contains_pii(text)
        assert DEFAULT_POLICY.mask_free_text(text) == (text, 0)


# == A review of the above ===========================================================


@pytest.mark.parametrize(
    "value",
    [
        "password%3Dhunter2".encode("utf-16-le").decode(),  # UTF-16 read as UTF-8: NULs
        "retry with password%EF%BC%9Dhunter2",  # a full-width "=", encoded
        "q=reset+password=hunter2",  # a form's "+" is a space
    ],
)
def test_pii_behind_a_decoding_and_a_folding_is_refused_and_masked(value: str) -> None:
    with pytest.raises(ValueError, match="metadata 'note' contains") as caught:
        DEFAULT_POLICY.check_metadata({"note": value})
    assert "hunter2" not in str(caught.value)
    masked, count = DEFAULT_POLICY.mask_free_text(value)
    assert count >= 1
    assert "hunter2" not in masked.replace("\x00", "")


def test_a_refused_key_holding_encoded_pii_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    manager = MetricsManager(tmp_path)
    manager.start_sync()
    try:
        for key in ("token%3Ds3cr3tResetTok", "next%3D%2Freset%3Ftoken%3Ds3cr3tResetTok"):
            with pytest.raises(ValueError, match="is PII and not allowed") as caught:
                manager.record_operation_sync("http", "GET /", 1.0, metadata={key: 1})
            assert "s3cr3t" not in str(caught.value)
    finally:
        manager.stop_sync()


def test_finding_urls_in_a_long_text_is_linear() -> None:
    """A "/" after "," started a scan to the next white space, and each later start in
    the same run scanned it again: 80,000 characters took 3.5 s."""
    done = threading.Event()

    def mask() -> None:
        for text in (
            ",/a" * 100_000 + " token=x?",
            "a://" * 100_000 + " =?",
            "(/" * 150_000 + "=#",
        ):
            DEFAULT_POLICY.mask_free_text(text)
        done.set()

    threading.Thread(target=mask, daemon=True).start()
    assert done.wait(60)  # a hang guard, not a timing
