"""A review of the misread-text fixes (f920387, 372742c): what they still let through.

Each test below failed on 372742c but the ``test_held_*``, which hold what must not
change, and ``test_long_runs_are_read_in_linear_time``, a hang guard for the new
patterns. All personal data here is fake.

- UTF-8 misread as latin-1, then written as HTML character references: PHP's
  ``htmlentities()`` with its old default charset (ISO-8859-1) writes ``josé`` so, as
  ``jos&Atilde;&copy;``. ``&Atilde;`` counted as a letter, ``&copy;`` did not, and the
  ``;`` before the ``@`` left no local part: the address was written whole.
- A numeric reference with leading zeros (``&#x000000E9;``, which HTML reads as ``é``)
  was not read as one: the address was written whole.
- A domain whose last label is backslash-escaped, as ``json.dumps`` writes
  ``ivan@пример.рф`` (failed before these two commits too): the labels before the last
  took escapes, the last did not, and the address was written whole.
- A cut inside a reference or a backslash escape in a domain (``jean@ex&eac`` of
  ``jean@ex&eacute;mple.ca``, ``jean@ex\\u00``, as the SDK's length limit cuts a value):
  what was left of the address was written.
- A reference to a character that a local part holds, not a letter: the soft hyphen
  (``&shy;``, which pages put into long words so that they wrap), ``+``, ``_``, ``.``,
  a combining mark. The part of the address before it was written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import Status, StatusCode, Tracer

from otel_json_exporter import MetricsManager, PiiPolicy
from otel_json_exporter.pii import mask_cut_end

from ._spans import export_spans

WRITERS = ["thread", "process"]

# "josé@example.com" and others misread as latin-1 (or cp1252), then HTML-escaped.
HTML_MISREAD = [
    pytest.param("jos&Atilde;&copy;@example.com", id="named"),
    pytest.param("jos&#195;&#169;@example.com", id="decimal"),
    pytest.param("jos&#xC3;&#xa9;@example.com", id="hex"),
    pytest.param("jos\u00c3&copy;@example.com", id="lead-unescaped"),
    pytest.param("zo&Atilde;&laquo;@example.com", id="guillemet"),
    pytest.param("fran&Atilde;&sect;ois.tremblay@exemple.ca", id="section-sign"),
    pytest.param("mary.o&acirc;&euro;&trade;brien@example.ie", id="cp1252-apostrophe"),
    pytest.param("jean@ex&Atilde;&copy;mple.ca", id="in-the-domain"),
]


@pytest.mark.parametrize("text", HTML_MISREAD)
def test_misread_utf8_written_as_html_references_is_masked_whole(text: str) -> None:
    policy = PiiPolicy()
    assert policy.redact(f"reply to {text} today") == ("reply to [REDACTED] today", 1)
    assert policy.contains_pii(text)


@pytest.mark.parametrize("text", HTML_MISREAD)
def test_misread_utf8_written_as_html_references_cut_short_is_masked(text: str) -> None:
    cut = text[: text.index("@") + 4]
    assert mask_cut_end(f"reply to {cut}") == ("reply to [REDACTED]", 1)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("jos&#x000000E9;@example.com", id="hex"),
        pytest.param("jos&#00000000233;@example.com", id="decimal"),
    ],
)
def test_a_reference_with_leading_zeros_is_read(text: str) -> None:
    assert PiiPolicy().redact(f"reply to {text}") == ("reply to [REDACTED]", 1)


@pytest.mark.parametrize(
    "address", ["ivan@пример.рф", "ivan.petrov@example.рф", "zoe@exemple.\u00e7a"]
)
def test_an_escaped_last_label_of_a_domain_counts(address: str) -> None:
    text = f"payload: {json.dumps({'to': address})}"
    masked, count = PiiPolicy().redact(text)
    assert (masked, count) == ('payload: {"to": "[REDACTED]"}', 1)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("jean&shy;tremblay@example.com", id="soft-hyphen"),
        pytest.param("jean&#173;tremblay@example.com", id="soft-hyphen-decimal"),
        pytest.param("jean&#43;factures@example.com", id="plus"),
        pytest.param("jean&lowbar;tremblay@example.com", id="underscore"),
        pytest.param("jean&period;tremblay@example.com", id="full-stop"),
        pytest.param("andre&#x301;.dupont@example.com", id="combining-mark"),
    ],
)
def test_a_reference_to_a_character_of_a_local_part_leaves_no_part_of_it(text: str) -> None:
    assert PiiPolicy().redact(f"<p>{text}</p>") == ("<p>[REDACTED]</p>", 1)


@pytest.mark.parametrize(
    "cut", ["jean@ex&eac", "jean@ex&#x", "jean@exemple.c&eacute", "jean@ex\\u00", "jean%40ex&e"]
)
def test_a_cut_inside_a_reference_or_an_escape_in_the_domain_is_masked(cut: str) -> None:
    """``jean@ex&eacute;mple.ca`` or ``jean@ex\\u00e9mple.ca`` cut by the SDK's limit."""
    assert mask_cut_end(f"de {cut}") == ("de [REDACTED]", 1)


