"""The pydantic models of the batch-file format, and its timestamp rule.

An operation record is flat on purpose: type, name, duration, timestamp, success,
error and a JSON-ready ``metadata`` mapping. Every timestamp is UTC written as
``2025-12-16T08:00:00.000000+00:00``: always six fractional digits and ``+00:00``.

These models are the single definition of the format. The manager validates with
them at record time (through :func:`build_row`, proven equal to ``model_validate``,
or for the plain common case ``_plain.plain_row``, proven equal to ``build_row``),
the writer encodes each record exactly as ``model_dump_json`` would (from rows,
:func:`encode_lines`, without a model per record), and the command line reads
files back through them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, to_json

__all__ = [
    "AS_WRITTEN",
    "BATCH_FILE_PATTERN",
    "MAX_ERROR_MESSAGE_LENGTH",
    "MAX_INTEGER_DIGITS",
    "MAX_METADATA_DEPTH",
    "MAX_MICROSECONDS",
    "MIN_MICROSECONDS",
    "MetricsBatch",
    "MetricsStats",
    "OperationRecord",
    "QueuedRow",
    "RecordRow",
    "batch_id_for",
    "build_record",
    "build_row",
    "encode_lines",
    "format_timestamp",
    "microseconds_of",
    "moment_of",
    "parse_batch_id",
    "queued_row",
    "record_from_row",
    "record_lines",
    "row_of",
    "text_of",
    "valid_unicode",
]

MAX_ERROR_MESSAGE_LENGTH = 1000
"""Longer ``error_message`` values are truncated to this many characters."""

MAX_METADATA_DEPTH = 32
"""Deepest nesting of dicts and lists accepted in ``metadata``."""

MAX_INTEGER_DIGITS = 4300
"""Most characters of an integer in ``metadata`` as JSON writes it, a minus sign
counted: JSON readers refuse longer ones, and with them the whole batch file.
Python's ``json`` counts digits alone, but pydantic's reader before pydantic-core
2.50 counts the sign too, so a negative integer may have 4,299 digits."""
INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
"""An integer in ``metadata`` must be less than this (at most 4,300 digits)."""
NEGATIVE_INTEGER_LIMIT = -(10 ** (MAX_INTEGER_DIGITS - 1))
"""An integer in ``metadata`` must be greater than this (a minus sign and at most 4,299
digits). Computed once here: a check that negates a limit copies 4,300 digits per value."""

_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT_CHARACTER = "\ufffd"

# [0-9], not \d: in Python \d also matches other scripts' digits (Arabic-Indic, full
# width). Matched with fullmatch: "$" alone also matches before a final newline.
TIMESTAMP_PATTERN = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}\+00:00$"
)
BATCH_ID_PATTERN = re.compile(r"^[0-9]{8}_[0-9]{6}_[0-9]{6}$")
BATCH_FILE_PATTERN = re.compile(r"^metrics_([0-9]{8}_[0-9]{6}_[0-9]{6})\.json$")
"""A batch file's name (use ``fullmatch``); group 1 is its ``batch_id``. Nothing else is
ever touched."""

_BATCH_ID_FORMAT = "%Y%m%d_%H%M%S_%f"


def format_timestamp(moment: datetime) -> str:
    """Format an aware datetime as the file format's UTC timestamp."""
    if moment.tzinfo is not timezone.utc:  # records hold UTC already: skip the conversion
        moment = moment.astimezone(timezone.utc)
    return moment.isoformat(timespec="microseconds")


def batch_id_for(moment: datetime) -> str:
    """The ``batch_id`` (``YYYYMMDD_HHMMSS_ffffff``) of a batch timestamp."""
    moment = moment.astimezone(timezone.utc)
    # The year apart: "%Y" leaves a year before 1000 unpadded, a name no reader matches.
    return f"{moment.year:04d}{moment.strftime(_BATCH_ID_FORMAT[2:])}"


def parse_batch_id(batch_id: str) -> datetime:
    """The UTC moment a ``batch_id`` names; ValueError if it is not one."""
    if not BATCH_ID_PATTERN.fullmatch(batch_id):
        raise ValueError(f"batch_id must look like YYYYMMDD_HHMMSS_ffffff, got {batch_id!r}")
    return datetime.strptime(batch_id, _BATCH_ID_FORMAT).replace(tzinfo=timezone.utc)


