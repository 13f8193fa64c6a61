"""What was read from a span (a :data:`SpanSnapshot`) -> a validated, PII-masked row.

:func:`~otel_json_exporter.mapping.snapshot_of` reads a finished span into a
tuple of plain values; :func:`snapshot_to_row` does everything else the mapping
does (the PII filter, the added keys, validation). The two halves are apart so
that the second can run where the application's GIL is not: with
``writer="process"`` the span exporter hands snapshots to the writer process,
which maps them (:func:`rows_of`) before it encodes. With the thread writer
both halves run in ``export()``, one after the other
(:func:`~otel_json_exporter.mapping.map_spans`). In both places the common
span, with nothing to mask, drop or refuse, takes a shortcut first
(:func:`plain_queued_row`) that makes the same queued row in one pass.

Nothing here imports OpenTelemetry: span kinds are their numbers in the
OpenTelemetry specification (``SpanKind.SERVER.value`` is 1), so the writer
process need not import the SDK to map a span. The field-by-field rules are in
:mod:`otel_json_exporter.mapping`'s docstring.
"""

from __future__ import annotations

import base64
import math
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic_core import to_json

from otel_json_exporter._sql import GRAPHQL, SQL_ATTRIBUTES, dialect_of, known_clean, mask_sql
from otel_json_exporter.pii import (
    REDACTED,
    PiiPolicy,
    holds_database_values,
    mask_cut_end,
    mask_database_values,
)
from otel_json_exporter.records import (
    INTEGER_LIMIT,
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_INTEGER_DIGITS,
    MAX_METADATA_DEPTH,
    MAX_MICROSECONDS,
    MIN_MICROSECONDS,
    NEGATIVE_INTEGER_LIMIT,
    QueuedRow,
    RecordRow,
    build_row,
    text_of,
    valid_unicode,
)

__all__ = [
    "KIND_NAMES",
    "SNAPSHOT_FIELDS",
    "URL_ATTRIBUTES",
    "SpanSnapshot",
    "http_status_of",
    "is_snapshot",
    "operation_type_of",
    "plain_queued_row",
    "rows_of",
    "snapshot_to_row",
]

SpanSnapshot = tuple[
    Any,  # name, as the span has it
    int,  # kind: the SpanKind's value
    "int | float",  # start time, ns since the epoch (the SDK accepts floats)
    "int | float | None",  # end time
    bool,  # success
    Any,  # error text (status description, last exception, "HTTP 500"), unmasked, uncut
    dict[str, Any],  # the attributes, a copy
    "int | None",  # trace id
    "int | None",  # span id
    "int | None",  # parent span id
    Any,  # the resource's service.name
    Any,  # operation_type from the exporter's own function; None: the default rule
    "tuple[int | None, bool] | None",  # what the SDK may have cut: see below
]
"""A finished span's facts, read by :func:`~otel_json_exporter.mapping.snapshot_of`.

Plain values only (once pickled for the writer process, ``str``, ``int``,
``float`` and ``bytes`` subclasses become their plain values), nothing masked
or validated yet. A tuple of 13, so that it is told from a 7-field
:data:`~otel_json_exporter.records.QueuedRow` in one queue by its length.

The last field is None unless the SDK cuts attribute values to a length
(``SpanLimits.max_attribute_length``, ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``):
then the limit of the span's attributes (None if only events have one), and
whether the error text ends with an exception message as long as its limit.
A text that long may end in half an address or password, which
:func:`~otel_json_exporter.pii.mask_cut_end` masks.
"""

SNAPSHOT_FIELDS = 13

# SpanKind's values, fixed by the OpenTelemetry specification (tests hold them to the SDK).
KIND_NAMES = {0: "internal", 1: "server", 2: "client", 3: "producer", 4: "consumer"}
SERVER = 1
CLIENT = 2

URL_ATTRIBUTES = frozenset({"url.full", "url.original", "http.url", "http.target"})
"""Attributes holding a URL or a request target, masked with ``PiiPolicy.mask_url``."""

