"""``plain_row`` only ever says what the full path of ``record_operation`` would say.

The full path is ``MetricsManager._build_row``: names and error message masked
where ``PiiPolicy.contains_pii`` finds something, ``build_row``, then
``PiiPolicy.check_metadata``. Whenever :func:`plain_row` returns a row, the full
path accepts the same input, masks nothing and builds an identical row (values,
their types, key order; the metadata a copy, never the caller's dict). When it
returns None, the full path decides. ``PiiPolicy.plain_keys``, the cache it
relies on, holds only ASCII ``str`` keys the policy cleared, and is emptied with
the verdict cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import math
import tempfile
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from otel_json_exporter import _process_writer, pii
from otel_json_exporter._plain import plain_row
from otel_json_exporter.manager import MetricsManager
from otel_json_exporter.pii import PiiPolicy
from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_INTEGER_DIGITS,
    NEGATIVE_INTEGER_LIMIT,
    OperationRecord,
    QueuedRow,
    build_row,
    queued_row,
    record_from_row,
)
from otel_json_exporter.writer import encode_rows
from tests._strategies import mostly
from tests.conftest import load_records

PII_KEYS = json.loads((Path(__file__).parent / "data" / "pii_keys.json").read_text("utf-8"))
BLOCKED: list[str] = PII_KEYS["blocked"]
ALLOWED: list[str] = PII_KEYS["allowed"]
FIELDS = ("operation_type", "operation_name", "duration_ms", "success", "error_message", "metadata")
BIGGEST = 10**MAX_INTEGER_DIGITS - 1  # the largest integer metadata may hold
SMALLEST = NEGATIVE_INTEGER_LIMIT + 1  # the smallest: a minus sign and 4,299 digits
# Integers too long for metadata; built by index because repr() refuses them,
# and hypothesis shows the strategies it draws from.
TOO_LONG = (BIGGEST + 1, SMALLEST - 1, -BIGGEST, 10**5000)
too_long = st.sampled_from(range(len(TOO_LONG))).map(TOO_LONG.__getitem__)


class Color(enum.IntEnum):
    RED = 1


class Label(str):
    pass


class Ratio(float):
    pass


class PlainDict(dict[Any, Any]):
    """A dict subclass: never the plain case, so it forces the full path."""


class ReadOnly(Mapping[Any, Any]):
    """A mapping that is not a dict."""

    def __init__(self, data: dict[Any, Any]) -> None:
        self._data = data

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


# Text that the PII rule masks (names, error messages) or refuses (metadata values).
PII_TEXTS = [
    "ann@example.org",
    "GET /users/ann@example.org",
    "token=x",
    "GET /x?token=abc&page=2",
    "password=hunter2 failed",
    "postgresql://admin:pw@db.example.com/app",
    "https://bob:pw@h.example/p",
    "GET /p;jsessionid=abc",
    "ann\uff20example.org",  # a full-width at sign
    "\uff41\uff4e\uff4e\uff20\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org",
    "j\u00fcrgen@ex\u00e4mple.de",
]
# Text that holds "@", "=" or "%" or is not ASCII, yet holds no PII: the plain path
# must still leave it to the full path, which accepts it.
ODD_TEXTS = [
    "a=b",
    "@",
    "=",
    "x@y",
    "page=2",
    "50%",
    "%40",
    "caf\u00e9",
    "\u65e5\u672c",
    "a\ud800",
    "é" * 3,
]

ASCII = st.characters(max_codepoint=127)  # control characters included
PLAIN_ASCII = st.characters(max_codepoint=127, blacklist_characters="@=%")
plain_texts = st.text(PLAIN_ASCII, min_size=1, max_size=24)
embedded_pii = st.tuples(
    st.text(PLAIN_ASCII, max_size=6), st.sampled_from(PII_TEXTS + ODD_TEXTS), st.text(max_size=4)
).map("".join)


names = mostly(
    plain_texts,
    st.text(ASCII, max_size=24),
    st.text(max_size=12),
    embedded_pii,
    st.sampled_from([*PII_TEXTS, *ODD_TEXTS, "", Label("GET /x"), 5, None, b"x"]),
    weight=5,
)
durations = mostly(
    st.floats(0, 1e12) | st.sampled_from([0.0, -0.0, 5e-324, 1e-7, 1e22, 1.7976931348623157e308]),
    st.floats(),
    st.integers(-5, 10**20),
    st.sampled_from(
        [
            *(math.nan, -math.nan, math.inf, -math.inf, -1.0, -5e-324, True, False, 0, 7),
            *(Ratio(1.5), Color.RED, "5", None, Decimal("1.5")),
        ]
    ),
    weight=5,
)
successes = mostly(st.booleans(), st.sampled_from([1, 0, "true", None]), weight=8)
error_messages = mostly(
    st.none() | st.text(PLAIN_ASCII, max_size=60) | st.just("e" * MAX_ERROR_MESSAGE_LENGTH),
    st.text(ASCII, max_size=60),
    st.text(max_size=20),
    embedded_pii,
    st.integers(MAX_ERROR_MESSAGE_LENGTH - 3, MAX_ERROR_MESSAGE_LENGTH + 3).map(lambda n: "e" * n),
    st.sampled_from(
        [
            *(*PII_TEXTS, *ODD_TEXTS, "", 42, Label("boom")),
            *("x" * 2000, "x" * 999 + "@", "ann@example.org " + "x" * 1000, "\u00e9" * 1000),
            "x" * (MAX_ERROR_MESSAGE_LENGTH - 1) + "\udc00",
        ]
    ),
    weight=5,
)

metadata_keys = mostly(
    st.sampled_from(ALLOWED) | st.text(PLAIN_ASCII, max_size=10),
    st.sampled_from(BLOCKED),
    st.text(max_size=6),
    st.sampled_from(
        ["", "x=1", "a@b.io", "\uff45\uff4d\uff41\uff49\uff4c", "r\u00e9gion", "k\ud800"]
    ),
    st.sampled_from([Label("region"), Label("email"), 1, None]),
    weight=6,
)
plain_values = (
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.sampled_from([BIGGEST, SMALLEST, -0.0, 5e-324, 1e-7, 1e22])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(PLAIN_ASCII, max_size=12)
)
odd_values = st.one_of(
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    st.text(ASCII, max_size=12),
    too_long,
    st.sampled_from(
        [
            *(math.nan, math.inf, -math.inf, *PII_TEXTS, *ODD_TEXTS, Color.RED, Label("x")),
            *(Ratio(0.5), b"x", (1,), 1 + 2j, Decimal("1")),
        ]
    ),
)
values = mostly(plain_values, odd_values, weight=8)
nested_values = st.recursive(
    values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(metadata_keys, inner, max_size=3),
    max_leaves=6,
)
flat_dicts = st.dictionaries(metadata_keys, values, max_size=5)
metadatas = mostly(
    st.none() | flat_dicts,
    st.dictionaries(metadata_keys, nested_values, min_size=1, max_size=4),
    flat_dicts.map(PlainDict),
    flat_dicts.map(OrderedDict),
    flat_dicts.map(MappingProxyType),
    flat_dicts.map(ReadOnly),
    st.sampled_from([[], "x", 3, [("region", 1)]]),
    weight=4,
)
policies = st.sampled_from(["default", "blocked", "allowed"])
# record_operation's arguments, each drawn as above
RECORD_FIELDS = {
    "operation_type": names,
    "operation_name": names,
    "duration_ms": durations,
    "success": successes,
    "error_message": error_messages,
    "metadata": metadatas,
}


def new_policy(kind: str) -> PiiPolicy:
    if kind == "blocked":
        return PiiPolicy(blocked_keys={"region", "tenant"})
    if kind == "allowed":
        return PiiPolicy(allowed_keys={"email", "name"})
    return PiiPolicy()


def str_keys(metadata: Any) -> list[str]:
    if isinstance(metadata, Mapping):
        return [key for key in metadata if isinstance(key, str)]
    return []


def assert_identical(ours: Any, theirs: Any) -> None:
    """Equal values of the same types, dict keys in the same order, -0.0 is not 0.0."""
    assert type(ours) is type(theirs)
    if isinstance(ours, dict):
        assert [(type(key), key) for key in ours] == [(type(key), key) for key in theirs]
        for key in ours:
            assert_identical(ours[key], theirs[key])
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs, strict=True):
            assert_identical(mine, other)
    elif isinstance(ours, float):
        assert repr(ours) == repr(theirs)
    else:
        assert ours == theirs


def assert_cache_is_sound(policy: PiiPolicy) -> None:
    """Every key in plain_keys is an ASCII str this policy (and a fresh copy of it) cleared."""
    fresh = PiiPolicy(blocked_keys=policy.blocked_keys, allowed_keys=policy.allowed_keys)
    for key in policy.plain_keys:
        assert type(key) is str
        assert key.isascii()
        assert policy._verdicts.get(key) is False
        assert fresh.is_pii_key(key) is False
        if not policy.allowed_keys:
            assert key not in BLOCKED
    assert len(policy.plain_keys) <= pii._CACHE_LIMIT


@contextlib.contextmanager
def running(directory: Path, policy: PiiPolicy) -> Iterator[MetricsManager]:
    manager = MetricsManager(directory, flush_interval_seconds=60.0, pii_policy=policy)
    manager.start_sync()
    try:
        yield manager
    finally:
        manager.stop_sync()


def full_path(
    manager: MetricsManager, fields: dict[str, Any], timestamp_us: int | None = None
) -> tuple[QueuedRow | None, int]:
    """The full path's queued row (None when refused) and how many parts it masked."""
    before = manager.stats()
    moment = time.time_ns() // 1000 if timestamp_us is None else timestamp_us
    try:
        row = manager._build_row(*row_arguments(fields, moment))
    except ValueError:
        after = manager.stats()
        assert after.total_rejected == before.total_rejected + 1
        assert after.pii_redacted == before.pii_redacted
        return None, 0
    after = manager.stats()
    assert after.total_rejected == before.total_rejected
    return row, after.pii_redacted - before.pii_redacted


