"""Bad input, property-tested: each call raises ValueError or its record reads back equal.

One manager per test function (not per example) records hypothesis' inputs:
random nested metadata (unicode keys and values, huge strings, deep nesting,
NaN and infinities, huge integers, non-JSON types, lone surrogates), random
durations, names, flags and error messages. After every accepted call the
test flushes and reads the one new batch file back through ``MetricsBatch``, so
a record that is mangled, doubled, lost or that corrupts its file fails the
example that caused it. A ValueError must never quote a PII value it was given.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from otel_json_exporter import MetricsBatch, MetricsManager
from otel_json_exporter.pii import DEFAULT_POLICY, mask_database_values
from otel_json_exporter.records import MAX_ERROR_MESSAGE_LENGTH, OperationRecord

CAP = 10.0
MARKER = re.compile(r"pii-[0-9a-f]{10}")
PII_KEYS = json.loads((Path(__file__).parent / "data" / "pii_keys.json").read_text())["blocked"]
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies --------------------------------------------------------------------
# Valid values first: a call made only of these must always be accepted.

valid_characters = st.characters(exclude_categories=["Cs"])  # no lone surrogates
valid_text = st.text(valid_characters, max_size=20)
huge_text = st.builds(
    lambda n, c: c * n,
    st.integers(10_000, 200_000),
    st.characters(exclude_categories=["Cs"], exclude_characters="@"),
)
hexes = st.text("0123456789abcdef", min_size=10, max_size=10)
# Values that could be personal data carry a marker ("pii-" and 10 hex digits), so an
# error message that quotes one is caught wherever it sits (under a PII key, say).
secret_values = hexes.map(lambda h: f"pii-{h}")
json_leaves = st.one_of(
    secret_values,
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**4299 - 1), max_value=10**4299),
    st.sampled_from([10**4300 - 1, -(10**4299 - 1)]),  # 4,300 characters: the most JSON allows
    st.floats(allow_nan=False, allow_infinity=False),
    valid_text.filter(lambda text: not DEFAULT_POLICY.contains_pii(text)),
    huge_text,
)
safe_keys = valid_text.filter(lambda key: not DEFAULT_POLICY.is_pii_key(key))


def nest(depth: int, in_list: bool) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value] if in_list else {"d": value}
    return value


json_values = st.one_of(
    st.recursive(
        json_leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(safe_keys, children, max_size=3)
        ),
        max_leaves=15,
    ),
    st.builds(nest, st.integers(1, 32), st.booleans()),  # as deep as allowed
)
json_metadata = st.one_of(st.none(), st.dictionaries(safe_keys, json_values, max_size=5))
VALID = {
    "operation_type": st.text(valid_characters, min_size=1, max_size=20),
    "operation_name": st.one_of(
        st.text(valid_characters, min_size=1, max_size=40), huge_text.map(lambda t: "n" + t)
    ),
    "duration_ms": st.one_of(st.floats(min_value=0, allow_infinity=False), st.integers(0, 10**30)),
    "success": st.booleans(),
    "error_message": st.one_of(
        st.none(), valid_text, st.text(valid_characters, min_size=990, max_size=1100), huge_text
    ),
    "metadata": json_metadata,
}

# Anything at all: each call may be valid or not, in any way.

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
any_text = st.text(st.one_of(st.characters(), surrogates), max_size=20)
pii_values = st.one_of(
    hexes.map(lambda h: f"pii-{h}@example.com"),
    hexes.map(lambda h: f"contact me at pii-{h}@example.org please"),
)
pii_keys = st.one_of(st.sampled_from(PII_KEYS), hexes.map(lambda h: f"pii-{h}@example.com"))
huge_ints = st.builds(  # more than 4,300 digits: no JSON reader takes them back
    lambda digits, sign: sign * 10**digits, st.integers(4300, 4310), st.sampled_from([1, -1])
)


class Opaque:
    """An arbitrary object: not JSON."""


non_json = st.one_of(
    st.tuples(st.integers()),
    st.sets(st.integers(), max_size=2),
    st.frozensets(st.integers(), max_size=2),
    st.binary(max_size=4),
    st.builds(Opaque),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.complex_numbers(max_magnitude=5),
    st.just(Ellipsis),
)
# One kind of bad value after another, each as likely (a plain one_of would favour
# the kinds made of many branches).
bad_leaves = st.sampled_from(
    [
        st.floats().filter(lambda number: not math.isfinite(number)),
        any_text,
        pii_values,
        huge_ints,
        non_json,
    ]
).flatmap(lambda kind: kind)
bad_keys = st.one_of(any_text, pii_keys, st.integers(), st.none(), st.tuples(st.integers()))
any_values = st.one_of(
    st.recursive(
        st.one_of(json_leaves, bad_leaves),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.one_of(safe_keys, bad_keys), children, max_size=3),
        ),
        max_leaves=12,
    ),
    st.builds(nest, st.integers(28, 40), st.booleans()),  # around the depth limit
)


@st.composite
def one_bad_spot(draw: st.DrawFn) -> dict[Any, Any]:
    """Valid metadata with one bad key or value somewhere inside."""
    metadata = draw(st.dictionaries(safe_keys, json_values, max_size=4))
    holder = metadata
    for _ in range(draw(st.integers(0, 3))):
        holder = holder.setdefault(draw(safe_keys), {})
        if not isinstance(holder, dict):
            break
    else:
        if draw(st.booleans()):
            holder[draw(safe_keys)] = draw(bad_leaves)
        else:
            holder[draw(bad_keys)] = draw(json_leaves)
    return metadata


CHAOS = {
    "operation_type": st.one_of(any_text, st.integers(), st.none(), st.binary(max_size=3)),
    "operation_name": st.one_of(any_text, pii_values, st.integers(), st.none()),
    "duration_ms": st.one_of(
        st.floats(),
        st.integers(min_value=-(10**30), max_value=10**30),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
        st.decimals(allow_nan=True),
    ),
    "success": st.one_of(st.integers(0, 1), st.none(), st.text(max_size=2)),
    "error_message": st.one_of(any_text, pii_values, st.integers(), st.binary(max_size=3)),
    "metadata": st.one_of(
        one_bad_spot(),
        one_bad_spot(),
        st.dictionaries(st.one_of(safe_keys, bad_keys), any_values, max_size=5),
        any_values,  # perhaps not even a dict
    ),
}


VALID_EXAMPLE: dict[str, Any] = {
    "operation_type": "job",
    "operation_name": "step",
    "duration_ms": 1.0,
    "success": True,
    "error_message": None,
    "metadata": None,
}


@st.composite
def valid_calls(draw: st.DrawFn) -> dict[str, Any]:
    return {field: draw(strategy) for field, strategy in VALID.items()}


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid calls with, in most, one or two fields drawn from anything at all."""
    wild = draw(st.lists(st.sampled_from(sorted(CHAOS)), max_size=2))
    return {
        field: draw(CHAOS[field] if field in wild else strategy)
        for field, strategy in VALID.items()
    }


