"""A finished OpenTelemetry span -> one operation record, PII-filtered.

:func:`map_spans` is the whole mapping step of the span exporter: it builds the
rows the manager queues (:func:`span_to_row` does it for one span,
:func:`span_to_record` gives the same as a model); it does no I/O and can be
tested alone. It runs in two halves: :func:`snapshot_of`
reads from the span what the record is made of (cheap, and the only part that
needs the span), and :func:`~otel_json_exporter._span_rows.snapshot_to_row` does
the rest, the PII filter included. With ``writer="process"`` the exporter runs
only the first half and the writer process the second, off the application's
GIL. The fields are taken as follows:

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
                   ``exception`` event as ``Type: message``, else ``HTTP <code>``,
                   else the ``error.type`` attribute, else None
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
do the PII parameters of ``url.query`` (see ``PiiPolicy.mask_url``); in
``db.statement`` and ``db.query.text`` every literal becomes ``?``
(:func:`~otel_json_exporter._sql.mask_sql`), read as the span's database reads it,
and in a GraphQL document (``graphql.document``, and Strawberry's ``query`` on a
span whose ``component`` is ``graphql``) as GraphQL reads it. Every key
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
redactions (the count :func:`span_to_row` returns beside its row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any, NamedTuple

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from pydantic import ValidationError

from otel_json_exporter._span_rows import (
    URL_ATTRIBUTES,
    SpanSnapshot,
    http_status_of,
    operation_type_of,
    plain_queued_row,
    snapshot_to_row,
)
from otel_json_exporter.pii import DEFAULT_POLICY, PiiPolicy, safe_validation_message
from otel_json_exporter.records import (
    OperationRecord,
    QueuedRow,
    RecordRow,
    record_from_row,
    text_of,
)

__all__ = [
    "URL_ATTRIBUTES",
    "MappedSpans",
    "OperationTypeFunction",
    "SpanFilter",
    "SpanNotMappable",
    "default_operation_type",
    "default_span_filter",
    "map_spans",
    "snapshot_of",
    "span_to_record",
    "span_to_row",
    "with_operation_type",
]

OperationTypeFunction = Callable[["ReadableSpan"], str]
"""Gives a span's ``operation_type``; must return a non-empty string."""

SpanFilter = Callable[["ReadableSpan"], bool]
"""Returns True for a span that should become a record, False to skip it."""

ASGI_EVENT_KEY = "asgi.event.type"
"""The attribute that marks the ASGI instrumentation's per-message spans."""

_FIELDS = (
    "name",
    "kind",
    "start_time",
    "end_time",
    "status",
    "attributes",
    "context",
    "parent",
    "resource",
)
_READ = attrgetter(*_FIELDS)
"""Every property of a span that its record needs, read in one C call."""


def _field_reader(
    span_class: type[ReadableSpan] = ReadableSpan,
) -> Callable[[ReadableSpan], tuple[Any, ...]] | None:
    """The same fields read from the attributes behind the SDK's properties, if it has them.

    Each property of the SDK's ``ReadableSpan`` is a Python call (about 0.1 µs);
    the attribute behind it (``_name`` for ``name``...) is a dictionary lookup in
    C, and reading a span is most of what ``export()`` does with a writer
    process. Not public API, so checked once here, on a span built for it: every
    attribute must hold what its property returns (for ``attributes``, the
    mapping behind the read-only view), else None and the properties are used.
    """
    reader = attrgetter(*(f"_{field}" for field in _FIELDS))
    probe = span_class(
        name="probe",
        context=SpanContext(0x1F, 0x2F, is_remote=False),
        parent=SpanContext(0x1F, 0x3F, is_remote=True),
        resource=Resource({"service.name": "probe"}),
        attributes={"probe": 1},
        kind=SpanKind.CONSUMER,
        status=Status(StatusCode.ERROR, "probe"),
        start_time=5,
        end_time=7,
    )
    try:
        fields = reader(probe)
    except AttributeError:
        return None
    properties = _READ(probe)
    attributes = _FIELDS.index("attributes")
    same = all(
        isinstance(field, Mapping) and dict(field) == dict(held)
        if index == attributes
        else field is held
        for index, (field, held) in enumerate(zip(fields, properties, strict=True))
    )
    return reader if same else None