def row_arguments(
    fields: dict[str, Any], timestamp_us: int
) -> tuple[Any, Any, Any, int, Any, Any, Any]:
    """``fields`` in the order ``build_row`` takes them, the clock reading fourth."""
    return (
        fields["operation_type"],
        fields["operation_name"],
        fields["duration_ms"],
        timestamp_us,
        fields["success"],
        fields["error_message"],
        fields["metadata"],
    )


def plain(fields: dict[str, Any], timestamp_us: int, policy: PiiPolicy) -> QueuedRow | None:
    return plain_row(*row_arguments(fields, timestamp_us), policy.plain_keys)


def assert_full_path_agrees(
    row: QueuedRow, fields: dict[str, Any], timestamp_us: int, manager: MetricsManager
) -> None:
    """The full path accepts ``fields``, masks nothing and queues ``row``."""
    theirs, redacted = full_path(manager, fields, timestamp_us)
    assert theirs is not None, "plain_row accepted what the full path refuses"
    assert redacted == 0, "plain_row accepted what the full path masks"
    # Given the same clock reading, the full path builds the very same row.
    assert_identical(row, theirs)
    assert type(row[3]) is int
    assert row[3] == timestamp_us
    # With the same clock reading, build_row (what the full path calls) gives this row.
    built = build_row(*row_arguments(fields, timestamp_us))
    assert_identical(row, queued_row(built))
    # In a batch file it is the record's model_dump_json, as the row unqueued would be.
    moment = datetime.now(timezone.utc)
    encoded = encode_rows([row], moment)
    assert encoded == encode_rows([built], moment)
    assert record_from_row(built).model_dump_json().encode() in encoded.split(b"\n")
    for name in ("operation_type", "operation_name", "error_message"):
        text = fields[name]
        if isinstance(text, str):
            assert not manager.pii_policy.contains_pii(text)


