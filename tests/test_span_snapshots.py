"""The two halves of the span mapping, and the writer process's half of it.

With ``writer="process"`` the exporter only reads each span
(:func:`snapshot_of`); the snapshot is pickled to the writer process, which
maps it there (:func:`rows_of`). These tests hold that path to the one that
maps in ``export()``: the same rows, the same redaction counts, for real SDK
spans with hostile attributes (PII, ``str`` and ``int`` subclasses, bytes,
nested values), pickled and unpickled exactly as the pipe does.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic_core import to_json

from otel_json_exporter import PiiPolicy, mapping
from otel_json_exporter._process_writer import ProcessBatchWriter, _pickle, _PlainUnpickler
from otel_json_exporter._span_rows import (
    KIND_NAMES,
    SNAPSHOT_FIELDS,
    is_snapshot,
    rows_of,
    snapshot_to_row,
)
from otel_json_exporter.mapping import SpanNotMappable, snapshot_of, span_to_row
from otel_json_exporter.records import _validate_metadata, queued_row
from tests._strategies import mostly
from tests._tricky import LyingFloat, LyingInt, Region, Status500, disguised

Sneaky = disguised(equal_to="note")

POLICY = PiiPolicy(blocked_keys={"tenant"}, allowed_keys={"client_id"})

_plain_text = st.text(st.characters(codec="ascii", exclude_categories=["Cs"]), max_size=20)
_texts = mostly(
    _plain_text,
    st.sampled_from(
        [
            "ann@example.com",
            "reply to bob@mail.example",
            "https://u:pw@shop.example/p?email=a%40b.example&page=2",
            "page=2&token=s3cr3t",
            "/reset/token=abc;jsessionid=x",
            "caf\u00e9 \u00e0 Montr\u00e9al",
            "lone \ud800 surrogate",
            "password=hunter2",
        ]
    ),
    st.text(max_size=15),
)
_scalars = st.one_of(
    _texts,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=12),
    st.sampled_from(
        [b"bob@example.com", Status500.BAD_GATEWAY, Region.CA, LyingInt.OK, LyingFloat.NAN]
    ),
    st.builds(Sneaky, _texts),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from(["a", "email", "Token", "deep"]), inner, max_size=3),
    ),
    max_leaves=6,
)
_keys = mostly(
    st.sampled_from(
        [
            "http.request.method",
            "url.full",
            "url.query",
            "http.target",
            "db.system.name",
            "note",
            "operation.type",
            "http.response.status_code",
        ]
    ),
    st.sampled_from(["email", "user_id", "tenant", "client_id", "x-API-Key", "ann@example.com"]),
    st.builds(Sneaky, st.sampled_from(["url.full", "note", "email"])),
)
# Two keys with one text (a str subclass that lies about its hash beside the plain
# key) become one key once shipped: the record is the same, written last-wins on
# both paths, but a dropped PII key would be counted once instead of twice.
_attributes = st.dictionaries(_keys, _values, max_size=8).filter(
    lambda attributes: len({str.__str__(key) for key in attributes}) == len(attributes)
)


@pytest.fixture(scope="module")
def make_span() -> Iterator[Any]:
    captured = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(captured))
    tracer = provider.get_tracer("tests")

    def make(
        name: str,
        kind: SpanKind,
        attributes: Mapping[str, Any],
        status: Status | None,
        exception: BaseException | None,
    ) -> ReadableSpan:
        captured.clear()
        with tracer.start_as_current_span("parent"):
            span = tracer.start_span(name, kind=kind, attributes=attributes)
            if exception is not None:
                span.record_exception(exception)
            if status is not None:
                span.set_status(status)
            span.end()
        return next(s for s in captured.get_finished_spans() if s.name == name)

    yield make
    provider.shutdown()


def shipped(item: Any) -> Any:
    """What the writer process receives: pickled and read back as the pipe does."""
    return _PlainUnpickler(io.BytesIO(_pickle(item))).load()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=_texts.filter(lambda text: text != "parent"),
    kind=st.sampled_from(list(SpanKind)),
    attributes=_attributes,
    status=st.sampled_from(
        [
            None,
            Status(StatusCode.OK),
            Status(StatusCode.ERROR),
            Status(StatusCode.ERROR, "failed for ann@example.com"),
        ]
    ),
    exception=st.sampled_from([None, ValueError("bad token=abc"), KeyError("x")]),
)
def test_the_writer_process_maps_a_span_as_export_does(
    make_span: Any,
    name: str,
    kind: SpanKind,
    attributes: dict[str, Any],
    status: Status | None,
    exception: BaseException | None,
) -> None:
    span = make_span(name, kind, attributes, status, exception)
    try:
        expected = span_to_row(span, POLICY)
    except ValueError:
        expected = None
    else:  # rows hold builtins only, on this path too (the mapping skips validation)
        assert expected is not None
        for value in _walk(expected[0]):
            assert type(value) in (str, int, float, bool, type(None), dict, list, tuple)
    snapshot = shipped(snapshot_of(span))
    assert is_snapshot(snapshot)
    rows, rejected, redacted = rows_of([snapshot], POLICY)
    if expected is None:
        assert (rows, rejected, redacted) == ([], 1, 0)
    elif type(rows[0][6]) is bytes:  # plain_queued_row: checked and encoded in one pass
        assert (rows, rejected, redacted) == ([queued_row(expected[0])], 0, expected[1])
    else:
        assert (rows, rejected, redacted) == ([expected[0]], 0, expected[1])
        for value in _walk(rows[0]):
            assert type(value) in (str, int, float, bool, type(None), dict, list, tuple)
        # The mapping's metadata skips validation: it must be what validation gives.
        metadata = rows[0][6]
        assert to_json(_validate_metadata(metadata)) == to_json(metadata)
        assert [type(value) for value in _walk(_validate_metadata(metadata))] == [
            type(value) for value in _walk(metadata)
        ]


def as_queued(row: Any) -> Any:
    """A row as the queue holds it: :func:`rows_of` gives plain spans' rows encoded already."""
    return row if type(row[6]) is bytes else queued_row(row)


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _walk(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _walk(item)


class TestSnapshot:
    def test_a_snapshot_is_told_from_a_row_by_its_length(self, make_span: Any) -> None:
        span = make_span("GET /", SpanKind.SERVER, {"http.request.method": "GET"}, None, None)
        snapshot = snapshot_of(span)
        row, _ = span_to_row(span)
        assert (len(snapshot), is_snapshot(snapshot)) == (SNAPSHOT_FIELDS, True)
        assert is_snapshot(row) is False  # type: ignore[arg-type]  # a RecordRow, not a QueuedRow

    def test_the_kind_numbers_are_the_sdks(self) -> None:
        assert {kind.value: kind.name.lower() for kind in SpanKind} == KIND_NAMES

    def test_rows_pass_through_and_snapshots_are_mapped_in_order(self, make_span: Any) -> None:
        first = make_span("one", SpanKind.INTERNAL, {"email": "a@b.example"}, None, None)
        second = make_span("two", SpanKind.CLIENT, {"db.system.name": "pg"}, None, None)
        row, _ = span_to_row(second)  # a RecordRow where rows_of expects a QueuedRow
        rows, rejected, redacted = rows_of([shipped(snapshot_of(first)), row], POLICY)  # type: ignore[list-item]
        assert [r[1] for r in rows] == ["one", "two"]
        assert "email" not in rows[0][6]
        assert (rejected, redacted) == (0, 1)

    def test_a_snapshot_that_cannot_become_a_record_is_rejected_alone(self, make_span: Any) -> None:
        good = make_span("good", SpanKind.INTERNAL, {}, None, None)
        broken = list(snapshot_of(good))
        broken[0] = 12345  # a name that is not text: the mapping refuses it
        rows, rejected, _ = rows_of([tuple(broken), snapshot_of(good)], POLICY)
        assert [r[1] for r in rows] == ["good"]
        assert rejected == 1

    @pytest.mark.parametrize("service", ["shop", None, "shop ann@example.org", "a=b", 7])
    def test_the_added_keys_go_in_alike_before_and_after_the_policy_knows_them(
        self, make_span: Any, service: Any
    ) -> None:
        snapshot = list(snapshot_of(make_span("a", SpanKind.SERVER, {"k": "v"}, None, None)))
        snapshot[10] = service
        policy = PiiPolicy()
        assert not policy.plain_keys
        first = snapshot_to_row(tuple(snapshot), policy)  # judged through the filter
        assert {"trace_id", "span_id", "parent_span_id", "span_kind"} <= policy.plain_keys
        assert snapshot_to_row(tuple(snapshot), policy) == first  # straight in, if plain
        assert list(first[0][6])[:2] == ["k", "trace_id"]

    def test_the_resource_is_read_once_per_resource(self, make_span: Any) -> None:
        span = make_span("a", SpanKind.INTERNAL, {}, None, None)
        other = ReadableSpan(
            name="b",
            context=span.context,
            resource=Resource.create({"service.name": "billing"}),
            start_time=1,
            end_time=2,
        )
        assert snapshot_of(span)[10] == "shop"
        assert snapshot_of(other)[10] == "billing"
        assert snapshot_of(span)[10] == "shop"

    def test_the_fields_behind_the_properties_hold_what_the_properties_give(
        self, make_span: Any
    ) -> None:
        assert mapping._READ_FIELDS is not None  # this SDK keeps them: the fast path is used
        span = make_span("GET /", SpanKind.SERVER, {"http.request.method": "GET"}, None, None)
        assert type(span) is ReadableSpan
        fields, properties = mapping._READ_FIELDS(span), mapping._READ(span)
        assert dict(fields[5]) == dict(properties[5])
        assert fields[:5] + fields[6:] == properties[:5] + properties[6:]

    def test_an_sdk_whose_fields_differ_is_read_through_its_properties(self) -> None:
        class Renamed(ReadableSpan):
            """As if an SDK release kept the name elsewhere and _name meant something else."""

            def __init__(self, name: str, **fields: Any) -> None:
                super().__init__(name, **fields)
                self._label, self._name = name, "something else"

            @property
            def name(self) -> str:
                return self._label

        class Missing(ReadableSpan):
            def __init__(self, name: str, **fields: Any) -> None:
                super().__init__(name, **fields)
                del self._status

            @property
            def status(self) -> Status:
                return Status(StatusCode.UNSET)

        assert mapping._field_reader(Renamed) is None
        assert mapping._field_reader(Missing) is None
        assert mapping._field_reader(ReadableSpan) is not None

    def test_a_span_without_a_start_time_is_not_mappable(self) -> None:
        with pytest.raises(SpanNotMappable, match="no start time"):
            snapshot_of(ReadableSpan(name="unstarted"))

    def test_attributes_without_copy_are_read_too(self) -> None:
        class Frozen(Mapping[str, Any]):
            def __init__(self, items: dict[str, Any]) -> None:
                self._items = items

            def __getitem__(self, key: str) -> Any:
                return self._items[key]

            def __iter__(self) -> Iterator[str]:
                return iter(self._items)

            def __len__(self) -> int:
                return len(self._items)

        class HandBuilt(ReadableSpan):
            @property
            def attributes(self) -> Any:
                return Frozen({"db.system.name": "pg", "email": "a@b.example"})

        span = HandBuilt(name="q", start_time=1, end_time=2)
        assert snapshot_of(span)[6] == {"db.system.name": "pg", "email": "a@b.example"}
        row, redacted = span_to_row(span)
        assert row[0] == "database_query"
        assert "email" not in row[6]
        assert redacted == 1


class TestShipping:
    def test_subclasses_reach_the_child_as_the_plain_values_they_hold(self) -> None:
        value = {
            Sneaky("key"): [Status500.BAD_GATEWAY, Region.CA, Sneaky("a@b.example")],
            "t": (1, 2.5),
        }
        back = shipped(value)
        assert back == {"key": [502, "ca-central-1", "a@b.example"], "t": (1, 2.5)}
        assert [type(item) for item in back["key"]] == [int, str, str]
        assert type(next(iter(back))) is str

    def test_keys_with_one_text_make_the_same_record(self, make_span: Any) -> None:
        attributes = {Sneaky("url.full"): "https://a.example/", "url.full": "https://b.example/"}
        span = make_span("a", SpanKind.INTERNAL, attributes, None, None)
        expected, _ = span_to_row(span, POLICY)
        rows, _, _ = rows_of([shipped(snapshot_of(span))], POLICY)
        assert [as_queued(row) for row in rows] == [queued_row(expected)]
        assert expected[6]["url.full"] == "https://b.example/"

    def test_anything_else_goes_as_its_text_and_builtins_as_they_are(self) -> None:
        class Odd:
            def __str__(self) -> str:
                return "odd"

        back = shipped({"x": Odd(), "s": {1, 2}, "b": bytearray(b"ab")})
        assert back == {"x": "odd", "s": {1, 2}, "b": bytearray(b"ab")}
        assert (type(back["s"]), type(back["b"])) == (set, bytearray)

    def test_what_reading_a_value_raises_names_the_type_only(self) -> None:
        class Leaky:
            def __str__(self) -> str:
                raise ValueError("cannot render ann@example.com")

        class LeakyBytes(bytes):
            def __bytes__(self) -> bytes:
                raise ValueError("ann@example.com")

        for value in (Leaky(), LeakyBytes(b"x")):
            with pytest.raises(pickle.PicklingError) as caught:
                shipped({"x": value})
            assert str(caught.value) == f"cannot read a {type(value).__name__}"
            assert caught.value.__suppress_context__

    @pytest.mark.parametrize("value", [Status500.BAD_GATEWAY, eval, io.BytesIO])
    def test_the_child_finds_no_callable_but_the_plain_types(self, value: Any) -> None:
        payload = pickle.dumps(value)  # by reference: an enum's class, a builtin function
        with pytest.raises(pickle.UnpicklingError, match="not a plain value"):
            _PlainUnpickler(io.BytesIO(payload)).load()

    def test_an_item_whose_text_cannot_be_read_is_not_accepted(self, make_span: Any) -> None:
        class Broken:
            def __str__(self) -> str:
                raise RuntimeError("no text")

        snapshot = list(snapshot_of(make_span("a", SpanKind.INTERNAL, {}, None, None)))
        snapshot[6] = {"x": Broken()}
        assert ProcessBatchWriter.accepts(tuple(snapshot)) is False
        snapshot[6] = {"x": "fine"}
        assert ProcessBatchWriter.accepts(tuple(snapshot)) is True