_ADDED_KEYS = frozenset({"trace_id", "span_id", "parent_span_id", "span_kind", "service.name"})
_QUERY_ATTRIBUTE = "url.query"
_URL_LIKE = URL_ATTRIBUTES | {_QUERY_ATTRIBUTE}
_HTTP_METHOD = ("http.request.method", "http.method")
_HTTP_STATUS = ("http.response.status_code", "http.status_code")
_AT = ord("@")
_EQUALS = ord("=")
_PERCENT = ord("%")
_URL_KEYS = tuple(sorted(_URL_LIKE))
_SQL_KEYS = tuple(sorted(SQL_ATTRIBUTES))
# A GraphQL document, whose literals are masked as a statement's: the conventions'
# graphql.document, and Strawberry's "query" (with "component": "graphql"). Their
# spans, one an operation, take the full path.
_GRAPHQL_DOCUMENT = "graphql.document"
_GRAPHQL_QUERY = "query"
_STATEMENT_KEYS = SQL_ATTRIBUTES | {_GRAPHQL_DOCUMENT, _GRAPHQL_QUERY}
_NOT_ON_THE_PLAIN_PATH = _ADDED_KEYS | {_GRAPHQL_DOCUMENT, _GRAPHQL_QUERY}
_STATEMENT_OR_URL_KEYS = _STATEMENT_KEYS | _URL_LIKE  # their texts are masked their own way
_QUERY_TEXT, _STATEMENT = _SQL_KEYS  # each looked up alone: the cheapest test for all spans
_DB_SYSTEM = ("db.system.name", "db.system")
_MAX_SPAN_NANOSECONDS = 10**300  # far beyond any span, far inside what a float holds
_KIND_BYTES = {name: name.encode("ascii") for name in KIND_NAMES.values()}


class _Unwritable(Exception):
    """A value no batch file can hold: too many digits, or nested too deep."""


def is_snapshot(item: QueuedRow | SpanSnapshot) -> bool:
    """Whether a queued item is a span still to be mapped, not a row."""
    return len(item) == SNAPSHOT_FIELDS


def operation_type_of(kind: int, attributes: Mapping[str, Any]) -> str:
    """The default ``operation_type`` rule, from the span kind's value and the attributes."""
    declared = attributes.get("operation.type")
    if isinstance(declared, str) and declared:
        return declared
    if kind in (SERVER, CLIENT):
        for key in _HTTP_METHOD:
            if key in attributes:
                return "api_request" if kind == SERVER else "http_client"
    if "db.system.name" in attributes or "db.system" in attributes:
        return "database_query"
    if "messaging.system" in attributes:
        return "messaging"
    if "rpc.system.name" in attributes or "rpc.system" in attributes:
        return "rpc"
    return KIND_NAMES[kind]


def http_status_of(attributes: Mapping[str, Any]) -> int | None:
    """The HTTP response status code among the attributes, if there is one."""
    for key in _HTTP_STATUS:
        code = attributes.get(key)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
        if isinstance(code, str) and code.isdecimal():  # isdigit() is true of "²" too
            return int(code)
    return None


