"""``build_record`` is ``OperationRecord.model_validate``, only faster.

Whatever the input, both accept or both refuse; when they accept, the records
are equal field by field (values and their types), serialise to the same bytes
and behave the same under copy and pickle; when they refuse, pydantic's errors
are the same.
"""

from __future__ import annotations

import copy
import enum
import math
import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    OperationRecord,
    build_record,
)
from tests._strategies import mostly

FIELDS = tuple(OperationRecord.model_fields)
NOW = datetime(2025, 12, 16, 8, 0, 0, 123456, tzinfo=timezone.utc)


class Color(enum.IntEnum):
    RED = 1


class Label(str):
    pass


ASCII = st.characters(min_codepoint=32, max_codepoint=126)
odd_texts = st.text(max_size=12) | st.sampled_from(["", "é", "a\ud800", Label("x"), 5, None])
names = mostly(st.text(ASCII, min_size=1, max_size=12), odd_texts)
durations = mostly(
    st.floats(0, 1e9),
    st.floats(),
    st.integers(-5, 10**6),
    st.sampled_from([0.0, -0.0, 1e308, math.inf, -1.0, True, Color.RED, "5", None]),
    weight=1,
)
moments = st.sampled_from(
    [
        *[NOW] * 4,
        NOW.astimezone(timezone(timedelta(hours=-5))),
        NOW.replace(tzinfo=None),
        "2025-12-16T08:00:00.000000+00:00",
        "2025-12-16T08:00:00Z",
        0,
    ]
)
successes = mostly(st.booleans(), st.sampled_from([1, 0, "true", None]))
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from([Color.RED, Label("x"), b"x", (1,), 10**5000, "\udc00"])
)
plain = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(-1e6, 1e6)
metadata = mostly(
    st.dictionaries(st.text(ASCII, max_size=8), plain | st.text(ASCII), max_size=6),
    st.dictionaries(st.text(max_size=4) | st.integers(0, 2), scalars, max_size=5),
    st.dictionaries(
        st.text(max_size=4),
        st.lists(scalars, max_size=2) | st.dictionaries(st.text(max_size=3), scalars),
        max_size=3,
    ),
    st.sampled_from([None, [], "x", 3]),
    weight=1,
)
errors = mostly(
    st.none() | st.text(ASCII, max_size=40),
    odd_texts,
    st.sampled_from(["x" * MAX_ERROR_MESSAGE_LENGTH, "x" * (MAX_ERROR_MESSAGE_LENGTH + 1), 42]),
)


def by_pydantic(fields: dict[str, Any]) -> OperationRecord:
    return OperationRecord.model_validate(fields)


def outcome(build: Any, fields: dict[str, Any]) -> tuple[str, Any]:
    try:
        return "accepted", build(fields)
    except ValidationError as exc:
        return "refused", exc.errors(include_url=False, include_context=False, include_input=False)


def fast(fields: dict[str, Any]) -> OperationRecord:
    return build_record(*(fields[name] for name in FIELDS))


def assert_same_record(ours: OperationRecord, theirs: OperationRecord) -> None:
    assert type(ours) is OperationRecord
    assert ours == theirs
    assert ours.__dict__ == theirs.__dict__
    assert [type(value) for value in ours.__dict__.values()] == [
        type(value) for value in theirs.__dict__.values()
    ]
    assert list(ours.__dict__) == list(theirs.__dict__)
    assert ours.model_fields_set == theirs.model_fields_set
    assert ours.__pydantic_extra__ == theirs.__pydantic_extra__
    assert ours.__pydantic_private__ == theirs.__pydantic_private__
    assert ours.model_dump_json() == theirs.model_dump_json()
    assert ours.model_dump() == theirs.model_dump()


def assert_same_outcome(fields: dict[str, Any]) -> None:
    ours, theirs = outcome(fast, fields), outcome(by_pydantic, fields)
    assert ours[0] == theirs[0]
    if ours[0] == "accepted":
        assert_same_record(ours[1], theirs[1])
    else:
        assert ours[1] == theirs[1]


class TestSameAsModelValidate:
    @settings(max_examples=2000, deadline=None)
    @given(
        operation_type=names,
        operation_name=names,
        duration_ms=durations,
        timestamp=moments,
        success=successes,
        error_message=errors,
        metadata=metadata,
    )
    def test_any_input(self, **fields: Any) -> None:
        assert_same_outcome(fields)

    @pytest.mark.parametrize(
        "changes",
        [
            {},
            {"error_message": "boom"},
            {"metadata": None},
            {"metadata": {"nested": {"list": [1, 2.5, None]}}},
            {"duration_ms": 0.0},
            {"success": False},
            {"duration_ms": 5},
            {"duration_ms": True},
            {"duration_ms": -0.0},
            {"duration_ms": math.nan},
            {"operation_name": "GET /café"},
            {"operation_name": "GET /a\ud800"},
            {"operation_name": Label("GET /")},
            {"operation_type": ""},
            {"timestamp": NOW.astimezone(timezone(timedelta(hours=2)))},
            {"timestamp": NOW.replace(tzinfo=None)},
            {"error_message": "é" * 3},
            {"error_message": "x\udc00"},
            {"error_message": "x" * (MAX_ERROR_MESSAGE_LENGTH + 1)},
            {"metadata": {"k": math.inf}},
            {"metadata": {1: "x"}},
        ],
    )
    def test_chosen_cases(self, changes: dict[str, Any]) -> None:
        fields = {
            "operation_type": "api_request",
            "operation_name": "GET /api/users",
            "duration_ms": 42.5,
            "timestamp": NOW,
            "success": True,
            "error_message": None,
            "metadata": {"status_code": 200, "region": "us-east", "cache_hit": False},
            **changes,
        }
        assert_same_outcome(fields)


class TestBehaviour:
    def record(self) -> OperationRecord:
        return build_record("job", "nightly", 1.5, NOW, True, None, {"rows": 3})

    def test_metadata_is_a_copy(self) -> None:
        metadata = {"rows": 3}
        record = build_record("job", "nightly", 1.5, NOW, True, None, metadata)
        metadata["rows"] = 4
        assert record.metadata == {"rows": 3}

    def test_frozen(self) -> None:
        record = self.record()
        with pytest.raises(ValidationError):
            record.success = False

    def test_copies_and_pickles_like_a_validated_record(self) -> None:
        record, other = self.record(), self.record()
        changed = record.model_copy(update={"success": False})
        assert changed.success is False
        assert record.success is True
        assert record.model_fields_set == other.model_fields_set == set(FIELDS)
        assert copy.deepcopy(record) == record
        assert pickle.loads(pickle.dumps(record)) == record
        assert OperationRecord.model_validate_json(record.model_dump_json()) == record
