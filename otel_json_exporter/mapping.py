"""A finished OpenTelemetry span -> one operation record, PII-filtered.

:func:`span_to_row` is the whole mapping step of the span exporter (it builds
the row the manager queues; :func:`span_to_record` gives the same as a model); it
does no I/O and can be tested alone. The fields are taken as follows:

=================  ==================================================================
record field       from the span
=================  ==================================================================
operation_type     ``operation_type(span)``, by default :func:`default_operation_type`;
                   e-mail addresses masked
operation_name     the span name (``"unnamed"`` if empty); e-mail addresses masked
duration_ms        ``(end_time - start_time) / 1e6``, 0.0 if the clock went backwards
timestamp          the span's start time, UTC
success            False when the status is ERROR, or for an HTTP server span whose
                   response status code is 500 or more; True otherwise
error_message      None on success; else the status description, else the last
                   ``exception`` event as ``Type: message``, else ``HTTP <code>``
metadata           the attributes after the PII filter, plus ``trace_id``,
                   ``span_id``, ``parent_span_id``, ``span_kind`` and ``service.name``
=================  ==================================================================

:func:`default_operation_type`, first match wins:

==========================================================  ==================
the span has                                                operation_type
==========================================================  ==================
a non-empty string attribute ``operation.type``             its value
kind SERVER and ``http.request.method`` or ``http.method``  ``api_request``
kind CLIENT and ``http.request.method`` or ``http.method``  ``http_client``
``db.system.name`` or ``db.system``                         ``database_query``
``messaging.system``                                        ``messaging``
``rpc.system.name`` or ``rpc.system``                       ``rpc``
anything else                                               the lower-case kind
==========================================================  ==================

The PII filter (the manager's :class:`~otel_json_exporter.pii.PiiPolicy`): an
attribute whose key is PII is dropped, at any depth, and the span is kept;
e-mail addresses inside strings become ``[REDACTED]`` and a URL's user
credentials inside any string ``REDACTED:REDACTED``; in ``url.full``,
``url.original``, ``http.url`` and ``http.target`` the values of PII query,
fragment and path (``;jsessionid=...``, ``/reset/token=...``) parameters become ``REDACTED``, and so
do the PII parameters of ``url.query`` (see ``PiiPolicy.mask_url``). Every key
dropped and every value masked counts once in the returned redaction count.
Values become JSON-ready: tuples become lists, bytes become base64 text (unless
they hold PII read as text: then ``[REDACTED]``), and NaN
or infinite floats become the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (JSON
has no such numbers).

One bad value never loses the span. A lone surrogate (which UTF-8 cannot encode)
in the name, the status description, an exception message, an attribute key or
value, or ``service.name`` becomes U+FFFD, the replacement character. An
attribute that no batch file can hold, an integer of more than 4,300 digits or
nesting deeper than 32 levels anywhere in it, is dropped and counted with the
redactions (the one count this function returns).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, StatusCode

from otel_json_exporter.pii import DEFAULT_POLICY, REDACTED, PiiPolicy
from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_INTEGER_DIGITS,
    MAX_METADATA_DEPTH,
    OperationRecord,
    RecordRow,
    build_row,
    record_from_row,
    text_of,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = [
    "URL_ATTRIBUTES",
    "OperationTypeFunction",
    "SpanFilter",
    "default_operation_type",
    "default_span_filter",
    "span_to_record",
    "span_to_row",
]

OperationTypeFunction = Callable[["ReadableSpan"], str]
"""Gives a span's ``operation_type``; must return a non-empty string."""

SpanFilter = Callable[["ReadableSpan"], bool]
"""Returns True for a span that should become a record, False to skip it."""

URL_ATTRIBUTES = frozenset({"url.full", "url.original", "http.url", "http.target"})
"""Attributes holding a URL or a request target, masked with ``PiiPolicy.mask_url``."""

_QUERY_ATTRIBUTE = "url.query"
_URL_LIKE = URL_ATTRIBUTES | {_QUERY_ATTRIBUTE}
_HTTP_METHOD = ("http.request.method", "http.method")
_HTTP_STATUS = ("http.response.status_code", "http.status_code")
_KIND_NAMES = {kind: kind.name.lower() for kind in SpanKind}
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT_CHARACTER = "\ufffd"


class _Unwritable(Exception):
    """A value no batch file can hold: too many digits, or nested too deep."""


def default_operation_type(span: ReadableSpan) -> str:
    """The ``operation_type`` of a span by the table in the module docstring."""
    return _operation_type_of(span.kind, span.attributes or {})