def snapshot_to_row(snapshot: SpanSnapshot, policy: PiiPolicy) -> tuple[RecordRow, int]:
    """The row of a validated, PII-masked record, and the number of values redacted.

    Raises ValueError (a pydantic ValidationError included) when the snapshot
    cannot become a valid record; the message never holds a value.
    """
    (
        name,
        kind,
        start,
        end,
        success,
        error,
        attributes,
        trace_id,
        span_id,
        parent_id,
        service,
        declared_type,
        cut,
    ) = snapshot
    duration_ms = max(end - start, 0) / 1e6 if end is not None else 0.0
    redacted = 0
    if cut is not None:
        cut_at, error_cut = cut
        if error_cut and error:
            error, redacted = mask_cut_end(text_of(error))
        if cut_at is not None:
            attributes, masked = _cut_ends_masked(attributes, cut_at)
            redacted += masked

    name = text_of(name) or "unnamed"
    if "@" in name or "=" in name or "%" in name or not name.isascii():
        name, masked = _clean_text(name, policy)
        redacted += masked

    # PII is masked before the message is cut to 1,000 characters, so that a cut
    # never leaves half an address behind; PiiPolicy.fit makes the cut itself safe.
    error_message = error
    if error_message:
        # The row values a database error quotes first: the other masking would take
        # "(name)=(Jean" for a name=value.
        error_message, masked = mask_database_values(text_of(error_message))
        redacted += masked
        error_message, masked = _clean_text(error_message, policy)
        error_message = policy.fit(error_message, MAX_ERROR_MESSAGE_LENGTH)
        redacted += masked

    metadata, masked = _clean_attributes(attributes, policy)
    redacted += masked
    added = metadata if policy.plain_keys >= _ADDED_KEYS and _plain_service(service) else {}
    if trace_id is not None:
        added["trace_id"] = format(trace_id, "032x")
        added["span_id"] = format(span_id, "016x")
    added["parent_span_id"] = format(parent_id, "016x") if parent_id is not None else None
    added["span_kind"] = KIND_NAMES[kind]
    if service is not None:
        added["service.name"] = service
    if added is not metadata:
        # The same filter as the span's own attributes: a policy may block even these.
        # (Above, they went straight in: every key cleared, and nothing to mask in
        # hex ids, a kind's name or a plain service name.)
        clean_added, masked = _clean_attributes(added, policy)
        metadata.update(clean_added)
        redacted += masked

    # From the filtered metadata, not the raw attributes: a key whose == lies (or one a
    # policy blocks) must not bring a dropped value back as the operation type.
    kind_of_operation = text_of(
        operation_type_of(kind, metadata) if declared_type is None else declared_type
    )
    if isinstance(kind_of_operation, str) and (
        "@" in kind_of_operation
        or "=" in kind_of_operation
        or "%" in kind_of_operation
        or not kind_of_operation.isascii()
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
        json_ready_metadata=True,  # _clean_attributes makes every value JSON-ready
    )
    return row, redacted