def typical_fields(changes: dict[str, Any]) -> dict[str, Any]:
    """A plain API request record, with ``changes``."""
    fields = {
        "operation_type": "api_request",
        "operation_name": "GET /api/users",
        "duration_ms": 42.5,
        "success": True,
        "error_message": None,
        "metadata": {"status_code": 200},
    }
    return {**fields, **changes}


class TestSameAsTheFullPath:
    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        **RECORD_FIELDS,
        policy_kind=policies,
        scenario=st.sampled_from(["fresh", "warmed", "after the full path"]),
        warm_keys=st.lists(metadata_keys, max_size=6),
        warm_metadata_keys=st.booleans(),
    )
    def test_any_input(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        policy_kind: str,
        scenario: str,
        warm_keys: list[Any],
        warm_metadata_keys: bool,
        **fields: Any,
    ) -> None:
        policy = new_policy(policy_kind)
        if scenario == "warmed":
            keys = [key for key in warm_keys if isinstance(key, str)]
            if warm_metadata_keys:
                keys += str_keys(fields["metadata"])
            for key in keys:
                policy.is_pii_key(key)
        directory = tmp_path_factory.getbasetemp() / "any-input"
        with running(directory, policy) as manager:
            if scenario == "after the full path":
                full_path(manager, fields)
            timestamp_us = time.time_ns() // 1000
            row = plain(fields, timestamp_us, policy)
            event(f"plain_row: {'a row' if row is not None else 'None'}")  # shows the mix
            if row is not None:
                assert_full_path_agrees(row, fields, timestamp_us, manager)
            else:
                full_path(manager, fields)  # refused or accepted: either is the full path's say
        assert_cache_is_sound(policy)

    @settings(max_examples=250, deadline=None)
    @given(
        operation_type=plain_texts,
        operation_name=plain_texts,
        duration_ms=st.floats(0, 1e12) | st.sampled_from([0.0, -0.0, 5e-324, 1e22]),
        success=st.booleans(),
        error_message=st.none()
        # Not a database error's words ("Duplicate entry", which Hypothesis takes from the
        # package's own constants): the plain path leaves those to the full path's masking.
        | st.text(PLAIN_ASCII, max_size=80).filter(lambda text: not pii.holds_database_values(text))
        | st.just("e" * MAX_ERROR_MESSAGE_LENGTH),
        metadata=st.none()
        | st.dictionaries(
            st.sampled_from(ALLOWED),
            plain_values | st.sampled_from([BIGGEST, SMALLEST, -0.0, 1e-7, 1e22]),
            max_size=8,
        ),
        warm_by=st.sampled_from(["is_pii_key", "the full path"]),
    )
    def test_plain_input_takes_the_plain_path(
        self, tmp_path_factory: pytest.TempPathFactory, warm_by: str, **fields: Any
    ) -> None:
        """The common case is accepted (the check above is not vacuous) and identical."""
        policy = PiiPolicy()
        directory = tmp_path_factory.getbasetemp() / "plain-input"
        with running(directory, policy) as manager:
            if warm_by == "is_pii_key":
                for key in str_keys(fields["metadata"]):
                    assert policy.is_pii_key(key) is False
            else:
                assert full_path(manager, fields)[0] is not None
            timestamp_us = time.time_ns() // 1000
            row = plain(fields, timestamp_us, policy)
            assert row is not None
            assert_full_path_agrees(row, fields, timestamp_us, manager)
        assert_cache_is_sound(policy)

    @pytest.mark.parametrize(
        "changes",
        [
            {},
            {"metadata": None},
            {"metadata": {}},
            {"error_message": "boom"},
            {"error_message": ""},
            {"error_message": "e" * MAX_ERROR_MESSAGE_LENGTH},
            {"duration_ms": -0.0},
            {"duration_ms": 0.0},
            {"success": False},
            {"metadata": {"region": BIGGEST, "count": SMALLEST}},
            {"metadata": {"region": -0.0, "count": 1e-7, "database": 1e22}},
            {"metadata": {"region": None, "cache_hit": True, "count": 0}},
            {"operation_name": "GET /api/users?page"},
            {"operation_name": "\t\x00\x7f"},
        ],
    )
    def test_chosen_plain_inputs(self, tmp_path: Path, changes: dict[str, Any]) -> None:
        fields = typical_fields(
            {"metadata": {"status_code": 200, "region": "us-east", "cache_hit": False}, **changes}
        )
        policy = PiiPolicy()
        for key in str_keys(fields["metadata"]):
            policy.is_pii_key(key)
        with running(tmp_path, policy) as manager:
            row = plain(fields, 1_765_872_000_123_456, policy)
            assert row is not None
            assert_full_path_agrees(row, fields, 1_765_872_000_123_456, manager)

    @pytest.mark.parametrize(
        "changes",
        [
            *({"operation_name": text} for text in PII_TEXTS + ODD_TEXTS),
            *({"operation_type": text} for text in PII_TEXTS),
            *({"error_message": text} for text in PII_TEXTS + ODD_TEXTS),
            {"operation_name": ""},
            {"operation_name": Label("GET /")},
            {"operation_name": 5},
            {"error_message": "e" * (MAX_ERROR_MESSAGE_LENGTH + 1)},
            {"error_message": Label("boom")},
            {"duration_ms": math.nan},
            {"duration_ms": math.inf},
            {"duration_ms": -1.0},
            {"duration_ms": 5},
            {"duration_ms": True},
            {"duration_ms": Ratio(1.5)},
            {"success": 1},
            {"metadata": PlainDict(region="us-east")},
            {"metadata": OrderedDict(region="us-east")},
            {"metadata": MappingProxyType({"region": "us-east"})},
            {"metadata": ReadOnly({"region": "us-east"})},
            {"metadata": {"region": BIGGEST + 1}},
            {"metadata": {"region": SMALLEST - 1}},
            {"metadata": {"region": -BIGGEST}},
            {"metadata": {"region": 10**5000}},
            {"metadata": {"region": math.nan}},
            {"metadata": {"region": -math.inf}},
            {"metadata": {"region": {"nested": 1}}},
            {"metadata": {"region": [1, 2]}},
            {"metadata": {"region": Color.RED}},
            {"metadata": {"region": Label("x")}},
            {"metadata": {"region": "caf\u00e9"}},
            {"metadata": {"region": "a\ud800"}},  # a lone surrogate: the serialiser refuses it
            {"metadata": {"region": "a=b"}},
            {"metadata": {"region": "x@y"}},
            *({"metadata": {"region": text}} for text in PII_TEXTS),
            *({"metadata": {key: "x"}} for key in BLOCKED),
            {"metadata": {"r\u00e9gion": "x"}},
            {"metadata": {"never_seen_before": "x"}},
        ],
    )
    def test_left_to_the_full_path(self, tmp_path: Path, changes: dict[str, Any]) -> None:
        """These are not plain (even with every key warmed); the full path decides."""
        fields = typical_fields(changes)
        policy = PiiPolicy()
        for key in ["status_code", "region", "nested"]:
            policy.is_pii_key(key)
        if "never_seen_before" not in str_keys(fields["metadata"]):
            for key in str_keys(fields["metadata"]):
                policy.is_pii_key(key)
        assert plain(fields, 1_765_872_000_123_456, policy) is None
        with running(tmp_path, policy) as manager:
            full_path(manager, fields)  # it may accept, mask or refuse: not plain_row's business
        assert_cache_is_sound(policy)

    def test_the_row_holds_a_copy_of_the_callers_metadata(self) -> None:
        policy = PiiPolicy()
        policy.is_pii_key("region")
        metadata = {"region": "us-east"}
        row = plain_row("job", "nightly", 1.5, 0, True, None, metadata, policy.plain_keys)
        assert row is not None
        metadata["region"] = "eu-west"
        assert row[6] == b'{"region":"us-east"}'
        empty = plain_row("job", "nightly", 1.5, 0, True, None, None, policy.plain_keys)
        assert empty is not None
        assert empty[6] == b"{}"