def _operation_type_of(kind: SpanKind, attributes: Mapping[str, Any]) -> str:
    declared = attributes.get("operation.type")
    if isinstance(declared, str) and declared:
        return declared
    if kind is SpanKind.SERVER or kind is SpanKind.CLIENT:
        for key in _HTTP_METHOD:
            if key in attributes:
                return "api_request" if kind is SpanKind.SERVER else "http_client"
    if "db.system.name" in attributes or "db.system" in attributes:
        return "database_query"
    if "messaging.system" in attributes:
        return "messaging"
    if "rpc.system.name" in attributes or "rpc.system" in attributes:
        return "rpc"
    return _KIND_NAMES[kind]


def default_span_filter(span: ReadableSpan) -> bool:
    """Skip the ASGI instrumentation's per-message ``http send`` / ``http receive`` spans.

    They carry the attribute ``asgi.event.type`` and describe one ASGI message of
    a request whose own server span is exported anyway, so they are not operations.
    """
    attributes = span.attributes
    return attributes is None or "asgi.event.type" not in attributes


def span_to_record(
    span: ReadableSpan,
    policy: PiiPolicy = DEFAULT_POLICY,
    operation_type: OperationTypeFunction = default_operation_type,
) -> tuple[OperationRecord, int]:
    """Map a finished span to a validated record and the number of values redacted.

    Raises ValueError (a pydantic ValidationError included) when the span cannot
    become a valid record, for instance when it has no start time or
    ``operation_type`` returned an empty string. The message never holds a value.
    """
    row, redacted = span_to_row(span, policy, operation_type)
    return record_from_row(row), redacted


def span_to_row(
    span: ReadableSpan,
    policy: PiiPolicy = DEFAULT_POLICY,
    operation_type: OperationTypeFunction = default_operation_type,
) -> tuple[RecordRow, int]:
    """:func:`span_to_record` as the row the manager queues, without building the model."""
    start, end = span.start_time, span.end_time
    if start is None:
        raise ValueError("span has no start time")
    duration_ms = max(end - start, 0) / 1e6 if end is not None else 0.0
    # One copy into a plain dict: the SDK's attributes mapping answers every
    # lookup in Python, and a missing key by raising KeyError.
    attributes = dict(span.attributes or {})
    redacted = 0

    name = text_of(span.name) or "unnamed"
    if "@" in name or "=" in name or not name.isascii():
        name, redacted = _clean_text(name, policy)

    success = True
    error_message: str | None = None
    status = span.status
    # PII is masked before the message is cut to 1,000 characters, so that a cut
    # never leaves half an address behind; PiiPolicy.fit makes the cut itself safe.
    http_status = _http_status(attributes)
    server_error = http_status is not None and http_status >= 500 and span.kind is SpanKind.SERVER
    if status.status_code is StatusCode.ERROR or server_error:
        success = False
        error_message = status.description or _last_exception(span)
        if not error_message and http_status is not None:
            error_message = f"HTTP {http_status}"
        if error_message:
            error_message, masked = _clean_text(error_message, policy)
            error_message = policy.fit(error_message, MAX_ERROR_MESSAGE_LENGTH)
            redacted += masked

    metadata, masked = _clean_attributes(attributes, policy)
    redacted += masked
    context = span.context
    parent = span.parent
    added: dict[str, Any] = {}
    if context is not None:
        added["trace_id"] = format(context.trace_id, "032x")
        added["span_id"] = format(context.span_id, "016x")
    added["parent_span_id"] = format(parent.span_id, "016x") if parent is not None else None
    added["span_kind"] = _KIND_NAMES[span.kind]
    service = span.resource.attributes.get("service.name")
    if service is not None:
        added["service.name"] = service
    # The same filter as the span's own attributes: a policy may block even these.
    clean_added, masked = _clean_attributes(added, policy)
    metadata.update(clean_added)
    redacted += masked

    if operation_type is default_operation_type:
        kind_of_operation = text_of(_operation_type_of(span.kind, attributes))
    else:
        kind_of_operation = text_of(operation_type(span))
    if isinstance(kind_of_operation, str) and (
        "@" in kind_of_operation or "=" in kind_of_operation or not kind_of_operation.isascii()
    ):
        kind_of_operation, masked = _clean_text(kind_of_operation, policy)
        redacted += masked
    row = build_row(
        kind_of_operation,
        name,
        duration_ms,
        start // 1000 if type(start) is int else round(start / 1000),  # the SDK takes floats
        success,
        error_message,
        metadata,
    )
    return row, redacted


def _http_status(attributes: Mapping[str, Any]) -> int | None:
    for key in _HTTP_STATUS:
        code = attributes.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
        if isinstance(code, str) and code.isdigit():
            return int(code)
    return None


def _last_exception(span: ReadableSpan) -> str | None:
    for event in reversed(span.events):
        if event.name == "exception":
            attributes = event.attributes or {}
            kind = attributes.get("exception.type")
            message = attributes.get("exception.message")
            if kind and message:
                return f"{kind}: {message}"
            return str(kind or message or "exception")
    return None