def test_held_a_misread_character_cut_short_at_the_end_still_counts() -> None:
    """The SDK's cut may end inside a misread character of three or four bytes."""
    for character in ("\u4f8b", "\U0001f600"):  # 例, 😀
        misread = f"jean@ex{character}".encode().decode("latin-1")
        for end in range(len(misread) - 2, len(misread) + 1):
            assert mask_cut_end(f"de {misread[:end]}") == ("de [REDACTED]", 1), end


@pytest.mark.parametrize(
    "text",
    [
        "&Atilde;t&Atilde;&copy; chaud",
        "caf&eacute;&nbsp;&copy; 2026 &laquo; promo &raquo;",
        "prix&nbsp;: 5&nbsp;&euro; &agrave;&nbsp;@home",
        "Q&amp;A &#x27;ok&#x27; &#0; &#x110000; &#99999999;",
    ],
)
def test_held_references_without_an_address_are_kept(text: str) -> None:
    assert PiiPolicy().redact(text) == (text, 0)


@pytest.mark.parametrize(
    "text",
    [
        "&Atilde;&copy;" * 40_000 + "@",
        "&#xC3;&#xA9;" * 40_000 + "@x.",
        "&#x" + "0" * 200_000,
        "&Atilde;&Atilde;&copy;&copy;." * 20_000,
        "x@" + "\\u00e9." * 60_000,
    ],
)
def test_long_runs_are_read_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    PiiPolicy().redact(text)
    mask_cut_end(text)
    assert time.perf_counter() - started < 60  # a hang guard, not a timing


def _span_with(text: str) -> Callable[[Tracer], None]:
    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("op") as span:
            span.set_attribute("app.note", text)
            span.set_attribute("app.cut", f"reply to {text}")
            span.set_status(Status(StatusCode.ERROR, f"cannot reply to {text}"))

    return make


@pytest.mark.parametrize("writer", WRITERS)
def test_spans_quoting_html_escaped_misread_text_leave_no_address(
    tmp_path: Path, writer: str
) -> None:
    """Real SDK, both writers; the limit cuts ``app.cut`` inside the domain."""
    text = "jos&Atilde;&copy;.tremblay@example.com"
    limit = len("reply to ") + text.index("@") + 4
    records, _ = export_spans(
        tmp_path, _span_with(text), writer=writer, limits=SpanLimits(max_attribute_length=limit)
    )
    (record,) = records
    written = json.dumps(records)
    assert record["metadata"]["app.cut"] == "reply to [REDACTED]"
    assert "tremblay" not in written
    assert "jos&" not in written


async def test_record_operation_masks_and_refuses_html_escaped_misread_text(
    tmp_path: Path,
) -> None:
    text = "jos&Atilde;&copy;.tremblay@example.com"
    manager = MetricsManager(tmp_path)
    await manager.start()
    try:
        with pytest.raises(ValueError, match="'note'"):
            await manager.record_operation("api_request", "x", 1.0, metadata={"note": text})
        await manager.record_operation(
            "api_request", f"GET /users/{text}", 1.0, success=False, error_message=f"no {text}"
        )
    finally:
        await manager.stop()
    written = "".join(path.read_text() for path in tmp_path.glob("metrics_*.json"))
    assert "GET /users/[REDACTED]" in written
    assert "no [REDACTED]" in written
    assert "tremblay" not in written