_READ_FIELDS = _field_reader()


class SpanNotMappable(ValueError):
    """A span that cannot become a record; the message is ours and holds no value."""


def default_operation_type(span: ReadableSpan) -> str:
    """The ``operation_type`` of a span by the table in the module docstring."""
    return operation_type_of(span.kind.value, span.attributes or {})


def default_span_filter(span: ReadableSpan) -> bool:
    """Skip the ASGI instrumentation's per-message ``http send`` / ``http receive`` spans.

    They carry the attribute ``asgi.event.type`` and describe one ASGI message of
    a request whose own server span is exported anyway, so they are not operations.
    """
    attributes = span.attributes
    return attributes is None or ASGI_EVENT_KEY not in attributes


class MappedSpans(NamedTuple):
    """What :func:`map_spans` made of a batch of spans."""

    rows: list[RecordRow | QueuedRow]
    """The rows to queue, mapped here (empty when only snapshots were asked for)."""
    snapshots: list[SpanSnapshot]
    """The snapshots a writer process maps (empty unless asked for)."""
    redacted: int
    """Values masked and keys dropped by the PII filter."""
    failed: int
    """Spans that could not become records, left out."""
    problem: str
    """Why the last of those failed: ours or a type's name, never a value."""


def map_spans(
    spans: Iterable[ReadableSpan],
    policy: PiiPolicy,
    span_filter: SpanFilter = default_span_filter,
    operation_type: OperationTypeFunction = default_operation_type,
    *,
    snapshots_only: bool = False,
) -> MappedSpans:
    """The spans ``span_filter`` keeps, mapped as the span exporter queues them.

    Each span becomes a row (:func:`~otel_json_exporter._span_rows.plain_queued_row`'s
    one pass for a span with nothing to mask, else the full
    :func:`~otel_json_exporter._span_rows.snapshot_to_row`), or with
    ``snapshots_only`` only its snapshot, the cheap half that needs the span: the
    writer process maps those, off the application's GIL. A span that cannot
    become a record is left out and counted: one bad span never loses the others.
    """
    custom_filter = span_filter is not default_span_filter
    custom_type = operation_type is not default_operation_type
    rows: list[RecordRow | QueuedRow] = []
    snapshots: list[SpanSnapshot] = []
    redacted = failed = 0
    problem = ""
    for span in spans:
        try:
            if custom_filter and not span_filter(span):
                continue
            snapshot = snapshot_of(span)
            if not custom_filter and ASGI_EVENT_KEY in snapshot[6]:
                continue  # default_span_filter, on the copy already made
            if custom_type:
                snapshot = with_operation_type(snapshot, span, operation_type)
            if snapshots_only:
                snapshots.append(snapshot)
                continue
            queued = plain_queued_row(snapshot, policy)
            if queued is not None:
                rows.append(queued)  # checked and encoded: nothing to mask
                continue
            row, masked = snapshot_to_row(snapshot, policy)
            rows.append(row)
            redacted += masked
        except ValidationError as exc:
            failed, problem = failed + 1, safe_validation_message(exc, policy=policy)
        except SpanNotMappable as exc:
            failed, problem = failed + 1, str(exc)
        except Exception as exc:  # a user's function, or a malformed span
            # The type only: a message could carry a value from the span.
            failed, problem = failed + 1, type(exc).__name__
    return MappedSpans(rows, snapshots, redacted, failed, problem)


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
    return snapshot_to_row(snapshot_of(span, operation_type), policy)