plain_records = st.fixed_dictionaries(
    {
        "operation_type": plain_texts,
        "operation_name": plain_texts,
        "duration_ms": st.floats(0, 1e12) | st.sampled_from([-0.0, 5e-324, 1e22]),
        "success": st.booleans(),
        "error_message": st.none() | st.text(PLAIN_ASCII, max_size=MAX_ERROR_MESSAGE_LENGTH),
        "metadata": st.none()
        | st.dictionaries(
            st.sampled_from(ALLOWED)
            | st.text(PLAIN_ASCII, max_size=10).filter(lambda key: not PiiPolicy().is_pii_key(key)),
            plain_values | st.sampled_from([BIGGEST, SMALLEST, 1e-7]),
            max_size=6,
        ),
    }
)


class TestEndToEnd:
    @settings(max_examples=25, deadline=None)
    @given(inputs=st.lists(plain_records, min_size=1, max_size=8))
    def test_plain_records_land_on_disk_as_the_full_path_writes_them(
        self, tmp_path_factory: pytest.TempPathFactory, inputs: list[dict[str, Any]]
    ) -> None:
        """Each input is recorded twice: as a dict subclass (never plain: the full path),
        then as a dict once the keys are cleared (the plain path). The files hold the same."""
        directory = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
        policy = PiiPolicy()

        async def record_all() -> MetricsManager:
            manager = MetricsManager(directory, flush_interval_seconds=60.0, pii_policy=policy)
            await manager.start()
            for fields in inputs:
                metadata = fields["metadata"]
                slow = {**fields, "metadata": PlainDict(metadata or {})}
                assert plain(slow, 0, policy) is None
                await manager.record_operation(**slow)
                assert plain(fields, 0, policy) is not None  # so record_operation takes it
                await manager.record_operation(**fields)
            await manager.stop()
            return manager

        manager = asyncio.run(record_all())
        stats = manager.stats()
        assert stats.total_persisted == 2 * len(inputs)
        assert stats.pii_redacted == 0
        assert stats.total_rejected == 0
        records = load_records(directory)
        assert len(records) == 2 * len(inputs)
        lines = b"".join(path.read_bytes() for path in sorted(directory.glob("*.json")))
        for index, fields in enumerate(inputs):
            by_full, by_plain = records[2 * index], records[2 * index + 1]
            assert by_full.timestamp <= by_plain.timestamp
            same_moment = by_plain.model_copy(update={"timestamp": by_full.timestamp})
            assert same_moment.model_dump_json() == by_full.model_dump_json()
            assert_identical(
                same_moment.model_dump(), by_full.model_dump()
            )  # types too: -0.0, ints, key order
            assert by_plain.operation_name == fields["operation_name"]
            assert by_plain.metadata == (fields["metadata"] or {})
            for record in (by_full, by_plain):
                assert record.model_dump_json().encode() in lines

    async def test_record_operation_plain_then_full_agree_with_a_started_manager(
        self, storage: Path
    ) -> None:
        """A record refused by the full path is refused every time, warmed cache or not."""
        policy = PiiPolicy()
        manager = MetricsManager(storage, flush_interval_seconds=60.0, pii_policy=policy)
        await manager.start()
        await manager.record_operation("job", "run", 1.0, metadata={"region": "us"})
        await manager.record_operation("job", "run", 2.0, metadata={"region": "us"})
        for _ in range(2):
            with pytest.raises(ValueError, match="'email' is PII"):
                await manager.record_operation("job", "run", 1.0, metadata={"email": "x"})
            with pytest.raises(ValueError, match="e-mail address"):
                await manager.record_operation("job", "run", 1.0, metadata={"region": "a@b.io"})
        await manager.record_operation(
            "job", "mail ann@example.org", 3.0, metadata={"region": "us"}
        )
        await manager.stop()
        stats = manager.stats()
        assert stats.total_rejected == 4
        assert stats.pii_redacted == 1
        records = load_records(storage)
        assert [record.duration_ms for record in records] == [1.0, 2.0, 3.0]
        assert records[2].operation_name == "mail [REDACTED]"
        assert "email" not in policy.plain_keys
        assert "region" in policy.plain_keys


