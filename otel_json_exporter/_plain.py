"""The common case of ``record_operation``, validated and PII-checked in one pass.

Most records have short ASCII names without ``@`` or ``=`` and a flat dict of
plain scalars under keys the PII rule has already cleared. For those, both the
validation (:func:`~otel_json_exporter.records.build_row`) and the PII rule
(:class:`~otel_json_exporter.pii.PiiPolicy`) say yes, and masking changes
nothing: no address, credentials or ``name=value`` can hide in ASCII text
without ``@`` or ``=``. :func:`plain_row` says so at a fraction of their cost,
and returns None for everything else, which then takes the full path.
``tests/test_plain_path.py`` proves it never accepts what the full path refuses
and builds the same row when it accepts.
"""

from __future__ import annotations

import math
from collections.abc import Set as AbstractSet
from typing import Any

from otel_json_exporter.records import MAX_ERROR_MESSAGE_LENGTH, MAX_INTEGER_DIGITS, RecordRow

__all__ = ["plain_row"]

_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
_INFINITY = math.inf


def plain_row(
    operation_type: Any,
    operation_name: Any,
    duration_ms: Any,
    timestamp_us: int,
    success: Any,
    error_message: Any,
    metadata: Any,
    plain_keys: AbstractSet[str],
) -> RecordRow | None:
    """The row of plainly valid, plainly PII-free input; None when that is not plain.

    ``plain_keys`` are ASCII keys the PII rule has cleared
    (:attr:`PiiPolicy.plain_keys <otel_json_exporter.pii.PiiPolicy.plain_keys>`);
    ``timestamp_us`` is a clock reading, microseconds since the epoch.
    """
    if not (
        type(operation_type) is str
        and type(operation_name) is str
        and operation_type
        and operation_name
        and operation_type.isascii()
        and operation_name.isascii()
        and "@" not in operation_type
        and "=" not in operation_type
        and "@" not in operation_name
        and "=" not in operation_name
        and type(duration_ms) is float
        and 0.0 <= duration_ms < _INFINITY
        and type(success) is bool
    ):
        return None
    if error_message is not None and not (
        type(error_message) is str
        and len(error_message) <= MAX_ERROR_MESSAGE_LENGTH
        and error_message.isascii()
        and "@" not in error_message
        and "=" not in error_message
    ):
        return None
    if metadata is None:
        clean: dict[str, Any] = {}
    elif type(metadata) is dict:
        # Copy first, then check the copy: another thread may change the caller's
        # dict meanwhile, and what is checked must be what is written.
        clean = metadata.copy()
        if not clean.keys() <= plain_keys:
            return None
        for key, value in clean.items():
            kind = type(value)
            if type(key) is not str:  # equal to a cleared key, but not a str
                return None
            if kind is str:
                if "@" in value or "=" in value or not value.isascii():
                    return None
            elif kind is int:
                if not -_INTEGER_LIMIT < value < _INTEGER_LIMIT:
                    return None
            elif kind is float:
                if not -_INFINITY < value < _INFINITY:
                    return None
            elif value is not None and kind is not bool:
                return None
    else:
        return None
    return (
        operation_type,
        operation_name,
        duration_ms,
        timestamp_us,
        success,
        error_message,
        clean,
    )