def snapshot_of(
    span: ReadableSpan, operation_type: OperationTypeFunction = default_operation_type
) -> SpanSnapshot:
    """Read from a finished span what its record is made of; no masking, no validation.

    The cheap half of the mapping, and the only half that needs the span
    (:func:`~otel_json_exporter._span_rows.snapshot_to_row` is the other). Raises
    :class:`SpanNotMappable` for a span with no start time or a name that is not
    text, or when a custom ``operation_type`` does not give a non-empty string.
    With the default ``operation_type`` no code of the application runs here.
    """
    read = _READ_FIELDS if _READ_FIELDS is not None and type(span) is ReadableSpan else _READ
    name, kind, start, end, status, attributes, context, parent, resource = read(span)
    if start is None:
        raise SpanNotMappable("span has no start time")
    if name is not None and not isinstance(name, str):
        raise SpanNotMappable("span name is not text")
    try:
        cut_at = attributes.max_value_len  # the SDK's BoundedAttributes
    except AttributeError:  # a read-only view, or a span not built by the SDK
        cut_at = getattr(getattr(span, "_attributes", None), "max_value_len", None)
    attributes = _copy_of(attributes)
    failed = status.status_code is StatusCode.ERROR
    error = None
    error_cut = False
    if failed or kind is SpanKind.SERVER:
        # An HTTP server span answering 500 or more failed, whatever its status says.
        http_status = http_status_of(attributes)
        failed = failed or (http_status is not None and http_status >= 500)
        if failed:
            error = status.description
            if not error:
                error, error_cut = _last_exception(span)
            if not error and http_status is not None:
                error = f"HTTP {http_status}"
            if not error:
                # The stable semantic conventions' class of the failure, set on failed
                # HTTP, database and RPC spans: "TimeoutError", "500", "_OTHER".
                error_type = attributes.get("error.type")
                if isinstance(error_type, str) and error_type:
                    error = error_type
                    # An attribute: cut, if at all, to the span's own limit.
                    error_cut = type(cut_at) is int and len(error_type) >= cut_at
    snapshot = (
        name,
        kind._value_,  # the enum's value, without the property call of .value
        start,
        end,
        not failed,
        error,
        attributes,
        context.trace_id if context is not None else None,
        context.span_id if context is not None else None,
        parent.span_id if parent is not None else None,
        _service_name(resource),
        None,  # the default rule runs with the rest of the mapping, off the caller's thread
        None if cut_at is None and not error_cut else (_length(cut_at), error_cut),
    )
    if operation_type is default_operation_type:
        return snapshot
    return with_operation_type(snapshot, span, operation_type)


def with_operation_type(
    snapshot: SpanSnapshot, span: ReadableSpan, operation_type: OperationTypeFunction
) -> SpanSnapshot:
    """``snapshot`` with the ``operation_type`` a custom function gives ``span``.

    Apart from :func:`snapshot_of`, so that the exporter calls the function only
    for spans its filter keeps. SpanNotMappable when it does not give a non-empty
    string.
    """
    declared = text_of(operation_type(span))
    if not (isinstance(declared, str) and declared):
        raise SpanNotMappable("operation_type did not return a non-empty string")
    return (*snapshot[:11], declared, snapshot[12])


def _copy_of(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain dict of the span's attributes, copied in C where the SDK allows.

    ``span.attributes`` is a read-only view of the SDK's ``BoundedAttributes``,
    whose ``copy()`` copies its dict at once; ``dict()`` would ask for every key
    in Python.
    """
    if attributes is None:
        return {}
    try:
        copy = attributes.copy()  # type: ignore[attr-defined]
    except AttributeError:  # a mapping with no copy(): an older SDK, a hand-built span
        return dict(attributes)
    return copy if type(copy) is dict else dict(attributes)


# A resource is shared by every span of a provider and never changes: its service
# name is looked up once. Held with the resource itself, so its id is never reused.
_last_service: tuple[object, Any] = (None, None)


def _service_name(resource: Resource | None) -> Any:
    global _last_service  # noqa: PLW0603  # one tuple, replaced whole: no lock needed
    seen, service = _last_service
    if resource is not seen:
        service = None if resource is None else resource.attributes.get("service.name")
        _last_service = (resource, service)
    return service


def _last_exception(span: ReadableSpan) -> tuple[str | None, bool]:
    """The last exception event's type and message, and whether the SDK may have cut the
    message short (it is as long as the event's attribute length limit)."""
    for event in reversed(span.events):
        if event.name == "exception":
            attributes = event.attributes or {}
            kind = attributes.get("exception.type")
            message = attributes.get("exception.message")
            limit = _length(getattr(attributes, "max_value_len", None))
            cut = isinstance(message, str) and limit is not None and len(message) >= limit
            if kind and message:
                return f"{kind}: {message}", cut
            return str(kind or message or "exception"), cut
    return None, False


def _length(limit: object) -> int | None:
    """A length limit read from the SDK's ``BoundedAttributes``, if it is one."""
    return limit if type(limit) is int else None