def shape(value: Any) -> Any:
    """``value`` with the exact type of every part beside it: ``True`` is not ``1`` here."""
    if isinstance(value, dict):
        return dict, [(shape(key), shape(item)) for key, item in value.items()]
    if isinstance(value, (list, tuple)):
        return type(value), [shape(item) for item in value]
    return type(value), value


class TestOnTheWriterProcessPipe:
    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(**RECORD_FIELDS)
    def test_every_row_it_queues_goes_as_marshal_and_arrives_as_the_pickle_would_bring_it(
        self, tmp_path_factory: pytest.TempPathFactory, **fields: Any
    ) -> None:
        """A writer process is sent queued rows with ``marshal``, which is exact for them
        only because they hold exact builtins: whatever the input, both ways agree."""
        policy = PiiPolicy()
        timestamp_us = time.time_ns() // 1000
        with running(tmp_path_factory.getbasetemp() / "pipe", policy) as manager:
            rows = [full_path(manager, fields, timestamp_us)[0]]
            for key in str_keys(fields["metadata"]):
                policy.is_pii_key(key)  # cleared keys: plain_row may take the input now
            rows.append(plain(fields, timestamp_us, policy))
        queued = [row for row in rows if row is not None]
        event(f"rows queued: {len(queued)}")
        if not queued:
            return
        message = ("write", queued)
        codec, payload = _process_writer._encode(message)
        assert codec == _process_writer._MARSHALLED
        marshalled = _process_writer._decode(codec, payload)
        pickled = _process_writer._decode(
            _process_writer._PICKLED, _process_writer._pickle(message)
        )
        assert shape(marshalled) == shape(pickled) == shape(message)