def plain_queued_row(snapshot: SpanSnapshot, policy: PiiPolicy) -> QueuedRow | None:
    """The queued row of a span that the mapping masks nothing in; None when that is not plain.

    The common span has ASCII texts without ``@`` or ``=``, and attributes of
    ``str``, ``int``, ``bool`` and tuples of ``str`` (a captured header's values) under
    keys the policy has cleared
    (:attr:`PiiPolicy.plain_keys <otel_json_exporter.pii.PiiPolicy.plain_keys>`),
    its URL attributes left as they are by masking. For it, :func:`snapshot_to_row`,
    the manager's :meth:`~otel_json_exporter.pii.PiiPolicy.check_row` and
    :func:`~otel_json_exporter.records.queued_row` all say yes and change nothing.
    This says so in one pass, as ``plain_row`` does for ``record_operation``: the
    attributes are encoded once, and their JSON searched for ``@``, ``=`` and what
    is beyond ASCII, besides what the URL attributes were found to hold. None for
    everything else, which then takes that full path; never raises.
    ``tests/test_plain_spans.py`` holds it to that path: it never accepts what the
    full path refuses or masks, and queues the same row when it accepts.
    """
    (
        name,
        kind,
        start,
        end,
        success,
        error,
        attributes,
        trace_id,
        span_id,
        parent_id,
        service,
        declared_type,
        cut,
    ) = snapshot
    if not (
        type(name) is str
        and type(kind) is int
        and type(start) is int
        and (end is None or type(end) is int)
        and (
            error is None
            or (
                type(error) is str
                and len(error) <= MAX_ERROR_MESSAGE_LENGTH
                and not holds_database_values(error)  # its row values: masked
            )
        )
        and (service is None or type(service) is str)
        and (trace_id is None or (type(trace_id) is int and type(span_id) is int))
        and (parent_id is None or type(parent_id) is int)
        and type(success) is bool
        and type(attributes) is dict
    ):
        return None
    if cut is not None and _may_be_cut(cut, attributes):
        return None
    for key, value in attributes.items():
        # Types first, so that the set operations below meet only exact str keys,
        # whose hash and == cannot lie or raise. (A loop costs less here than sets
        # of the types.)
        value_type = type(value)
        if (
            type(key) is not str
            or (value_type is not str and value_type is not int and value_type is not bool)
        ) and not _plain_texts(key, value):
            return None
    plain_keys = policy.plain_keys
    if not (
        plain_keys >= _ADDED_KEYS
        and attributes.keys() <= plain_keys
        # An attribute under an added key's name is replaced by the added value,
        # after the full path has counted what it masked in it.
        and attributes.keys().isdisjoint(_NOT_ON_THE_PLAIN_PATH)
    ):
        return None
    kind_name = KIND_NAMES.get(kind)
    if kind_name is None:
        return None
    operation_type = operation_type_of(kind, attributes) if declared_type is None else declared_type
    if type(operation_type) is not str:
        return None
    name = name or "unnamed"
    # One string, searched once: "@", "=", "%" (of a "%40") or a character beyond
    # ASCII is in the whole exactly when it is in one of them.
    text = operation_type + name + (error or "") + (service or "")
    if "@" in text or "=" in text or "%" in text or not text.isascii():
        return None
    allowed_at = allowed_equals = allowed_percent = 0
    for key in _URL_KEYS:
        value = attributes.get(key)
        if type(value) is str and (
            "@" in value or "=" in value or "%" in value or not value.isascii()
        ):
            if not value.isascii() or _url_mask(key, policy)(value) != (value, 0):
                return None  # masking would change it
            allowed_at += value.count("@")
            allowed_equals += value.count("=")
            allowed_percent += value.count("%")
    if _STATEMENT in attributes or _QUERY_TEXT in attributes:  # a database span
        dialect = dialect_of(_db_system(attributes))
        for key in _SQL_KEYS:
            value = attributes.get(key)
            if type(value) is str:
                if not (
                    value.isascii()
                    and known_clean(value, dialect)
                    and _clean_statement(value, dialect, policy) == (value, 0)
                ):
                    return None  # seen first, a literal to mask, or more: the full path
                allowed_at += value.count("@")
                allowed_equals += value.count("=")
                allowed_percent += value.count("%")
    try:
        json = to_json(attributes)
    except ValueError:  # a lone surrogate; beyond ASCII anyway
        return None
    # The serialiser escapes neither "@", "=", "%" nor what is beyond ASCII, and no
    # number or bool holds any: the JSON holds each one that the keys and values
    # hold, and only the URL attributes may hold any. No longer than the
    # digits an integer may have, it holds no integer with more (longer attributes,
    # a long query text, take the full path: slower, never different).
    if (
        not _holds(json, _AT, allowed_at)
        or not _holds(json, _EQUALS, allowed_equals)
        or not _holds(json, _PERCENT, allowed_percent)
        or not json.isascii()
        or len(json) > MAX_INTEGER_DIGITS
    ):
        return None
    # What build_row would check besides, for these types (records.build_row's fast
    # path; keep the two alike): a non-empty operation type (the name is one, or
    # "unnamed"), a timestamp within the years 1 to 9999, a duration that a float holds
    # (a negative one becomes 0.0).
    timestamp_us = start // 1000
    if not (
        operation_type
        and MIN_MICROSECONDS <= timestamp_us <= MAX_MICROSECONDS
        and (end is None or end - start < _MAX_SPAN_NANOSECONDS)
    ):
        return None
    duration_ms = max(end - start, 0) / 1e6 if end is not None else 0.0
    # The attributes' JSON without its closing brace, then the added keys' members.
    head = json[:-1] + b"," if len(json) > 2 else b"{"  # b"{}": no attributes
    added = _added_json(trace_id, span_id, parent_id, kind_name, service)
    return (operation_type, name, duration_ms, timestamp_us, success, error, head + added)


def _plain_texts(key: object, value: object) -> bool:
    """Whether ``value`` is a tuple of exact ``str`` under a key whose texts are masked as
    any text is (not a URL's, nor a statement's): a header an instrumentation captured,
    ``("application/json",)``. Its JSON is searched with the rest of the attributes'; the
    full path would write it as a list of the same texts."""
    return (
        type(value) is tuple
        and type(key) is str
        and key not in _STATEMENT_OR_URL_KEYS
        and all(type(item) is str for item in value)
    )