# -- checking ------------------------------------------------------------------------


def same(expected: Any, actual: Any) -> bool:
    """Equal and of the same JSON type: ``True`` is not ``1``, ``1`` is not ``1.0``."""
    if expected is None or isinstance(expected, (bool, str)):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int):
        return type(actual) is int and actual == expected
    if isinstance(expected, float):
        return (
            type(actual) is float
            and actual == expected
            and math.copysign(1, actual) == math.copysign(1, expected)
        )
    if isinstance(expected, list):
        return (
            type(actual) is list
            and len(actual) == len(expected)
            and all(same(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, Mapping):
        return (
            type(actual) is dict
            and list(actual) == list(expected)
            and all(same(expected[key], actual[key]) for key in expected)
        )
    return False


def shape(value: Any) -> Any:
    """What ``value`` is made of, printable even when it holds 4,000-digit integers."""
    if isinstance(value, Mapping):
        return {str(shape(key)): shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 10**20 else f"int of {len(format(value, 'x'))} hex digits"
    if isinstance(value, str) and len(value) > 40:
        return f"str of {len(value)} characters starting {value[:10]!r}"
    return value if isinstance(value, (str, float, bool, type(None))) else type(value).__name__


def expected_text(value: str, *, error: bool = False) -> str:
    """A name or error message as the manager writes it: an error loses the values a
    database error quotes first; then PII is masked as in any free text."""
    if error:
        value = mask_database_values(value)[0]
    if DEFAULT_POLICY.contains_pii(value):
        return DEFAULT_POLICY.mask_free_text(value)[0]
    return value


def strings_in(value: Any) -> Iterator[str]:
    """Every string inside ``value``, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from strings_in(key)
            yield from strings_in(item)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from strings_in(item)


def pii_markers(call: dict[str, Any]) -> set[str]:
    """The marked values (e-mail addresses included) given anywhere in a call."""
    return {marker for text in strings_in(list(call.values())) for marker in MARKER.findall(text)}


class Recorder:
    """One manager and one event loop for all of a test's examples."""

    def __init__(self, storage: Path) -> None:
        self.storage = storage
        self.loop = asyncio.new_event_loop()
        self.manager = MetricsManager(storage, flush_interval_seconds=60.0, max_batch_size=1000)
        self.run(self.manager.start())
        self.seen: set[str] = set()
        self.accepted = 0
        self.rejected = 0

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, CAP))

    def call(self, call: dict[str, Any]) -> OperationRecord | None:
        """Record one call; its record as read back from disk, or None after a ValueError."""
        error: ValueError | None = None
        try:
            self.run(self.manager.record_operation(**call))
        except ValueError as exc:
            error = exc
        if error is not None:
            self.rejected += 1
            message = str(error)
            assert message, "a ValueError must say what is wrong"
            for marker in pii_markers(call):
                assert marker not in message, "a ValueError quoted a PII value"
            assert error.__cause__ is None  # nothing holding the input is chained either
            assert error.__context__ is None
            return None
        self.accepted += 1
        self.run(self.manager.flush())
        new = {name for name in os.listdir(self.storage) if name.startswith("metrics_")}
        new -= self.seen
        assert len(new) == 1, f"one record must make one batch file, got {sorted(new)}"
        (name,) = new
        self.seen.add(name)
        batch = MetricsBatch.model_validate_json((self.storage / name).read_bytes())
        assert name == f"metrics_{batch.batch_id}.json"
        assert batch.total_records == 1
        return batch.records[0]

    def close(self) -> None:
        self.run(self.manager.stop())
        self.loop.close()
        stats = self.manager.stats()
        assert (stats.worker_errors, stats.write_errors, stats.queue_size) == (0, 0, 0)
        assert stats.total_persisted == stats.total_recorded == self.accepted
        assert stats.total_rejected == self.rejected
        assert not [name for name in os.listdir(self.storage) if name.endswith(".tmp")]


def check_read_back(call: dict[str, Any], record: OperationRecord) -> None:
    assert same(call["operation_type"], record.operation_type)
    assert same(expected_text(call["operation_name"]), record.operation_name)
    assert record.duration_ms == float(call["duration_ms"])
    assert type(record.duration_ms) is float
    assert same(call["success"], record.success)
    if call["error_message"] is None:
        assert record.error_message is None
    else:
        wanted = expected_text(call["error_message"], error=True)[:MAX_ERROR_MESSAGE_LENGTH]
        assert same(wanted, record.error_message)
    assert same(call["metadata"] or {}, record.metadata)


@pytest.fixture
def recorder(storage: Path) -> Iterator[Recorder]:
    recorder = Recorder(storage)
    yield recorder
    recorder.close()


class TestRecordOperationProperties:
    def test_any_input_raises_value_error_or_reads_back_equal(self, recorder: Recorder) -> None:
        @SETTINGS
        @given(call=calls())
        def property_(call: dict[str, Any]) -> None:
            record = recorder.call(call)
            if record is not None:
                check_read_back(call, record)

        property_()
        assert recorder.rejected > 0

    def test_metadata_with_one_bad_spot_raises_value_error_or_reads_back_equal(
        self, recorder: Recorder
    ) -> None:
        @SETTINGS
        @given(call=valid_calls(), metadata=one_bad_spot())
        def property_(call: dict[str, Any], metadata: dict[Any, Any]) -> None:
            call["metadata"] = metadata
            note(f"metadata: {shape(metadata)}")  # hypothesis prints the draw, not this
            record = recorder.call(call)
            if record is not None:
                check_read_back(call, record)

        property_()
        assert recorder.rejected > 0

    def test_valid_input_is_always_accepted_and_reads_back_equal(self, recorder: Recorder) -> None:
        @SETTINGS
        @given(call=valid_calls())
        def property_(call: dict[str, Any]) -> None:
            record = recorder.call(call)
            assert record is not None, "a valid call was refused"
            check_read_back(call, record)

        property_()
        assert recorder.rejected == 0


class TestErrorsNeverQuotePii:
    @pytest.mark.parametrize(
        "bad",
        [float("nan"), (1, 2), 10**4300, "lone \ud800", nest(40, False), b"x"],
        ids=["nan", "tuple", "huge int", "surrogate", "too deep", "bytes"],
    )
    @pytest.mark.parametrize("where", ["top", "nested", "in a list"])
    def test_an_address_used_as_a_key_is_masked_in_the_error(
        self, recorder: Recorder, bad: Any, where: str
    ) -> None:
        address = "pii-0123456789@example.com"
        metadata: dict[str, Any] = {address: bad}
        if where == "nested":
            metadata = {"outer": metadata}
        elif where == "in a list":
            metadata = {"items": [1, metadata]}
        call = dict(VALID_EXAMPLE, metadata=metadata)
        assert recorder.call(call) is None  # refused; call() checks the message
        assert recorder.rejected == 1