def _to_utc(value: Any) -> datetime:
    if isinstance(value, str):
        if not TIMESTAMP_PATTERN.fullmatch(value):
            raise ValueError("timestamp must look like 2025-12-16T08:00:00.000000+00:00")
        return datetime.fromisoformat(value)
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must be timezone-aware")
        return value.astimezone(timezone.utc)
    raise ValueError("timestamp must be an aware datetime or a formatted string")


UtcTimestamp = Annotated[
    datetime,
    PlainValidator(_to_utc),
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": TIMESTAMP_PATTERN.pattern, "format": "date-time"}),
]
"""A UTC datetime, written and read back only as ``2025-12-16T08:00:00.000000+00:00``."""


def text_of(value: Any) -> Any:
    """A ``str`` subclass as a plain ``str`` of its text, which is what a batch file
    holds; anything else as it is.

    Checks made on the result see exactly what is written, whatever the subclass
    overrides (``__contains__``, ``isascii``, ``__hash__``, a ``str`` enum's value).
    """
    return str.__str__(value) if isinstance(value, str) and type(value) is not str else value


def valid_unicode(text: str) -> str:
    """``text`` with each lone surrogate, which UTF-8 cannot encode, replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATE.sub(_REPLACEMENT_CHARACTER, text)


MetadataPath = tuple["str | int", ...]
"""Where a value sits in metadata: the keys and list indexes that lead to it."""


def _where(path: MetadataPath) -> str:
    """``path`` as an error names it (``'a'.'b'[0]``), a key holding PII masked.

    Built only for an error: a key may be an address, or ``password=...``.
    """
    from otel_json_exporter.pii import describe_key  # noqa: PLC0415  # pii imports this module

    where = ""
    for part in path:
        if isinstance(part, int):
            where += f"[{part}]"
        else:
            where += f".{describe_key(part)}" if where else describe_key(part)
    return where


def _check_unicode(text: str, path: MetadataPath, what: str = "") -> None:
    # Lone surrogates cannot be written as UTF-8: refuse them rather than mangle them.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            where = " ".join(part for part in (_where(path), what) if part)
            raise ValueError(f"metadata {where}: string is not valid Unicode") from None


def _json_copy(value: Any, path: MetadataPath, depth: int) -> Any:
    """A copy of ``value`` if JSON-ready; ValueError naming the path (never the value) if not.

    The copy means a caller who changes a dict after recording changes nothing on disk.
    A ``str`` subclass is copied as a plain ``str`` of its text, so that what the PII
    rule checks is exactly what is written, whatever the subclass overrides.
    """
    # None and int (bool is an int) come first: they are the common case.
    if value is None:
        return value
    if isinstance(value, int):
        if type(value) is not int and type(value) is not bool:
            # An int subclass (an IntEnum...) is copied as the plain int it holds: rows
            # hold builtins only, which any writer (a writer process too) can take.
            value = int.__int__(value)
        if NEGATIVE_INTEGER_LIMIT < value < INTEGER_LIMIT:
            return value
        raise ValueError(
            f"metadata {_where(path)}: integer is longer than {MAX_INTEGER_DIGITS} characters "
            f"(at most {MAX_INTEGER_DIGITS} digits, or {MAX_INTEGER_DIGITS - 1} after a minus sign)"
        )
    if isinstance(value, str):
        text = text_of(value)
        _check_unicode(text, path)
        return text
    if isinstance(value, float):
        if type(value) is not float:
            value = float.__float__(value)  # the plain float it holds, as for int
        if not math.isfinite(value):
            raise ValueError(f"metadata {_where(path)}: float must be finite (no NaN or infinity)")
        return value
    if depth >= MAX_METADATA_DEPTH:
        raise ValueError(f"metadata {_where(path)}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, Mapping):
        return _json_object_copy(value, path, depth + 1)
    if isinstance(value, list):
        return [_json_copy(item, (*path, index), depth + 1) for index, item in enumerate(value)]
    raise ValueError(
        f"metadata {_where(path)}: {type(value).__name__} is not allowed; use str, int, "
        "finite float, bool, None, or lists and dicts of these"
    )


def _json_object_copy(mapping: Mapping[Any, Any], path: MetadataPath, depth: int) -> dict[str, Any]:
    copy = {}
    for given, item in mapping.items():
        if not isinstance(given, str):
            where = _where(path) or "keys"
            raise ValueError(f"metadata {where}: keys must be strings, not {type(given).__name__}")
        key = text_of(given)  # its text, as for values
        _check_unicode(key, path, "key")
        copy[key] = _json_copy(item, (*path, key), depth)
    return copy


def _flat_copy(mapping: dict[Any, Any]) -> dict[str, Any] | None:
    """A copy of a flat dict of ASCII keys and plain scalars; None for anything else.

    The common case, checked without building error paths. What it accepts,
    :func:`_json_object_copy` accepts with the same result; everything else is
    left to that function, which also words the errors. The copy is taken first
    and checked, so a dict another thread changes meanwhile cannot slip past.
    """
    copy = mapping.copy()
    for key, item in copy.items():
        if type(key) is not str or not key.isascii():
            return None
        kind = type(item)
        if kind is str:
            if not item.isascii():
                return None
        elif kind is int:
            if not NEGATIVE_INTEGER_LIMIT < item < INTEGER_LIMIT:
                return None
        elif kind is float:
            if not math.isfinite(item):
                return None
        elif item is not None and kind is not bool:
            return None
    return copy


def _validate_metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is dict:
        copy = _flat_copy(value)
        if copy is not None:
            return copy
    if not isinstance(value, Mapping):
        raise ValueError(f"metadata must be a dict, got a {type(value).__name__}")
    return _json_object_copy(value, (), 0)


Metadata = Annotated[
    dict[str, Any],
    # A before-validator, not a plain one: pydantic wraps a plain validator's type in
    # a Python serializer, called once per record when a batch is encoded.
    BeforeValidator(_validate_metadata),
    WithJsonSchema({"type": "object", "additionalProperties": True}),
]
"""JSON-ready metadata: str keys; str, int, finite float, bool, None, lists and dicts."""


def _keys_masked(data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """``handler(data)``, its error's locations with PII in a key masked.

    A location names keys (an unexpected one: ``records.0.password=hunter2``), and a
    key may be an address or a ``name=value`` pair; ``hide_input_in_errors`` leaves
    out only the input, so the models mask their locations themselves.
    """
    try:
        return handler(data)
    except ValidationError as exc:
        from otel_json_exporter.pii import masked_key  # noqa: PLC0415  # pii imports this module

        errors = exc.errors(include_url=False, include_input=False)
        locations = [
            tuple(part if isinstance(part, int) else masked_key(part) for part in error["loc"])
            for error in errors
        ]
        if all(error["loc"] == where for error, where in zip(errors, locations, strict=True)):
            raise
        # Each error again with its own type and message, as given: rebuilt from the
        # type alone, a built-in one would need its context, and a subclass's own
        # (PydanticCustomError) may share a built-in's name.
        details: list[InitErrorDetails] = [
            {
                "type": PydanticCustomError(
                    error["type"], error["msg"].replace("{", "{{").replace("}", "}}")
                ),
                "loc": where,
                "input": None,
            }
            for error, where in zip(errors, locations, strict=True)
        ]
        raise ValidationError.from_exception_data(exc.title, details, hide_input=True) from None


class OperationRecord(BaseModel):
    """One finished operation: what ran, how long it took, and whether it worked.

    ``error_message`` is truncated to 1,000 characters (refused when read back from a
    file with the validation context :data:`AS_WRITTEN`). ``metadata`` must be
    JSON-ready; the PII rule is applied by the manager, not here, so that files
    written by older versions still read back. A validation error never repeats
    the input (``hide_input_in_errors``): it may be personal data.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        hide_input_in_errors=True,
        # A written record holds every field: the schema of a file says so.
        json_schema_serialization_defaults_required=True,
    )

    operation_type: Annotated[str, Field(min_length=1, strict=True)]
    operation_name: Annotated[str, Field(min_length=1, strict=True)]
    duration_ms: Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
    timestamp: UtcTimestamp
    success: Annotated[bool, Field(strict=True)] = True
    error_message: Annotated[
        str | None, Field(strict=True, max_length=MAX_ERROR_MESSAGE_LENGTH)
    ] = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _mask_keys_in_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _keys_masked(data, handler)

    @model_validator(mode="before")
    @classmethod
    def _truncate_error_message(cls, data: Any, info: ValidationInfo) -> Any:
        if info.context is AS_WRITTEN:
            # A file is checked as it is, not as it would be accepted: it holds every
            # field, the defaulted ones too, as the writer writes them.
            if isinstance(data, dict):
                missing: list[InitErrorDetails] = [
                    {"type": "missing", "loc": (name,), "input": None}
                    for name in cls.model_fields
                    if name not in data
                ]
                if missing:
                    raise ValidationError.from_exception_data(cls.__name__, missing)
            return data
        if isinstance(data, dict) and "error_message" in data:
            message = data["error_message"]
            if isinstance(message, str) and len(message) > MAX_ERROR_MESSAGE_LENGTH:
                data = {**data, "error_message": _cut_error_message(message)}
        return data


