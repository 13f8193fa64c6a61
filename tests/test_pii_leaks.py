"""Inputs that made personal data reach a batch file, an exception message or CLI output.

A privacy review found each of these on 0936c99; every test failed there, on the leak it
names, and passes since the fix. Each section's comment describes the code as the review
found it.

Each test uses the real library: real batch files on disk, the real OpenTelemetry
SDK (TracerProvider + SimpleSpanProcessor / BatchSpanProcessor), the real CLI entry
point. Nothing is mocked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from otel_json_exporter import MetricsManager, OperationRecord, OperationSpanExporter, PiiPolicy
from otel_json_exporter.cli import main as cli_main
from otel_json_exporter.pii import DEFAULT_POLICY, mask_text

WRITERS = ["thread", "process"]


# -- helpers ----------------------------------------------------------------------


def _disk_text(directory: Path) -> str:
    """Everything every batch file in ``directory`` holds, as text."""
    return "".join(p.read_text(encoding="utf-8") for p in sorted(directory.glob("metrics_*.json")))


async def _record(directory: Path, policy: PiiPolicy | None = None, **kwargs: Any) -> str:
    """record_operation once on a fresh manager; the batch files' text."""
    manager = MetricsManager(directory, pii_policy=policy)
    await manager.start()
    try:
        await manager.record_operation(**kwargs)
    finally:
        await manager.stop()
    return _disk_text(directory)


async def _refused(
    directory: Path,
    metadata: dict[str, Any],
    *,
    match: str = "PII",
    policy: PiiPolicy | None = None,
) -> str:
    """record_operation with ``metadata`` on a fresh manager, which must refuse it; the
    error's message. Nothing may be written."""
    manager = MetricsManager(directory, pii_policy=policy)
    await manager.start()
    try:
        with pytest.raises(ValueError, match=match) as caught:
            await manager.record_operation("t", "n", 1.0, metadata=metadata)
    finally:
        await manager.stop()
    assert not list(directory.glob("metrics_*.json"))
    return str(caught.value)