class TestPlainKeys:
    @settings(max_examples=150, deadline=None)
    @given(
        keys=st.lists(metadata_keys.filter(lambda key: isinstance(key, str)), max_size=30),
        policy_kind=policies,
    )
    def test_holds_only_ascii_keys_the_policy_cleared(
        self, keys: list[str], policy_kind: str
    ) -> None:
        policy = new_policy(policy_kind)
        for key in keys:
            verdict = policy.is_pii_key(key)
            if verdict:
                assert key not in policy.plain_keys
        for key in keys:
            if type(key) is str and key.isascii() and not policy.is_pii_key(key):
                # Absent only when a str subclass equal to it was judged first.
                assert key in policy.plain_keys or any(
                    type(other) is not str for other in policy._verdicts if other == key
                )
        assert_cache_is_sound(policy)

    def test_the_pii_keys_of_the_table_never_enter(self) -> None:
        policy = PiiPolicy()
        for key in BLOCKED:
            assert policy.is_pii_key(key) is True
        policy.check_metadata({"region": 1, "count": 2})
        for key in BLOCKED:
            with pytest.raises(ValueError, match="is PII"):
                policy.check_metadata({key: "x"})
        assert policy.plain_keys.isdisjoint(BLOCKED)
        for key in ALLOWED:
            assert policy.is_pii_key(key) is False
        assert set(ALLOWED) <= policy.plain_keys
        assert_cache_is_sound(policy)

    def test_non_ascii_keys_never_enter_and_a_str_subclass_enters_as_its_text(self) -> None:
        policy = PiiPolicy()
        assert policy.is_pii_key("r\u00e9gion") is False
        assert policy.is_pii_key(Label("tenant")) is False
        assert "r\u00e9gion" not in policy.plain_keys
        assert all(type(key) is str for key in policy.plain_keys)
        # A subclass is judged, and remembered, by its text: the exact str.
        assert "tenant" in policy.plain_keys

    def test_emptied_with_the_verdict_cache_when_full(self) -> None:
        limit = pii._CACHE_LIMIT
        policy = PiiPolicy()
        for index in range(limit):
            assert policy.is_pii_key(f"plain_{index}") is False
        assert len(policy._verdicts) == limit
        assert len(policy.plain_keys) == limit
        row = plain_row("job", "run", 1.0, 0, True, None, {"plain_0": 1}, policy.plain_keys)
        assert row is not None
        assert policy.is_pii_key("user.email") is True  # one key more: both are emptied
        assert policy._verdicts == {"user.email": True}
        assert set(policy.plain_keys) == set()
        # A key cleared before is no longer plain: the full path must see it again.
        assert (
            plain_row("job", "run", 1.0, 0, True, None, {"plain_0": 1}, policy.plain_keys) is None
        )
        for index in range(limit - 1):
            policy.is_pii_key(f"other_{index}")
        assert len(policy.plain_keys) == limit - 1
        assert policy.is_pii_key("fresh") is False
        assert set(policy.plain_keys) == {"fresh"}
        assert policy._verdicts == {"fresh": False}
        assert_cache_is_sound(policy)

    def test_full_cache_in_a_running_manager(self, tmp_path: Path) -> None:
        """Past the limit the full path still refuses PII and the plain path still agrees."""
        limit = pii._CACHE_LIMIT
        policy = PiiPolicy()

        async def scenario() -> MetricsManager:
            manager = MetricsManager(tmp_path, flush_interval_seconds=60.0, pii_policy=policy)
            await manager.start()
            for index in range(limit + 10):
                await manager.record_operation("job", "run", 1.0, metadata={f"k{index}": index})
                assert len(policy.plain_keys) <= limit
                if index % 500 == 0:
                    with pytest.raises(ValueError, match="is PII"):
                        await manager.record_operation("job", "run", 1.0, metadata={"token": 1})
            await manager.stop()
            return manager

        manager = asyncio.run(scenario())
        assert manager.stats().total_persisted == limit + 10
        assert manager.stats().total_rejected == len(range(0, limit + 10, 500))
        assert len(load_records(tmp_path)) == limit + 10
        assert_cache_is_sound(policy)

    @pytest.mark.parametrize("spelling", ["tenant", "Tenant", "TENANT", "tenant.", "x-tenant"])
    async def test_a_key_blocked_by_the_policy_never_enters(
        self, storage: Path, spelling: str
    ) -> None:
        policy = PiiPolicy(blocked_keys={"tenant", "x_tenant"})
        assert PiiPolicy().is_pii_key(spelling) is False  # the rule alone would clear it
        manager = MetricsManager(storage, flush_interval_seconds=60.0, pii_policy=policy)
        await manager.start()
        for _ in range(3):
            with pytest.raises(ValueError, match="is PII"):
                await manager.record_operation("job", "run", 1.0, metadata={spelling: "acme"})
            assert spelling not in policy.plain_keys
            row = plain_row("job", "run", 1.0, 0, True, None, {spelling: "a"}, policy.plain_keys)
            assert row is None
        for index in range(pii._CACHE_LIMIT + 1):  # through a clearing of the cache
            policy.is_pii_key(f"k{index}")
            policy.is_pii_key(spelling)
            assert spelling not in policy.plain_keys
        await manager.stop()
        assert manager.stats().total_rejected == 3
        assert load_records(storage) == []

    async def test_a_key_allowed_by_the_policy_enters_and_both_paths_accept(
        self, storage: Path
    ) -> None:
        policy = PiiPolicy(allowed_keys={"email"})
        manager = MetricsManager(storage, flush_interval_seconds=60.0, pii_policy=policy)
        await manager.start()
        await manager.record_operation("job", "run", 1.0, metadata={"email": "hashed"})
        assert "email" in policy.plain_keys
        assert plain_row("job", "run", 2.0, 0, True, None, {"email": "h"}, policy.plain_keys)
        await manager.record_operation("job", "run", 2.0, metadata={"email": "hashed"})
        with pytest.raises(ValueError, match="e-mail address"):
            await manager.record_operation("job", "run", 3.0, metadata={"email": "a@b.io"})
        await manager.stop()
        assert [record.metadata for record in load_records(storage)] == [{"email": "hashed"}] * 2