AS_WRITTEN: dict[str, bool] = {"as_written": True}
"""Validation context for a record read back from a batch file: what the manager never
writes (an ``error_message`` over 1,000 characters, a field left out) is an error, not
fixed up or defaulted."""


def _cut_error_message(message: str) -> str:
    """``message`` cut to :data:`MAX_ERROR_MESSAGE_LENGTH`, never hiding PII by the cut.

    A cut through an address or credentials (``...alice@gmail``) leaves what no
    check finds any more: when the whole holds PII, it is masked first, as
    ``record_operation`` does, and then cut safely (were only the PII the cut
    would hide masked, another address before it would leave the cut one behind
    when the manager masks the cut text).
    """
    from otel_json_exporter.pii import DEFAULT_POLICY  # noqa: PLC0415  # pii imports this module

    if DEFAULT_POLICY.contains_pii(message):
        masked, _ = DEFAULT_POLICY.redact(text_of(message))
        return DEFAULT_POLICY.fit(masked, MAX_ERROR_MESSAGE_LENGTH)
    return message[:MAX_ERROR_MESSAGE_LENGTH]


RecordRow = tuple[str, str, float, int, bool, "str | None", dict[str, Any]]
"""A validated record's seven fields, in order: what validation gives.

The timestamp is an ``int``, microseconds since the Unix epoch (UTC), the
cheapest clock to read and to format. A tuple costs about a third of a model
instance with its field dict, and the queue holds up to ``max_queue_size``
records, each as a row with its metadata encoded (:data:`QueuedRow`). The
writer encodes rows directly (:func:`encode_lines`); :func:`record_from_row` turns
one back into an :class:`OperationRecord`.
"""

