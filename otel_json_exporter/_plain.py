"""The common case of ``record_operation``, validated and PII-checked in one pass.

Most records have short ASCII names without ``@``, ``=`` or ``%`` and a flat dict of
plain scalars under keys the PII rule has already cleared. For those, both the
validation (:func:`~otel_json_exporter.records.build_row`) and the PII rule
(:class:`~otel_json_exporter.pii.PiiPolicy`) say yes, and masking changes
nothing: no address, credentials or ``name=value`` can hide in ASCII text
without ``@``, ``=`` or ``%`` (of a ``%40``). :func:`plain_row` says so at a fraction of their cost,
and returns None for everything else, which then takes the full path.
``tests/test_plain_path.py`` proves it never accepts what the full path refuses
and queues the same row when it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from typing import Any

from pydantic_core import to_json

from otel_json_exporter.pii import holds_database_values
from otel_json_exporter.records import (
    EMPTY_METADATA,
    INTEGER_LIMIT,
    MAX_ERROR_MESSAGE_LENGTH,
    NEGATIVE_INTEGER_LIMIT,
    QueuedRow,
)

__all__ = ["plain_row"]

_INFINITY = math.inf
_NEGATIVE_INFINITY = -math.inf
_AT = ord("@")
_EQUALS = ord("=")
_PERCENT = ord("%")


def plain_row(
    operation_type: Any,
    operation_name: Any,
    duration_ms: Any,
    timestamp_us: int,
    success: Any,
    error_message: Any,
    metadata: Any,
    plain_keys: AbstractSet[str],
) -> QueuedRow | None:
    """The queued row of plainly valid, plainly PII-free input; None when that is not plain.

    ``plain_keys`` are ASCII keys the PII rule has cleared
    (:attr:`PiiPolicy.plain_keys <otel_json_exporter.pii.PiiPolicy.plain_keys>`);
    ``timestamp_us`` is a clock reading, microseconds since the epoch.
    """
    if not (
        type(operation_type) is str
        and type(operation_name) is str
        and operation_type
        and operation_name
        and type(duration_ms) is float
        and 0.0 <= duration_ms < _INFINITY
        and type(success) is bool
    ):
        return None
    # The texts go into one string, checked once: "@", "=", "%" (of a "%40") or a
    # character beyond ASCII is in the whole exactly when it is in one of them.
    if error_message is None:
        text = operation_type + operation_name
    elif (
        type(error_message) is not str
        or len(error_message) > MAX_ERROR_MESSAGE_LENGTH
        or holds_database_values(error_message)  # a database error's values: masked
    ):
        return None
    else:
        text = operation_type + operation_name + error_message
    if "@" in text or "=" in text or "%" in text or not text.isascii():
        return None
    json = EMPTY_METADATA
    if metadata is not None:
        if type(metadata) is not dict:
            return None
        # Copy first, then check the copy: another thread may change the caller's
        # dict meanwhile, and what is checked must be what is written.
        clean = metadata.copy()
        for key, value in clean.items():
            # The type first: a key that only equals a cleared one is not plain,
            # and a str's hash and == cannot fail.
            if type(key) is not str or key not in plain_keys:
                return None
            kind = type(value)
            if kind is not str:
                if kind is int:
                    if not NEGATIVE_INTEGER_LIMIT < value < INTEGER_LIMIT:
                        return None
                elif kind is float:
                    if not _NEGATIVE_INFINITY < value < _INFINITY:
                        return None
                elif value is not None and kind is not bool:
                    return None
        # Plain scalars within these bounds: pydantic's serialiser cannot fail on
        # them, save for a lone surrogate, which is not ASCII either.
        try:
            json = to_json(clean)
        except ValueError:
            return None
        # The JSON holds every key and text as it is (the serialiser escapes neither
        # "@", "=", "%" nor what is beyond ASCII), and no number holds any: one search
        # each. The needles are ints: ``b"@" in json`` costs six to ten times as
        # much, since bytes first tries to read its operand as an int.
        if _AT in json or _EQUALS in json or _PERCENT in json or not json.isascii():
            return None
    return (operation_type, operation_name, duration_ms, timestamp_us, success, error_message, json)