def test_operation_record_fields_match_the_row_order() -> None:
    """The differential above relies on the row holding the fields in model order."""
    assert tuple(OperationRecord.model_fields) == (
        *FIELDS[:3],
        "timestamp",
        *FIELDS[3:],
    )


class HashesOnce:
    """A key equal to ``"region"`` whose hash fails after the first (taken by the dict)."""

    def __init__(self) -> None:
        self.hashed = 0

    def __hash__(self) -> int:
        self.hashed += 1
        if self.hashed > 1:
            raise RuntimeError("hashed again")
        return hash("region")

    def __eq__(self, other: object) -> bool:
        return other == "region"


async def test_a_key_that_is_no_str_is_refused_before_it_is_hashed(storage: Path) -> None:
    """plain_row looks at the keys' types before it looks them up among the cleared keys,
    so such a key reaches the full path, whose error is a ValueError like any other."""
    policy = PiiPolicy()
    assert policy.is_pii_key("region") is False
    key = HashesOnce()
    metadata = {key: "us-east"}
    assert plain_row("job", "run", 1.0, 0, True, None, metadata, policy.plain_keys) is None
    assert key.hashed == 1
    manager = MetricsManager(storage, flush_interval_seconds=60.0, pii_policy=policy)
    await manager.start()
    with pytest.raises(ValueError, match="keys must be strings"):
        await manager.record_operation("job", "run", 1.0, metadata=metadata)  # type: ignore[arg-type]
    await manager.stop()
    assert manager.stats().total_rejected == 1