QueuedRow = tuple[str, str, float, int, bool, "str | None", bytes]
"""A row as the manager's queue holds it: its metadata already JSON text.

Validated and PII-checked as a :data:`RecordRow` first, then encoded
(:func:`queued_row`). A tuple of plain values only, which the garbage collector
stops tracking the first time it looks at it. A queued row holding a dict stayed
tracked while it waited: the collector went over the whole queue again and
again, and its pauses were most of the calls slower than a millisecond
(``benchmarks/HISTORY.md``). The writer puts the text in as it is, as the last key
(:func:`encode_lines`).
"""

EMPTY_METADATA = b"{}"
"""The JSON text of no metadata."""

_FIELD_NAMES = tuple(OperationRecord.model_fields)
_ALL_RECORD_FIELDS = set(_FIELD_NAMES)
# Shared by every record built from a row: a frozen model never changes its
# fields-set in place (model_copy copies it first), and one set per record would
# cost 728 bytes.
_new_object = object.__new__
_set_slot = object.__setattr__

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MICROSECOND = timedelta(microseconds=1)
MIN_MICROSECONDS = (datetime.min.replace(tzinfo=timezone.utc) - _EPOCH) // _ONE_MICROSECOND
"""The earliest timestamp a record may have, in microseconds since the epoch (year 1)."""
MAX_MICROSECONDS = (datetime.max.replace(tzinfo=timezone.utc) - _EPOCH) // _ONE_MICROSECOND
"""The latest timestamp a record may have, in microseconds since the epoch (year 9999)."""