def _export(
    directory: Path,
    writer: str,
    make_spans: Callable[[Tracer], None],
    *,
    batch: bool = False,
    policy: PiiPolicy | None = None,
) -> str:
    """Spans made by ``make_spans`` through a real SDK pipeline into ``directory``."""
    exporter = OperationSpanExporter(storage_path=directory, writer=writer, pii_policy=policy)  # type: ignore[arg-type]
    provider = TracerProvider(resource=Resource.create({"service.name": "shop"}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    make_spans(provider.get_tracer("review"))
    provider.shutdown()
    return _disk_text(directory)


def _span_with(attributes: dict[str, Any], name: str = "op") -> Callable[[Tracer], None]:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span(name) as span:
            for key, value in attributes.items():
                span.set_attribute(key, value)

    return make


def _write_foreign_batch(directory: Path, record: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    batch = {
        "records": [record],
        "batch_timestamp": "2025-12-16T08:00:05.123456+00:00",
        "batch_id": "20251216_080005_123456",
        "total_records": 1,
    }
    (directory / "metrics_20251216_080005_123456.json").write_text(
        json.dumps(batch, ensure_ascii=False), encoding="utf-8"
    )


def _record_json(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "operation_type": "api_request",
        "operation_name": "POST /login",
        "duration_ms": 1.0,
        "timestamp": "2025-12-16T08:00:00.000000+00:00",
        "success": True,
        "error_message": None,
        "metadata": {},
    }
    record.update(overrides)
    return record


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    def run(*argv: str) -> tuple[int, str]:
        code = cli_main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


# == Finding 1: an apostrophe (or / & = ...) in an address's local part =============
# The e-mail pattern's local part is [\w.%+-]: the match starts after the "'", so
# masking leaves the first part of the address (here the person's first name and
# initial) in the batch file. O'Brien-style addresses are common and RFC 5322-valid.

ADDRESS = "mary.o'brien@example.com"
LEFTOVER = "mary.o'"


async def test_f1_apostrophe_address_record_operation_name_and_error(tmp_path: Path) -> None:
    text = await _record(
        tmp_path,
        operation_type="email",
        operation_name=f"send to {ADDRESS}",
        duration_ms=1.0,
        success=False,
        error_message=f"mailbox {ADDRESS} is full",
    )
    assert "[REDACTED]" in text  # the masking ran...
    assert LEFTOVER not in text  # ...but the first part of the address is on disk


async def test_f1_apostrophe_address_as_key_in_value_error(tmp_path: Path) -> None:
    # The key is refused (correctly), but the ValueError names it as "mary.o'[REDACTED]".
    message = await _refused(tmp_path, {ADDRESS: 1}, match="is PII")
    assert LEFTOVER not in message


@pytest.mark.parametrize("writer", WRITERS)
def test_f1_apostrophe_address_span_attribute_and_name(tmp_path: Path, writer: str) -> None:
    text = _export(
        tmp_path, writer, _span_with({"messaging.note": f"contact {ADDRESS}"}, f"notify {ADDRESS}")
    )
    assert "[REDACTED]" in text
    assert LEFTOVER not in text


# == Finding 2: CLI quotes a name=value record key from a foreign file ==============
# safe_validation_message masks location parts with mask_text only (addresses and
# URL credentials), not PII name=value pairs; an unexpected record key such as
# "password=hunter2" is printed verbatim by `validate` and `summarize`.


@pytest.mark.parametrize("command", [["validate"], ["summarize"], ["summarize", "--json"]])
def test_f2_cli_prints_password_from_extra_record_key(
    tmp_path: Path, cli: Callable[..., tuple[int, str]], command: list[str]
) -> None:
    record = _record_json()
    record["password=hunter2"] = 1
    _write_foreign_batch(tmp_path, record)
    code, output = cli(command[0], str(tmp_path), *command[1:])
    assert code == 1  # the file is reported invalid
    assert "hunter2" not in output


def test_f2_cli_prints_token_from_extra_batch_key(
    tmp_path: Path, cli: Callable[..., tuple[int, str]]
) -> None:
    tmp_path.mkdir(exist_ok=True)
    batch = {
        "records": [],
        "batch_timestamp": "2025-12-16T08:00:05.123456+00:00",
        "batch_id": "20251216_080005_123456",
        "total_records": 0,
        "?access_token=ya29.s3cr3tTok": True,
    }
    (tmp_path / "metrics_20251216_080005_123456.json").write_text(json.dumps(batch))
    code, output = cli("validate", str(tmp_path))
    assert code == 1
    assert "s3cr3tTok" not in output


# == Finding 3: a PII name=value that shows only in NFKC form, as a metadata key ====
# The key is (correctly) refused, but describe_key redacts name=value only when an
# ASCII "=" is present, so a full-width/small/superscript equals sign puts the value
# verbatim into the ValueError (record_operation, submit_records) and into CLI output.

FOLDED_KEYS = ["password\uff1dhunter2", "password\ufe66hunter2", "password\u207chunter2"]


@pytest.mark.parametrize("key", FOLDED_KEYS)
async def test_f3_fullwidth_equals_key_value_in_record_operation_error(
    tmp_path: Path, key: str
) -> None:
    message = await _refused(tmp_path, {key: 1}, match="is PII")
    assert "hunter2" not in message


async def test_f3_fullwidth_equals_key_value_in_pydantic_path_error(tmp_path: Path) -> None:
    # Same key, refused by validation first (a set value): the pydantic path.
    message = await _refused(tmp_path, {FOLDED_KEYS[0]: {1, 2}}, match="set is not allowed")
    assert "hunter2" not in message


async def test_f3_fullwidth_equals_key_value_in_submit_records_error(tmp_path: Path) -> None:
    manager = MetricsManager(tmp_path)
    await manager.start()
    record = OperationRecord.model_construct(
        operation_type="t",
        operation_name="n",
        duration_ms=1.0,
        timestamp=datetime.now(timezone.utc),
        success=True,
        error_message=None,
        metadata={FOLDED_KEYS[0]: 1},
    )
    try:
        with pytest.raises(ValueError, match="PII") as caught:
            manager.submit_records([record])
    finally:
        await manager.stop()
    assert "hunter2" not in str(caught.value)


def test_f3_fullwidth_equals_key_value_in_cli_validate(
    tmp_path: Path, cli: Callable[..., tuple[int, str]]
) -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    _write_foreign_batch(tmp_path, _record_json(metadata={FOLDED_KEYS[0]: deep}))
    code, output = cli("validate", str(tmp_path))
    assert code == 1
    assert "hunter2" not in output


# == Finding 4: the public OperationRecord model echoes its input in errors =========
# OperationRecord (built by callers for submit_records) has no hide_input_in_errors:
# pydantic's ValidationError str() quotes the whole metadata dict (or the field),
# PII included, whenever any value is invalid.


def test_f4_operation_record_validation_error_quotes_metadata() -> None:
    with pytest.raises(ValidationError) as caught:
        OperationRecord(
            operation_type="login",
            operation_name="POST /login",
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
            metadata={"password": "hunter2", "attempts": {1, 2}},
        )
    assert "hunter2" not in str(caught.value)


def test_f4_operation_record_validation_error_quotes_field() -> None:
    with pytest.raises(ValidationError) as caught:
        OperationRecord(
            operation_type="email",
            operation_name=b"bob@example.com",  # type: ignore[arg-type]
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
        )
    assert "bob@example.com" not in str(caught.value)


# == Finding 5: password keys the key rule does not recognise =======================
# Rule (b) only looks at the LAST word ("_password") and nothing splits a letter from
# a digit: Django's UserCreationForm / SetPasswordForm fields (password1, password2,
# new_password1, new_password2) and Rails/Laravel/Devise's password_confirmation are
# not PII keys, so plain-text passwords are written - in record_operation metadata,
# span attributes (both writers) and URL query parameters.

PASSWORD_KEYS = [
    "password1",
    "password2",
    "new_password1",
    "new_password2",
    "password_confirmation",
    "passwordConfirmation",
    "user[password_confirmation]",
]


@pytest.mark.parametrize("key", PASSWORD_KEYS)
async def test_f5_password_variant_key_record_operation(tmp_path: Path, key: str) -> None:
    await _refused(tmp_path, {key: "hunter2"})


@pytest.mark.parametrize("writer", WRITERS)
def test_f5_password_variant_span_attributes_and_query(tmp_path: Path, writer: str) -> None:
    text = _export(
        tmp_path,
        writer,
        _span_with(
            {
                "http.request.body.password2": "hunter2",
                "url.query": "user%5Bemail%5D=x&user%5Bpassword_confirmation%5D=hunter3",
                "url.full": "https://shop.example/signup?new_password1=hunter4",
            }
        ),
        batch=True,
    )
    assert "hunter2" not in text
    assert "hunter3" not in text
    assert "hunter4" not in text


# == Finding 6: other key-rule gaps for person names and identifiers ================
# The OpenID Connect standard claims given_name / family_name / middle_name (OIDC
# Core 5.1) are not PII ("name" is PII only after user/enduser/customer/...), nor are
# plural keys (user_ids, usernames, passwords, api_keys, session_ids): realistic
# metadata such as {"user_ids": [4711, 4712]} is written as is.

OTHER_KEYS = [
    ("given_name", "Mary"),
    ("family_name", "O Brien"),
    ("middle_name", "Ann"),
    ("user_ids", [4711, 4712]),
    ("usernames", ["mary.obrien"]),
    ("passwords", ["hunter2"]),
    ("api_keys", ["sk_live_abc"]),
    ("session_ids", ["abc123"]),
]


@pytest.mark.parametrize(("key", "value"), OTHER_KEYS)
async def test_f6_name_claims_and_plural_keys_record_operation(
    tmp_path: Path, key: str, value: Any
) -> None:
    await _refused(tmp_path, {key: value})


@pytest.mark.parametrize("writer", WRITERS)
def test_f6_oidc_claims_span_attributes(tmp_path: Path, writer: str) -> None:
    text = _export(
        tmp_path,
        writer,
        _span_with({"auth.claims.given_name": "Mary", "auth.claims.family_name": "Obrien"}),
    )
    assert "Mary" not in text
    assert "Obrien" not in text


# == Finding 7: Turkish dotted / dotless I defeats key normalisation ================
# casefold() makes U+0130 (capital I with a dot) "i" + U+0307 (a combining dot), which
# the splitter treated as a separator ("USER_<U+0130>D" -> "user_i_d"); U+0131 (dotless
# i) was never folded to "i". Keys upper- or lower-cased under a Turkish locale
# (Java/.NET tr-TR) therefore passed: user id, session id, e-mail and client id so written.

TURKISH_KEYS = [
    "USER_\u0130D",
    "SESS\u0130ON_\u0130D",
    "CL\u0130ENT_\u0130D",
    "user_\u0131d",
    "sess\u0131on_\u0131d",
    "EMA\u0130L",
    "ema\u0131l",
]


@pytest.mark.parametrize("key", TURKISH_KEYS)
async def test_f7_turkish_i_key_record_operation(tmp_path: Path, key: str) -> None:
    await _refused(tmp_path, {key: "4711"})


@pytest.mark.parametrize("writer", WRITERS)
def test_f7_turkish_i_key_span_attribute(tmp_path: Path, writer: str) -> None:
    text = _export(
        tmp_path, writer, _span_with({"enduser.\u0130D": "cust-4711", "USER_\u0130D": "u-4712"})
    )
    assert "cust-4711" not in text
    assert "u-4712" not in text


# == Finding 8: ideographic full stop as the domain separator =======================
# IDNA (UTS #46) maps U+3002 and U+FF61 to "." and Japanese/Chinese IME input produces
# them; NFKC keeps U+3002 (and maps U+FF61 to U+3002), so "tanaka@example。co。jp" is
# not an address to the rule: accepted in metadata, written unmasked from spans.

IME_ADDRESS = "tanaka@example\u3002co\u3002jp"


async def test_f8_ideographic_full_stop_address_in_metadata(tmp_path: Path) -> None:
    await _refused(tmp_path, {"contact": IME_ADDRESS})


@pytest.mark.parametrize("writer", WRITERS)
def test_f8_ideographic_full_stop_address_in_span(tmp_path: Path, writer: str) -> None:
    text = _export(tmp_path, writer, _span_with({"note": f"reply to {IME_ADDRESS}"}))
    assert "tanaka" not in text


# == Finding 9: custom blocked_keys match only the whole key ========================
# README: keys in French "pass unless you block them with a policy". But a blocked key
# is compared only as the whole normalised key - no suffix or word rule as for the
# built-in words - so blocking "mot_de_passe" leaves "nouveau_mot_de_passe",
# "user.mot_de_passe" and ?confirmation_mot_de_passe=... unprotected.

FRENCH = PiiPolicy(blocked_keys={"mot_de_passe", "courriel"})


@pytest.mark.parametrize("key", ["nouveau_mot_de_passe", "user.mot_de_passe", "ancienMotDePasse"])
async def test_f9_blocked_key_compound_record_operation(tmp_path: Path, key: str) -> None:
    await _refused(tmp_path, {key: "hunter2"}, policy=FRENCH)


@pytest.mark.parametrize("writer", WRITERS)
def test_f9_blocked_key_compound_span(tmp_path: Path, writer: str) -> None:
    text = _export(
        tmp_path,
        writer,
        _span_with(
            {
                "form.nouveau_mot_de_passe": "hunter2",
                "url.full": "https://x.example/profil?confirmation_mot_de_passe=hunter3",
            }
        ),
        policy=FRENCH,
    )
    assert "hunter2" not in text
    assert "hunter3" not in text


# == Finding 10 (borderline, arguably the stated "a=password=x" limit) ==============
# Comma-separated pairs: in "user=alice,password=hunter2" the first pair's value runs
# over the comma, so the password pair is never seen - common in log lines,
# ADO/JDBC-style strings and Kotlin/Java toString() output.


async def test_f10_comma_separated_pairs_in_metadata_and_error(tmp_path: Path) -> None:
    text = await _record(
        tmp_path,
        operation_type="db",
        operation_name="connect",
        duration_ms=1.0,
        success=False,
        error_message="login failed: host=db1,user=sa,password=hunter2",
    )
    assert "hunter2" not in text


# == Finding 11 (spec scope): phone / SSN / card-number keys are not PII ===========
# Phone numbers, national numbers, payment cards and birth dates are personal data under
# every law the README names; neither pii_keys.json nor the rule covered their keys.
# (IP addresses stay out of the rule: OpenTelemetry's client.address is one.)


@pytest.mark.parametrize(
    ("key", "value"),
    [("phone", "+1 555 123 4567"), ("ssn", "123-45-6789"), ("credit_card", "4111111111111111")],
)
async def test_f11_common_identifier_keys_written(tmp_path: Path, key: str, value: str) -> None:
    await _refused(tmp_path, {key: value})
    assert value not in _disk_text(tmp_path)


# == A second review, of the fixes above =============================================
# The tag copy of "=" (U+E003D), which the rule reads as "=": the key was refused, but
# its value was repeated in the error.


async def test_tag_equals_key_value_not_in_error(tmp_path: Path) -> None:
    key = "password\U000e003dhunter2"
    assert DEFAULT_POLICY.is_pii_key(key)
    message = await _refused(tmp_path, {key: 1})
    assert "hunter2" not in message


# The first fix's wider local part took "*" (and "!$^`|~") for address characters, and
# read every ideographic full stop as a dot: these were refused, and were not before.


@pytest.mark.parametrize(
    "text",
    [
        "*@example.com",  # a wildcard sender pattern
        "allow *@example.com only",
        # an @mention, then a full stop ending the sentence
        "\u30d5\u30a9\u30ed\u30fc\u306f@tanaka\u3002\u3042\u308a\u304c\u3068\u3046",
    ],
)
def test_not_taken_for_an_address(text: str) -> None:
    PiiPolicy().check_metadata({"note": text})


def test_masking_keeps_the_text_around_an_address() -> None:
    assert mask_text("ERROR|bob@x.io")[0] == "ERROR|[REDACTED]"
    assert mask_text("{'to': 'bob@example.com'}")[0] == "{'to': '[REDACTED]'}"
    assert mask_text("to mary.o'brien@example.com")[0] == "to [REDACTED]"


# Keys the wider key rule caught that name no person: a font's family, yes-or-no flags,
# counts. ("names" alone stays PII: a list of names.)


@pytest.mark.parametrize(
    "key",
    [
        "font_family_name",
        "os_family_name",
        "instance_family_name",
        "is_phone",
        "has_phone",
        "num_cookies",
        "num_secrets",
        "num_credit_cards",
        "pending_authorizations",
        # Beside the credential words (a user's trial, below): flags and methods.
        "oauth",
        "oauth_scope",
        "author",
        "authority",
        "auth",
        "auth_method",
        "jwt_algorithm",
        "otp_length",
        "is_otp",
        "has_auth",
        "requires_auth",
        "skip_auth",
        "use_auth",
        "send_otp",
        "is_jwt",
        # Whole words only (a review of the rule): flags, counts, descriptions, hashes.
        "uses_jwt",
        "user_jwt",
        "jwts",
        "requires_basic_auth",
        "valid_signature",
        "signatures",
        "method_signature",
        "kill_sig",
        "schema_sig",
    ],
)
def test_key_is_not_pii(key: str) -> None:
    assert not PiiPolicy().is_pii_key(key)


# A new user's trial captured every request header: X-JWT, X-Auth and X-OTP reached the
# disk; its review, the headers that carry a JWT in production (Google IAP, Cloudflare
# Access, WSO2) and OTP or OAuth codes. Exact, or as whole-word endings.


@pytest.mark.parametrize(
    "key",
    [
        "jwt",
        "otp",
        "otp2",
        "totp",
        "x-auth",
        "X-JWT",
        "x_otp",
        "basic_auth",
        "http.request.header.x-auth",
        "http.request.header.x_jwt",
        "x-goog-iap-jwt-assertion",
        "cf-access-jwt-assertion",
        "x-jwt-assertion",
        "x-otp-code",
        "otpCode",
        "auth_code",
        "authorization_code",
    ],
)
def test_credential_words_are_pii(key: str) -> None:
    assert PiiPolicy().is_pii_key(key)


# -- an invisible character inside a local part (README review, c02eaca) ---------------
# The local part stopped at the invisible character: "mail alice<U+200B>[REDACTED]".


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail alice\u200b.smith@example.com", "mail [REDACTED]"),
        ("to jean\u00adpierre.dupont@example.com failed", "to [REDACTED] failed"),
        ("x \U000e0041bob@example.com", "x [REDACTED]"),
        ("a\u2060b@example.com and c@example.org", "[REDACTED] and [REDACTED]"),
    ],
)
def test_an_invisible_character_inside_a_local_part_is_masked_with_it(
    text: str, expected: str
) -> None:
    assert mask_text(text)[0] == expected


async def test_an_invisible_character_inside_an_address_in_names_and_errors(
    tmp_path: Path,
) -> None:
    written = await _record(
        tmp_path / "ok",
        operation_type="t",
        operation_name="mail alice\u200b.smith@example.com",
        duration_ms=1.0,
        success=False,
        error_message="to jean\u00adpierre.dupont@example.com failed",
    )
    assert "alice" not in written
    assert "jean" not in written
    message = await _refused(tmp_path / "no", {"jean\u00adpierre.dupont@example.com": 1})
    assert "jean" not in message


# == A red-team review (2026-12-08): names of a person the rule let pass ===============
# The semantic conventions' session.previous_id (as identifying as session.id),
# process.owner and file.owner.name (a user name); a birthday, the UK's National
# Insurance number; the X-User and X-Auth-User headers that auth proxies set; OAuth's
# client_assertion (a JWT) and a verification code. Each was written from a span.

NAMES_OF_A_PERSON = {
    "session.previous_id": "5b2d9e1c-sess-previous",
    "process.owner": "jean.tremblay",
    "file.owner.name": "jtremblay",
    "user.birthday": "1985-03-14",
    "national_insurance_number": "QQ123456C",
    "http.request.header.x_user": ("jean.tremblay",),
    "http.request.header.x_auth_user": ("jean.tremblay",),
    "client_assertion": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJqZWFuIn0.c2ln",
    "verification_code": "482913",
}


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_names_of_a_person_are_dropped_from_spans(tmp_path: Path, writer: str) -> None:
    exporter = OperationSpanExporter(storage_path=tmp_path, writer=writer)  # type: ignore[arg-type]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("GET /me") as span:
        span.set_attributes(NAMES_OF_A_PERSON)
        span.set_attribute("user.roles", ("admin",))  # what a person may do: kept
    provider.shutdown()
    text = _disk_text(tmp_path)
    for key, value in NAMES_OF_A_PERSON.items():
        assert key not in text
        assert (value if isinstance(value, str) else value[0]) not in text
    assert '"user.roles":["admin"]' in text


@pytest.mark.parametrize("key", ["is_birthday", "birthday_count", "file.owner.id", "max_user"])
def test_their_neighbours_pass(key: str) -> None:
    assert not DEFAULT_POLICY.is_pii_key(key)


async def test_names_of_a_person_are_refused_in_metadata(tmp_path: Path) -> None:
    for key in NAMES_OF_A_PERSON:
        message = await _refused(tmp_path / "no", {key: "x"})
        assert f"metadata key {key!r} is PII" in message