def _clean_attributes(
    attributes: Mapping[str, Any], policy: PiiPolicy
) -> tuple[dict[str, Any], int]:
    """The attributes without PII keys, with masked strings and JSON-ready values."""
    clean: dict[str, Any] = {}
    redacted = 0
    plain_keys = policy.plain_keys
    for given, value in attributes.items():
        name = given if type(given) is str else text_of(given)  # a subclass: its text
        if name in plain_keys:
            key = name  # ASCII, and cleared by the policy before
        elif policy.is_pii_key(name):
            redacted += 1
            continue
        else:
            key = name if name.isascii() else _valid_unicode(name)
        kind = type(value)
        if kind is str:
            if (
                "@" not in value
                and "=" not in value
                and value.isascii()
                and ("%" not in value or key not in _URL_LIKE)
            ):
                # The common case, kept cheap: an ASCII string without "@" holds no
                # address and no credentials, and without "=" no name=value pair
                # (a URL in a referer header, a connection string, password=... in
                # free text); in a URL attribute "%" may encode any of them.
                clean[key] = value
                continue
            if key in _URL_LIKE:
                mask = policy.mask_query if key == _QUERY_ATTRIBUTE else policy.mask_url
                clean[key], masked = mask(value if value.isascii() else _valid_unicode(value))
            else:
                clean[key], masked = _clean_text(value, policy)
        elif kind is bool or (kind is int and -_INTEGER_LIMIT < value < _INTEGER_LIMIT):
            clean[key] = value
            continue
        else:
            try:
                clean[key], masked = _clean_value(value, policy, 0)
            except _Unwritable:
                masked = 1  # the attribute is dropped
        redacted += masked
    return clean, redacted


def _clean_value(value: Any, policy: PiiPolicy, depth: int) -> tuple[Any, int]:
    """A JSON-ready copy of an attribute value (any depth) and the count redacted.

    Raises :class:`_Unwritable` for a value that no batch file can hold.
    """
    if value is None or isinstance(value, bool):
        return value, 0
    if isinstance(value, int):
        if -_INTEGER_LIMIT < value < _INTEGER_LIMIT:
            return value, 0
        raise _Unwritable
    if isinstance(value, str):
        return _clean_text(value, policy)
    if isinstance(value, float):
        return (value, 0) if math.isfinite(value) else (str(value), 0)
    if isinstance(value, bytes):
        data = bytes(value)  # a subclass: its bytes, whatever its methods say
        if _bytes_hold_pii(data, policy):
            return REDACTED, 1
        return base64.b64encode(data).decode("ascii"), 0
    if depth >= MAX_METADATA_DEPTH and isinstance(value, (Mapping, tuple, list)):
        raise _Unwritable
    redacted = 0
    if isinstance(value, Mapping):
        clean: dict[str, Any] = {}
        for key, item in value.items():
            name = text_of(key) if isinstance(key, str) else str(key)
            if policy.is_pii_key(name):
                redacted += 1
                continue
            clean[_valid_unicode(name)], masked = _clean_value(item, policy, depth + 1)
            redacted += masked
        return clean, redacted
    if isinstance(value, (tuple, list)):
        items = []
        for item in value:
            clean_item, masked = _clean_value(item, policy, depth + 1)
            items.append(clean_item)
            redacted += masked
        return items, redacted
    # The SDK turns other types into str before they reach us; be as safe anyway.
    return _clean_text(str(value), policy)


def _bytes_hold_pii(data: bytes, policy: PiiPolicy) -> bool:
    """Whether bytes read as text hold PII; base64 would hide it from every check.

    Read as UTF-8 (a stray byte replaced), as Latin-1, and with NUL bytes left
    out (ASCII text in UTF-16 or UTF-32).
    """
    readings = (
        data.decode("utf-8", "replace"),
        data.decode("latin-1"),
        data.replace(b"\x00", b"").decode("latin-1"),
    )
    return any(policy.contains_pii(text) for text in readings)


def _clean_text(text: str, policy: PiiPolicy) -> tuple[str, int]:
    """``text`` ready for a record: valid Unicode, PII masked; and the count masked."""
    text = text_of(text)
    if not text.isascii():
        text = _SURROGATE.sub(_REPLACEMENT_CHARACTER, text)
    if "=" in text and ("?" in text or "#" in text or ";" in text):
        return policy.mask_url(text)  # it masks addresses, credentials, parameters too
    if "@" in text or "=" in text or not text.isascii():
        return policy.redact(text)
    return text, 0


def _valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate, which UTF-8 cannot encode, replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub(_REPLACEMENT_CHARACTER, text)
