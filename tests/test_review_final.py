"""Review of 235eff3 and 28ae3a6 (track_operation's deferred records, the unrolled
address runs, custom error types beside masked keys).

Each test asserts what the README (or the code's own docstring) promises and fails on
the code as reviewed; its docstring says what was seen. Faults only at the ``os`` call
(a stalled ``os.fsync``); everything else is real. Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError, field_validator
from pydantic_core import PydanticCustomError

from otel_json_exporter import OperationRecord
from otel_json_exporter.pii import contains_pii_text, mask_cut_end, mask_text
from otel_json_exporter.tracking import track_operation

from ._faults import StalledDisk, full_queue_on_a_stalled_disk

CAP = 10.0  # hang guard


# == track_operation ====================================================================


async def test_a_cancel_while_waiting_for_room_counts_a_masked_name_once(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """README: "an async one cancelled while it waits is recorded if there is room by
    then" and "each value masked adds one to pii_redacted"; 235eff3 promises "no double
    counts". A successful block named with an address waits for room in
    ``record_operation``, whose ``_build_row`` masks the name and counts it *before*
    waiting; cancelled there, ``__aexit__`` hands the same operation to
    ``submit_records(timeout=0)``, which masks the name again and adds to
    ``pii_redacted`` again, even though the queue is still full and nothing is queued
    (``submit_records`` counts its masking whether or not the rows fit). Seen:
    ``pii_redacted`` 2 for one operation that was never written (and 1 dropped)."""
    manager = await full_queue_on_a_stalled_disk(tmp_path / "m", stalled_disk)
    try:

        async def block() -> None:
            async with track_operation(manager, "mail", "send to alice@example.com"):
                pass

        task = asyncio.ensure_future(block())
        for _ in range(20):  # let it reach the wait for room
            await asyncio.sleep(0)
        assert not task.done(), "the block did not wait for room"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, CAP)
        stats = manager.stats()
    finally:
        stalled_disk.release()
        await asyncio.wait_for(manager.stop(), CAP)
    assert stats.total_dropped == 1, "the cancelled operation is dropped, counted once"
    assert stats.pii_redacted == 1, (
        f"one address in one operation (dropped, never written) counted as masked "
        f"{stats.pii_redacted} times"
    )


# == pii: the unrolled runs against 231709c =============================================


@pytest.mark.parametrize(
    "text",
    [
        "50%\\u00e9lise%40example.com",  # json.dumps of "50%élise%40example.com"
        "q=%\\u00e9lise%40example.com",
        "to: 100%\\xe9lise%40example.com",  # repr's escape
    ],
)
def test_an_encoded_address_after_a_stray_percent_and_an_escape_is_found(text: str) -> None:
    """231709c masked these (``50%\\[REDACTED]``) and ``contains_pii_text`` said True;
    235eff3 finds nothing: the match may not start at the backslash (the "%" before it
    is a ``_LOCAL_PART`` character, so ``_NOT_AFTER_LOCAL_PART`` forbids it), the
    percent-encoded branch cannot start at the "%" (``_UNESCAPED_LOCAL_PART`` has no
    "%"), and ``_AFTER_AN_ESCAPE`` wants a whole "%XX" before it. The address
    ``élise@example.com`` is written whole (and metadata holding it is not refused).
    Found by differential fuzzing (mask_text, contains_pii_text, mask_cut_end)."""
    assert contains_pii_text(text), "the address is not seen"
    masked, count = mask_text(text)
    assert count == 1, masked
    assert "lise" not in masked, masked


def test_a_cut_local_part_after_a_stray_percent_and_an_escape_is_masked() -> None:
    """Same cause, at a cut (``mask_cut_end``, used when an error message is cut to its
    length): 231709c turned ``50%\\xe9lise%`` (a local part cut inside its "%40") into
    ``50%\\[REDACTED]``; 235eff3/28ae3a6 leave it as it is. 28ae3a6's own test masks
    ``to \\u00e9%`` but not when a "%" stands before the escape."""
    masked, count = mask_cut_end("50%\\xe9lise%")
    assert count == 1, masked
    assert "lise" not in masked, masked


# == records: custom error types beside a masked key ====================================


class _Strict(OperationRecord):
    @field_validator("operation_type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in {"http", "db"}:
            # A custom error that reuses a built-in type's name, as pydantic allows.
            raise PydanticCustomError("value_error", "operation type is not known")
        return value


def test_a_custom_error_named_like_a_builtin_type_beside_a_masked_key() -> None:
    """235eff3 keeps a custom error type by checking its *name* against pydantic's
    built-in ones; a ``PydanticCustomError("value_error", ...)`` (a name pydantic lets
    a validator use) is taken for the built-in, rebuilt without the ``ctx`` that
    ``value_error`` requires, and ``from_exception_data`` raises
    ``TypeError: ValueError: 'error' required in context`` instead of a
    ValidationError. Without the address key the same model raises ValidationError."""
    fields: dict[str, Any] = {
        "operation_type": "mail",
        "operation_name": "send",
        "duration_ms": 1.0,
        "timestamp": datetime.now(timezone.utc),
        "jean.tremblay@example.com": 1,  # an unexpected key: its location is masked
    }
    with pytest.raises(ValidationError) as caught:
        _Strict(**fields)
    assert "jean.tremblay" not in str(caught.value)
    assert "operation type is not known" in str(caught.value)