def _may_be_cut(cut: tuple[int | None, bool], attributes: Mapping[str, Any]) -> bool:
    """Whether the error text, or a text among the attributes, may have been cut short."""
    cut_at, error_cut = cut
    return error_cut or (
        cut_at is not None
        and any(
            (type(value) is str and len(value) >= cut_at)
            or (
                type(value) is tuple
                and any(type(item) is str and len(item) >= cut_at for item in value)
            )
            for value in attributes.values()
        )
    )


def _cut_ends_masked(value: Any, cut_at: int) -> tuple[Any, int]:
    """``value`` with each text at least ``cut_at`` long masked by
    :func:`~otel_json_exporter.pii.mask_cut_end`, at any depth; and the count masked.

    Returns ``value`` itself when nothing was masked. The SDK cuts the texts of a
    sequence or mapping value one by one, as it cuts a plain one.
    """
    if isinstance(value, str):
        if len(value) < cut_at:
            return value, 0
        text = text_of(value)
        masked, count = mask_cut_end(text)
        return (masked, count) if count else (value, 0)
    if isinstance(value, Mapping):
        changed: dict[Any, Any] | None = None
        total = 0
        for key, item in value.items():
            clean, count = _cut_ends_masked(item, cut_at)
            if count:
                if changed is None:
                    changed = dict(value)
                changed[key] = clean
                total += count
        return (value, 0) if changed is None else (changed, total)
    if isinstance(value, (tuple, list)):
        pairs = [_cut_ends_masked(item, cut_at) for item in value]
        total = sum(count for _, count in pairs)
        return (value, 0) if not total else ([clean for clean, _ in pairs], total)
    return value, 0


def _holds(json: bytes, byte: int, expected: int) -> bool:
    """Whether ``json`` holds ``byte`` exactly ``expected`` times (``in`` is the faster search)."""
    return json.count(byte) == expected if expected else byte not in json


# The last service name's member of the metadata's JSON: one resource, so nearly
# always the same text.
_last_service_member: tuple[str | None, bytes] = (None, b"")


def _added_json(
    trace_id: int | None,
    span_id: int | None,
    parent_id: int | None,
    kind_name: str,
    service: str | None,
) -> bytes:
    """The keys the mapping adds, and their values, as JSON members; and the closing brace."""
    global _last_service_member  # noqa: PLW0603  # one tuple, replaced whole: no lock needed
    parent = b"null" if parent_id is None else b'"%016x"' % parent_id
    if service is None:
        service_member = b""
    else:
        seen, service_member = _last_service_member
        if seen != service:
            service_member = b',"service.name":' + to_json(service)
            _last_service_member = (service, service_member)
    # span_id is an int whenever trace_id is (plain_queued_row checked); the test of
    # both is for the type checker.
    if trace_id is None or span_id is None:
        return b'"parent_span_id":%s,"span_kind":"%s"%s}' % (
            parent,
            _KIND_BYTES[kind_name],
            service_member,
        )
    return b'"trace_id":"%032x","span_id":"%016x","parent_span_id":%s,"span_kind":"%s"%s}' % (
        trace_id,
        span_id,
        parent,
        _KIND_BYTES[kind_name],
        service_member,
    )