def microseconds_of(moment: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch: a row's timestamp."""
    return (moment - _EPOCH) // _ONE_MICROSECOND


def moment_of(microseconds: int) -> datetime:
    """The UTC datetime of a row's timestamp; ValueError if no datetime can hold it."""
    _check_microseconds(microseconds)
    return _EPOCH + timedelta(microseconds=microseconds)


def _check_microseconds(microseconds: int) -> None:
    if not MIN_MICROSECONDS <= microseconds <= MAX_MICROSECONDS:
        raise ValueError("timestamp is outside the years 1 to 9999")


def build_row(
    operation_type: Any,
    operation_name: Any,
    duration_ms: Any,
    timestamp_us: int,
    success: Any,
    error_message: Any,
    metadata: Any,
    *,
    json_ready_metadata: bool = False,
) -> RecordRow:
    """``OperationRecord.model_validate`` of these seven fields, as a row; faster.

    (``_span_rows.plain_queued_row`` repeats the checks of the fast path below for
    plain spans: keep the two alike.)

    ``timestamp_us`` comes from a clock: an ``int``, microseconds since the epoch
    (see :func:`microseconds_of`); ValueError if it is anything else or outside
    the years 1 to 9999.
    Other arguments that are plainly valid (non-empty ASCII ``str`` names, a
    finite ``float`` duration >= 0, a ``bool``, no or a short ASCII error
    message, metadata that :func:`_validate_metadata` accepts) are checked here.
    Everything else, valid or not, goes through ``model_validate``, so what is
    accepted, what is stored and every error are exactly pydantic's.

    ``json_ready_metadata`` says ``metadata`` is a fresh dict that validation
    would copy unchanged (the span mapping builds it so; a hypothesis test holds
    both of its paths to that): it is then taken as it is, neither copied nor
    checked again.
    """
    if type(timestamp_us) is not int:
        raise ValueError("timestamp must be an int of microseconds since the epoch")
    _check_microseconds(timestamp_us)
    if (
        type(operation_type) is str
        and type(operation_name) is str
        and operation_type
        and operation_name
        and operation_type.isascii()
        and operation_name.isascii()
        and type(duration_ms) is float
        and 0.0 <= duration_ms < math.inf
        and type(success) is bool
        and (
            error_message is None
            or (
                type(error_message) is str
                and error_message.isascii()
                and len(error_message) <= MAX_ERROR_MESSAGE_LENGTH
            )
        )
    ):
        try:
            clean_metadata = metadata if json_ready_metadata else _validate_metadata(metadata)
        except ValueError:
            pass  # model_validate below raises pydantic's error for it
        else:
            return (
                operation_type,
                operation_name,
                duration_ms,
                timestamp_us,
                success,
                error_message,
                clean_metadata,
            )
    fields = {
        "operation_type": operation_type,
        "operation_name": operation_name,
        "duration_ms": duration_ms,
        "timestamp": moment_of(timestamp_us),
        "success": success,
        "error_message": error_message,
        "metadata": metadata,
    }
    return row_of(OperationRecord.model_validate(fields))


def row_of(record: OperationRecord) -> RecordRow:
    """The row of a record (its fields in order)."""
    return (
        record.operation_type,
        record.operation_name,
        record.duration_ms,
        microseconds_of(record.timestamp),
        record.success,
        record.error_message,
        record.metadata,
    )


def queued_row(row: RecordRow) -> QueuedRow:
    """``row`` as the queue holds it, its metadata encoded (see :data:`QueuedRow`).

    Raises ValueError, naming no value, if the metadata cannot be encoded;
    validated metadata always can.
    """
    kind, name, duration, timestamp_us, success, error, metadata = row
    try:
        text = to_json(metadata)
    except Exception:  # its message may quote a value
        raise ValueError("metadata cannot be written as JSON") from None
    return kind, name, duration, timestamp_us, success, error, text


def record_from_row(row: RecordRow) -> OperationRecord:
    """The record a row holds, built as ``model_construct`` would (the row is valid)."""
    fields: dict[str, Any] = dict(zip(_FIELD_NAMES, row, strict=True))
    fields["timestamp"] = moment_of(row[3])
    record = _new_object(OperationRecord)
    _set_slot(record, "__dict__", fields)
    _set_slot(record, "__pydantic_fields_set__", _ALL_RECORD_FIELDS)
    _set_slot(record, "__pydantic_extra__", None)
    _set_slot(record, "__pydantic_private__", None)
    return record


def build_record(
    operation_type: Any,
    operation_name: Any,
    duration_ms: Any,
    timestamp: Any,
    success: Any,
    error_message: Any,
    metadata: Any,
) -> OperationRecord:
    """``OperationRecord.model_validate`` of these seven fields, faster in the common case.

    See :func:`build_row`: what is accepted and every error are pydantic's.
    """
    if type(timestamp) is datetime and timestamp.tzinfo is timezone.utc:
        row = build_row(
            operation_type,
            operation_name,
            duration_ms,
            microseconds_of(timestamp),
            success,
            error_message,
            metadata,
        )
        return record_from_row(row)
    fields = (
        operation_type,
        operation_name,
        duration_ms,
        timestamp,
        success,
        error_message,
        metadata,
    )
    return OperationRecord.model_validate(dict(zip(_FIELD_NAMES, fields, strict=True)))


# The six fractional digits of a timestamp come from two table look-ups:
# formatting them with ":06d" cost a quarter of the work per record.
_MILLIS = tuple(f"{number:03d}" for number in range(1000))
_MICROS_UTC = tuple(f"{number:03d}+00:00" for number in range(1000))


def record_lines(rows: Sequence[RecordRow | QueuedRow]) -> list[bytes]:
    """Each row's line in a batch file: exactly ``model_dump_json()`` of its record.

    The lines of :func:`encode_lines`, one by one: compact JSON has no line break
    inside a record, nor has a queued row's metadata (:func:`queued_row` makes it).
    """
    return encode_lines(rows).split(b",\n") if rows else []


def encode_lines(
    rows: Sequence[RecordRow | QueuedRow], before: bytes = b"", after: bytes = b""
) -> bytes:
    """``before``, each row's line joined by ``",\n"``, then ``after``, in one buffer.

    Each line is exactly ``model_dump_json()`` of the row's record, put together
    from each field's JSON, not encoded from a dict per record: a quarter less
    work for a queued row. Pydantic's serialiser encodes each distinct text of
    the batch once (operation types and names repeat), and every duration in
    one call (:func:`_durations_json`); a queued row's metadata is JSON
    already. Records of one batch mostly share their second, so its formatted
    text is reused; the fractional digits come from two tables of three digits
    each. The file is built by one join, since each copy of a large buffer costs
    page faults. ``tests/test_batch_encoding.py`` holds every line to
    ``model_dump_json()``.
    """
    if not rows:
        return before + after
    encoded: dict[str, str] = {}  # each distinct text's JSON, for this batch
    known = encoded.get
    parts = [before]
    append = parts.append
    second: int | None = None  # no second yet: any real one, -1_000_000 included, differs
    prefix = ""
    closing = ""  # what ends the line before: its metadata's record, and the separator
    for (kind, name, _, microseconds, success, error, metadata), duration_json in zip(
        rows, _durations_json(rows), strict=True
    ):
        fraction = microseconds % 1_000_000  # never negative, also before 1970
        if microseconds - fraction != second:
            second = microseconds - fraction
            prefix = format_timestamp(moment_of(second))[:20]  # up to the "."
        # Inline look-ups first: a call per field would cost a fifth of the line.
        kind_json = (type(kind) is str and known(kind)) or _json_text(kind, encoded)
        name_json = (type(name) is str and known(name)) or _json_text(name, encoded)
        if success is True and error is None:
            outcome = _SUCCEEDED  # most records: one text for the three fields
        else:
            outcome = _outcome_json(success, error, encoded)
        append(
            f'{closing}{{"operation_type":{kind_json},"operation_name":{name_json},'
            f'"duration_ms":{duration_json},'
            f'"timestamp":"{prefix}{_MILLIS[fraction // 1000]}{_MICROS_UTC[fraction % 1000]}",'
            f"{outcome}".encode()
        )
        append(metadata if type(metadata) is bytes else to_json(metadata))
        closing = "},\n"
    append(b"}" + after)
    return b"".join(parts)


_SUCCEEDED = '"success":true,"error_message":null,"metadata":'


def _outcome_json(success: Any, error: Any, encoded: dict[str, str]) -> str:
    """The ``success`` and ``error_message`` fields, and the name of the next."""
    if success is True:
        success_json = "true"
    else:
        success_json = "false" if success is False else to_json(success).decode()
    error_json = "null" if error is None else _json_text(error, encoded)
    return f'"success":{success_json},"error_message":{error_json},"metadata":'


def _durations_json(rows: Sequence[RecordRow | QueuedRow]) -> list[str]:
    """Each row's ``duration_ms`` as pydantic writes it, from one call for the batch.

    A quarter of the cost of ``repr`` per float, which would also need mending
    (``repr`` writes ``1e-07``, JSON ``1e-7``).
    """
    text = to_json([row[2] for row in rows]).decode()
    durations = text[1:-1].split(",")
    if len(durations) != len(rows):  # a value whose JSON holds a comma: no valid row's
        durations = [to_json(row[2]).decode() for row in rows]
        text = ",".join(durations)
    # A float NaN or infinity (written NaN, Infinity or null): no JSON number holds it, so
    # the row is refused, not written unreadable; never in a valid row. Looked for only
    # when a letter that spells one of them is in the text.
    if ("N" in text or "I" in text or "n" in text) and any(
        isinstance(row[2], float) and not math.isfinite(row[2]) for row in rows
    ):
        raise ValueError("duration_ms is not a finite number")
    return durations


def _json_text(text: Any, encoded: dict[str, str]) -> str:
    """The JSON of ``text`` as pydantic writes it, remembered in ``encoded``."""
    if type(text) is not str:  # not valid in a row; and a subclass's == may lie
        return to_json(text).decode()
    json_text = encoded.get(text)
    if json_text is None:
        json_text = encoded[text] = to_json(text).decode()
    return json_text


class MetricsBatch(BaseModel):
    """The content of one ``metrics_<batch_id>.json`` file."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    records: list[OperationRecord]
    batch_timestamp: UtcTimestamp
    batch_id: Annotated[str, Field(pattern=BATCH_ID_PATTERN.pattern)]
    total_records: Annotated[int, Field(ge=0, strict=True)]

    @model_validator(mode="wrap")
    @classmethod
    def _mask_keys_in_errors(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _keys_masked(data, handler)

    @model_validator(mode="after")
    def _consistent(self) -> MetricsBatch:
        if self.total_records != len(self.records):
            raise ValueError(
                f"total_records is {self.total_records} but the batch holds "
                f"{len(self.records)} records"
            )
        if self.batch_id != batch_id_for(self.batch_timestamp):
            raise ValueError("batch_id does not match batch_timestamp")
        return self


class MetricsStats(BaseModel):
    """A snapshot of a manager's counters; every count is since the manager was built."""

    model_config = ConfigDict(frozen=True)

    total_recorded: int = Field(description="Records accepted into the queue.")
    total_persisted: int = Field(description="Records written to disk and fsynced.")
    queue_size: int = Field(description="Records accepted but not yet on disk.")
    batches_written: int = Field(description="Batch files written.")
    last_flush_timestamp: UtcTimestamp | None = Field(
        description="UTC time of the last successful batch write."
    )
    avg_batch_size: float = Field(description="total_persisted / batches_written.")
    is_running: bool = Field(description="Whether the manager accepts records.")
    total_dropped: int = Field(
        description="Records dropped: not accepted because the queue was full (or the "
        "manager stopped while they waited for room), or, rarely, queued but impossible "
        "to encode."
    )
    total_rejected: int = Field(description="Records refused by validation or the PII rule.")
    write_errors: int = Field(description="Failed batch writes (each retried).")
    bytes_written: int = Field(description="Bytes of batch files written.")
    worker_errors: int = Field(
        default=0, description="Unexpected errors the background writer survived."
    )
    pii_redacted: int = Field(
        default=0, description="Values masked, or span attributes dropped, by the PII rule."
    )


def next_microsecond(moment: datetime) -> datetime:
    """The moment one microsecond later; the next free ``batch_id`` after a clash."""
    return moment + timedelta(microseconds=1)