def rows_of(
    items: Sequence[QueuedRow | SpanSnapshot], policy: PiiPolicy
) -> tuple[list[RecordRow | QueuedRow], int, int]:
    """A batch's rows, its snapshots mapped; and how many items were rejected and redacted.

    A mapped row is checked against the PII rule as the manager checks every row
    it queues (:meth:`PiiPolicy.check_row`), or, for a plain span, by
    :func:`plain_queued_row`'s one pass; one that fails, or a snapshot that
    cannot become a record, is left out and counted as rejected: one bad span
    never holds up the rest of its batch.
    """
    rows: list[RecordRow | QueuedRow] = []
    rejected = redacted = 0
    for item in items:
        if len(item) != SNAPSHOT_FIELDS:
            rows.append(item)  # type: ignore[arg-type]  # a row: checked when it was queued
            continue
        try:
            queued = plain_queued_row(item, policy)  # type: ignore[arg-type]
            if queued is not None:
                rows.append(queued)
                continue
            row, masked = snapshot_to_row(item, policy)  # type: ignore[arg-type]
            policy.check_row(row)
        except Exception:  # whatever it is, it must not stop the others: counted, left out
            rejected += 1
            continue
        rows.append(row)
        redacted += masked
    return rows, rejected, redacted


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
            key = name if name.isascii() else valid_unicode(name)
        kind = type(value)
        if kind is not str and kind is not int and kind is not bool and isinstance(value, str):
            # A subclass is judged as its text, by the same rules: in a URL
            # attribute, URL masking (as it is once shipped to a writer process).
            value, kind = text_of(value), str  # noqa: PLW2901
        if kind is str:
            if key in _STATEMENT_KEYS and (dialect := _dialect(key, attributes)) is not None:
                # its literals masked, whatever characters it holds
                clean[key], masked = _clean_statement(value, dialect, policy)
            elif "@" not in value and "=" not in value and "%" not in value and value.isascii():
                # The common case, kept cheap: an ASCII string without "@" or "%40"
                # holds no address and no credentials, and without "=" no name=value
                # pair (a URL in a referer header, a connection string, password=...
                # in free text); in a URL attribute "%" may encode any of them.
                clean[key] = value
                continue
            elif key in _URL_LIKE:
                clean[key], masked = _url_mask(key, policy)(
                    value if value.isascii() else valid_unicode(value)
                )
            else:
                clean[key], masked = _clean_text(value, policy)
        elif kind is bool or (kind is int and NEGATIVE_INTEGER_LIMIT < value < INTEGER_LIMIT):
            clean[key] = value
            continue
        else:
            try:
                # A list of URLs under a URL attribute is masked as URLs, item by item;
                # of statements under a statement's, as statements (bytes too).
                text_mask = _text_mask(key, attributes, policy)
                statement = text_mask is not None and key in _STATEMENT_KEYS
                clean[key], masked = _clean_value(value, policy, 0, text_mask, statement)
            except _Unwritable:
                masked = 1  # the attribute is dropped
        redacted += masked
    return clean, redacted


def _clean_value(
    value: Any,
    policy: PiiPolicy,
    depth: int,
    text_mask: Callable[[str], tuple[str, int]] | None = None,
    statement: bool = False,
) -> tuple[Any, int]:
    """A JSON-ready copy of an attribute value (any depth) and the count redacted.

    ``text_mask`` masks the texts of a sequence found under a URL or statement
    attribute (:func:`_text_mask`), as URLs, a query or statements; under a
    statement's (``statement``), bytes are read as UTF-8 text and masked so too.
    Raises :class:`_Unwritable` for a value that no batch file can hold.
    """
    if value is None or isinstance(value, bool):
        return value, 0
    if isinstance(value, int):
        # A subclass (an IntEnum member) as the plain number it holds: rows hold
        # builtins only, as validation would make them.
        number = value if type(value) is int else int.__int__(value)
        if NEGATIVE_INTEGER_LIMIT < number < INTEGER_LIMIT:
            return number, 0
        raise _Unwritable
    if isinstance(value, str):
        if text_mask is not None:
            return text_mask(valid_unicode(text_of(value)))
        return _clean_text(value, policy)
    if isinstance(value, float):
        real = value if type(value) is float else float.__float__(value)
        return (real, 0) if math.isfinite(real) else (str(real), 0)
    if isinstance(value, bytes):
        data = bytes(value)  # a subclass: its bytes, whatever its methods say
        if statement and text_mask is not None:
            # A statement's values stay readable in base64: its text is masked instead,
            # as OpenTelemetry before 1.45 decodes bytes into text on the span.
            return text_mask(data.decode("utf-8", "replace"))
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
            clean[valid_unicode(name)], masked = _clean_value(item, policy, depth + 1)
            redacted += masked
        return clean, redacted
    if isinstance(value, (tuple, list)):
        items = []
        for item in value:
            clean_item, masked = _clean_value(item, policy, depth + 1, text_mask, statement)
            items.append(clean_item)
            redacted += masked
        return items, redacted
    # The SDK turns other types into str before they reach us; be as safe anyway.
    return _clean_text(str(value), policy)


def _text_mask(
    key: str, attributes: Mapping[str, Any], policy: PiiPolicy
) -> Callable[[str], tuple[str, int]] | None:
    """How the texts of a URL or statement attribute are masked; None for any other key."""
    if key in _URL_LIKE:
        return _url_mask(key, policy)
    dialect = _dialect(key, attributes) if key in _STATEMENT_KEYS else None
    if dialect is not None:
        return lambda text: _clean_statement(text, dialect, policy)
    return None


def _dialect(key: str, attributes: Mapping[str, Any]) -> str | None:
    """How the statement under ``key`` is read (:func:`~otel_json_exporter._sql.mask_sql`);
    None when ``key`` holds no statement (a ``query`` not a GraphQL span's)."""
    if key in SQL_ATTRIBUTES:
        return dialect_of(_db_system(attributes))
    # Values by their text, as the writer process sees them (a str subclass's == aside).
    if key == _GRAPHQL_DOCUMENT or text_of(attributes.get("component")) == "graphql":
        return GRAPHQL
    return None


def _db_system(attributes: Mapping[str, Any]) -> Any:
    """The span's database system: ``db.system.name``, else ``db.system``."""
    return text_of(attributes.get(_DB_SYSTEM[0])) or text_of(attributes.get(_DB_SYSTEM[1]))


_statement_texts: weakref.WeakKeyDictionary[PiiPolicy, dict[str, tuple[str, int]]] = (
    weakref.WeakKeyDictionary()
)
_REMEMBERED_STATEMENTS = 1024  # per policy (equal policies share them: same blocked keys)
_REMEMBERED_STATEMENT_LENGTH = 4096


def _clean_statement(statement: str, dialect: str, policy: PiiPolicy) -> tuple[str, int]:
    """A statement with its literals masked (:func:`~otel_json_exporter._sql.mask_sql`),
    read as ``dialect`` (the span's database's, or GraphQL's); then masked as any text
    is (an address in a comment, a name the statement spells out)."""
    statement, literals = mask_sql(text_of(statement), dialect)
    # Masked as text once per statement and policy: with its literals masked, the same
    # few statements come again and again, and the text masking of one (a "%s" or
    # "=" in it takes the full passes) costs more than the rest of its span's mapping.
    remembered = _statement_texts.get(policy)
    if remembered is None:
        remembered = _statement_texts.setdefault(policy, {})
    known = remembered.get(statement)
    if known is None:
        known = _clean_text(statement, policy)
        if len(statement) <= _REMEMBERED_STATEMENT_LENGTH:
            if len(remembered) >= _REMEMBERED_STATEMENTS:
                remembered.clear()  # bounded: arbitrary statements must not grow memory
            remembered[statement] = known
    return known[0], literals + known[1]


def _url_mask(key: str, policy: PiiPolicy) -> Callable[[str], tuple[str, int]]:
    """How the text of a URL attribute is masked: as a query, or as a whole URL."""
    return policy.mask_query if key == _QUERY_ATTRIBUTE else policy.mask_url


def _bytes_hold_pii(data: bytes, policy: PiiPolicy) -> bool:
    """Whether bytes read as text hold PII; base64 would hide it from every check.

    Read as UTF-8 (a stray byte replaced), as Latin-1, and with NUL bytes left
    out (ASCII text in UTF-16 or UTF-32), without the byte-order mark that
    Python's ``utf-16`` and ``utf-32`` codecs write first: glued to the text, its
    ``ÿþ`` would hide the name of a ``password=`` pair.
    """
    without_nul = data.replace(b"\x00", b"")
    if without_nul[:2] in (b"\xff\xfe", b"\xfe\xff"):  # both marks, once NULs are gone
        without_nul = without_nul[2:]
    readings = (
        data.decode("utf-8", "replace"),
        data.decode("latin-1"),
        without_nul.decode("latin-1"),
    )
    return any(policy.contains_pii(text) for text in readings)


def _clean_text(text: str, policy: PiiPolicy) -> tuple[str, int]:
    """``text`` ready for a record: valid Unicode, PII masked; and the count masked."""
    return policy.mask_free_text(valid_unicode(text_of(text)))


def _plain_service(service: Any) -> bool:
    """Whether a service name needs no cleaning: none, or ASCII text without ``@``, ``=``, ``%``."""
    return service is None or (
        type(service) is str
        and "@" not in service
        and "=" not in service
        and "%" not in service
        and service.isascii()
    )
