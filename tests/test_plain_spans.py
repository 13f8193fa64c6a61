"""``plain_queued_row`` only ever says what the full span mapping would say.

The full path is :func:`snapshot_to_row`, then the manager's
``PiiPolicy.check_row``, then :func:`queued_row`. Whenever
:func:`plain_queued_row` returns a row, the full path accepts the same
snapshot, masks and drops nothing, and queues the identical row, byte for byte.
When it returns None, the full path decides. Snapshots are drawn field by field,
hostile ones included (``str`` subclasses that lie about their hash, values
that need masking, attributes under the names of the keys the mapping adds),
and taken from real SDK spans.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_json_exporter import PiiPolicy
from otel_json_exporter._span_rows import SpanSnapshot, plain_queued_row, rows_of, snapshot_to_row
from otel_json_exporter.mapping import default_span_filter, snapshot_of
from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_MICROSECONDS,
    MIN_MICROSECONDS,
    QueuedRow,
    queued_row,
)
from tests._strategies import mostly
from tests._tricky import Region, Status500, disguised

Sneaky = disguised(equal_to="note")


class Touchy(str):
    """A key that hashes as ``note`` and raises when compared."""

    def __hash__(self) -> int:
        return hash("note")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("compared")


def made_snapshot(
    name: str = "job",
    kind: int = 0,
    start: int = 10**18,
    end: int | None = None,
    *,
    attributes: dict[Any, Any] | None = None,
    trace_id: int | None = None,
    span_id: int | None = None,
    service: str | None = None,
) -> SpanSnapshot:
    """A snapshot of a span that succeeded, has no parent and no declared operation type."""
    ids = (trace_id, span_id, None)  # the trace, the span, no parent
    return (name, kind, start, end, True, None, attributes or {}, *ids, service, None, None)


_plain_text = st.text(st.characters(codec="ascii", exclude_categories=["Cs"]), max_size=12)
_hard_texts = st.sampled_from(
    [
        "",
        "ann@example.com",
        "page=2&per_page=50",
        "page=2&email=a%40b.example",
        "https://u:pw@shop.example/p?page=2",
        "https://shop.example/p?token=abc",
        "/reset/token=abc;jsessionid=x",
        "100%25 done",
        'say "hi" \\ there',
        "caf\u00e9",
        "ann\uff20example.com",  # a full-width at sign: an address once folded
        "https://shop.example/@me?page=2",  # "@" and "=" that masking leaves
        "https://a.example/x@y#top",
        "lone \ud800 surrogate",
        "x" * (MAX_ERROR_MESSAGE_LENGTH + 1),
        # statements: literals masked under db.statement and db.query.text only
        "SELECT a FROM t WHERE b = ? AND c = %s",
        "SELECT 1",
        "SELECT * FROM t WHERE name = 'Jean' -- ann@example.com",
        'SELECT "c" FROM t WHERE d = $1',
        "SELECT 'O\\'Brien'",
        "mysql",
    ]
)
_texts = mostly(
    _plain_text.filter(lambda text: "@" not in text and "=" not in text and "%" not in text),
    _hard_texts,
)
_keys = mostly(
    st.sampled_from(
        [
            "http.request.method",
            "http.response.status_code",
            "url.path",
            "url.query",
            "url.full",
            "url.original",
            "http.url",
            "http.target",
            "note",
            "operation.type",
            "db.system.name",
            "db.system",
            "db.statement",
            "db.query.text",
        ]
    ),
    st.sampled_from(["email", "user_id", "password", "trace_id", "span_kind", "service.name"]),
    st.builds(Sneaky, st.sampled_from(["note", "email", "url.query"])),
    weight=10,
)
_values = mostly(
    st.one_of(_texts, st.integers(min_value=-(10**20), max_value=10**20), st.booleans()),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=6),
    st.sampled_from([Status500.BAD_GATEWAY, Region.CA, ("a", "b"), 10**5000]),
    # sequences, as a captured header's values: texts (plain or not), and other items
    st.tuples(_texts).map(tuple) | st.lists(_texts, max_size=3).map(tuple),
    st.lists(st.one_of(_texts, st.integers(), st.builds(Sneaky, _texts)), max_size=3).map(tuple),
    st.lists(_texts, max_size=2),
    weight=10,
)
_ids = mostly(st.integers(min_value=0, max_value=2**128 - 1), st.none(), st.just(-5), st.just(True))
_snapshots = st.tuples(
    mostly(_texts, st.sampled_from([None, 12345, Sneaky("GET /")]), weight=10),  # name
    mostly(st.sampled_from([0, 1, 2, 3, 4]), st.sampled_from([9, True, 1.0, (1,)]), weight=10),
    mostly(
        st.integers(min_value=0, max_value=2**62),
        st.sampled_from([None, 1.5e18, -(10**30), 10**400]),
        weight=10,
    ),  # start, ns
    mostly(st.integers(min_value=0, max_value=2**62), st.none(), st.just(2.5e18)),  # end
    mostly(st.booleans(), st.sampled_from([1, None]), weight=10),  # success
    mostly(st.none(), _texts, st.sampled_from([5, Sneaky("boom")])),  # error
    st.dictionaries(_keys, _values, max_size=6),  # attributes
    _ids,  # trace id
    _ids,  # span id
    _ids,  # parent span id
    mostly(st.sampled_from(["shop", None]), _texts, st.sampled_from([7, Sneaky("shop")])),
    mostly(st.none(), st.sampled_from(["job", "", "x@y.example", 5])),  # operation_type
    # what the SDK may have cut: (the attributes' length limit, the error cut short?)
    mostly(st.none(), st.sampled_from([(3, False), (12, False), (None, True), (8, True)])),
)


def learn(policy: PiiPolicy) -> None:
    """Judge the keys the mapping adds, as the first span with ids and a service does."""
    for key in ("trace_id", "span_id", "parent_span_id", "span_kind", "service.name"):
        policy.is_pii_key(key)


def full_path(snapshot: SpanSnapshot, policy: PiiPolicy) -> tuple[QueuedRow, int] | None:
    """What export() queues for the snapshot without the plain path, and the count masked."""
    try:
        row, redacted = snapshot_to_row(snapshot, policy)
        policy.check_row(row)
        return queued_row(row), redacted
    except Exception:
        return None


def assert_agrees(snapshot: SpanSnapshot, policy: PiiPolicy) -> QueuedRow | None:
    attributes_before = list(snapshot[6].items())
    plain = plain_queued_row(snapshot, policy)  # never raises
    assert list(snapshot[6].items()) == attributes_before  # the full path may still read it
    expected = full_path(snapshot, policy)
    if plain is not None:
        assert expected is not None, "plain_queued_row accepted what the full path refuses"
        assert expected[1] == 0, "plain_queued_row accepted what the full path masks"
        assert plain == expected[0]
        assert [type(field) for field in plain] == [type(field) for field in expected[0]]
    return plain


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    snapshot=_snapshots,
    blocked=st.sampled_from([(), ("note",), ("span_kind",)]),
    warm=mostly(st.just(True), st.just(False)),
)
def test_a_plain_row_is_the_row_the_full_path_queues(
    snapshot: SpanSnapshot, blocked: tuple[str, ...], warm: bool
) -> None:
    policy = PiiPolicy(blocked_keys=set(blocked))
    learn(policy)
    if warm:
        full_path(snapshot, policy)  # teaches the policy the keys, as earlier spans would
    plain = assert_agrees(snapshot, policy)
    if plain is None:
        event("plain_queued_row: None")  # shows the mix
    elif 64 in plain[6] or 61 in plain[6]:
        event("plain_queued_row: a row, '@' or '=' in a URL attribute")
    else:
        event("plain_queued_row: a row")


_URLS = st.sampled_from(
    [
        "https://shop.example/@me?page=2&sort=name",
        "https://a.example/x@y#top",
        "/users/@me?tab=1",
        "page=2&per_page=50",
        "page=2&email=a%40b.example",
        "page=2&password=x",
        "https://u:pw@shop.example/p?page=2",
        "https://shop.example/p?token=abc#access_token=t",
        "/reset/token=abc;jsessionid=x",
        "https://shop.example/%40me",
        "https://shop.example/ann%40example.com",
        "https://shop.example/a%2540b.example",
    ]
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    urls=st.dictionaries(
        st.sampled_from(["url.full", "url.original", "http.url", "http.target", "url.query"]),
        _URLS,
        min_size=1,
    ),
    others=st.dictionaries(
        st.sampled_from(["note", "http.route"]),
        st.sampled_from(["plain", "a@b", "a=b", "ann@example.com"]),
    ),
)
def test_what_url_attributes_may_hold_is_allowed_there_only(
    urls: dict[str, str], others: dict[str, str]
) -> None:
    policy = PiiPolicy()
    learn(policy)
    snapshot = made_snapshot(
        "GET /", 1, attributes={**others, **urls}, trace_id=7, span_id=9, service="shop"
    )
    full_path(snapshot, policy)
    plain = assert_agrees(snapshot, policy)
    if plain is None:
        event("plain_queued_row: None")
    elif 64 in plain[6] or 61 in plain[6]:
        event("plain_queued_row: a row, '@' or '=' in a URL attribute")
    else:
        event("plain_queued_row: a row")


@pytest.fixture(scope="module")
def finished() -> Any:
    captured = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(captured))
    tracer = provider.get_tracer("tests")

    def finish(name: str, attributes: dict[str, Any], *, failed: bool = False) -> SpanSnapshot:
        captured.clear()
        with tracer.start_as_current_span("parent"):
            span = tracer.start_span(name, kind=SpanKind.SERVER, attributes=attributes)
            if failed:
                span.set_status(Status(StatusCode.ERROR, "upstream timed out"))
            span.end()
        return snapshot_of(next(s for s in captured.get_finished_spans() if s.name == name))

    yield finish
    provider.shutdown()


HTTP_SERVER = {
    "http.request.method": "GET",
    "url.scheme": "https",
    "url.path": "/api/orders/42",
    "url.query": "page=2&per_page=50",
    "http.route": "/api/orders/{id}",
    "http.response.status_code": 200,
    "server.port": 443,
    "user_agent.original": "Mozilla/5.0 (X11; Linux x86_64)",
}


class TestRealSpans:
    def test_a_plain_http_server_span_takes_the_plain_path(self, finished: Any) -> None:
        policy = PiiPolicy()
        snapshot = finished("GET /api/orders/{id}", HTTP_SERVER)
        full_path(snapshot, policy)  # the first span teaches the policy its keys
        row = assert_agrees(snapshot, policy)
        assert row is not None
        metadata = json.loads(row[6])
        added = ["trace_id", "span_id", "parent_span_id", "span_kind", "service.name"]
        assert list(metadata) == [*HTTP_SERVER, *added]
        assert (row[0], row[4], metadata["span_kind"]) == ("api_request", True, "server")

    def test_a_failed_span_with_its_status_text_takes_it_too(self, finished: Any) -> None:
        policy = PiiPolicy()
        snapshot = finished("GET /slow", HTTP_SERVER, failed=True)
        full_path(snapshot, policy)
        row = assert_agrees(snapshot, policy)
        assert row is not None
        assert (row[4], row[5]) == (False, "upstream timed out")

    @pytest.mark.parametrize(
        "extra",
        [
            {"enduser.email": "ann@example.com"},  # a PII key: dropped
            {"url.query": "email=ann%40example.com&page=2"},  # masked
            {"url.full": "https://bob:pw@shop.example/p"},  # credentials masked
            {"note": "reply to ann@example.com"},  # an address in free text
            {"note": "password=hunter2"},  # a PII name=value
            {"note": "Montr\u00e9al"},  # beyond ASCII: the full path decides
            {"span_kind": "mine"},  # replaced by the added key
            {Sneaky("note"): "x"},  # a key that lies about what it equals
            {"sizes": (1, 2)},  # not a scalar
            {"ratio": 0.5},  # floats: not plain here
        ],
    )
    def test_what_needs_the_full_path_gets_it(self, finished: Any, extra: dict[Any, Any]) -> None:
        policy = PiiPolicy()
        snapshot = finished("GET /api/orders/{id}", {**HTTP_SERVER, **extra})
        full_path(snapshot, policy)
        assert assert_agrees(snapshot, policy) is None

    def test_a_policy_that_blocks_an_added_key_gets_the_full_path(self, finished: Any) -> None:
        policy = PiiPolicy(blocked_keys={"service.name"})
        snapshot = finished("GET /x", HTTP_SERVER)
        full_path(snapshot, policy)
        assert assert_agrees(snapshot, policy) is None

    def test_a_span_without_attributes_or_ids_is_plain_too(self) -> None:
        policy = PiiPolicy()
        snapshot = made_snapshot(end=10**18 + 5)
        learn(policy)
        row = assert_agrees(snapshot, policy)
        assert row is not None
        assert json.loads(row[6]) == {"parent_span_id": None, "span_kind": "internal"}

    def test_an_unhashable_kind_is_rejected_alone_in_the_writer_process(
        self, finished: Any
    ) -> None:
        policy = PiiPolicy()
        learn(policy)
        good = finished("GET /api/orders/{id}", HTTP_SERVER)
        odd = (good[0], [1], *good[2:])  # a kind the pickler ships as a list
        rows, rejected, _ = rows_of([good, odd, good], policy)
        assert (len(rows), rejected) == (2, 1)

    def test_a_key_whose_comparison_raises_leaves_the_decision_to_the_full_path(self) -> None:
        policy = PiiPolicy()
        learn(policy)
        policy.is_pii_key("note")
        snapshot = made_snapshot(attributes={Touchy("zzz"): "b"})
        assert plain_queued_row(snapshot, policy) is None
        expected = full_path(snapshot, policy)
        assert expected is not None
        assert json.loads(expected[0][6])["zzz"] == "b"

    @pytest.mark.parametrize(
        ("start", "end", "plain"),
        [
            (MAX_MICROSECONDS * 1000 + 999, None, True),  # the last nanosecond of year 9999
            ((MAX_MICROSECONDS + 1) * 1000, None, False),  # past it: refused
            (MIN_MICROSECONDS * 1000, None, True),  # the year 1
            (MIN_MICROSECONDS * 1000 - 1, None, False),  # before it: refused
            (0, 10**300 - 1, True),  # the longest duration the plain path takes
            (0, 10**300, False),  # longer: the full path writes it
            (0, 10**309, False),  # more than a float holds: refused
            (10**18, 10**18 - 5, True),  # the clock went backwards: 0.0
        ],
    )
    def test_times_at_the_edges_agree(self, start: int, end: int | None, plain: bool) -> None:
        policy = PiiPolicy()
        learn(policy)
        snapshot = made_snapshot(start=start, end=end)
        assert (assert_agrees(snapshot, policy) is not None) == plain


def orders_app(**instrument_options: Any) -> tuple[FastAPI, TracerProvider, InMemorySpanExporter]:
    """A FastAPI app with one route, instrumented with ``instrument_options``; its tracer
    provider, and the exporter that keeps its finished spans."""
    captured = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(captured))
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int, page: int = 1) -> dict[str, int]:
        return {"order_id": order_id, "page": page}

    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, **instrument_options)
    return app, provider, captured


async def test_fastapi_server_spans_take_the_plain_path_unless_they_hold_pii() -> None:
    """Real server spans of a FastAPI app, over httpx: the common request is plain."""
    app, provider, captured = orders_app()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        for path in ("/orders/1?page=2&sort=date", "/orders/2", "/orders/3?email=ann%40ex.com"):
            assert (await client.get(path)).status_code == 200
    provider.shutdown()
    policy = PiiPolicy()
    outcomes = []
    for span in captured.get_finished_spans():
        if not default_span_filter(span):
            continue  # the ASGI send and receive spans, skipped by the exporter
        snapshot = snapshot_of(span)
        full_path(snapshot, policy)  # the policy learns the keys, as from earlier spans
        plain = assert_agrees(snapshot, policy)
        outcomes.append((plain is not None, full_path(snapshot, policy)))
    assert [plain for plain, _ in outcomes] == [True, True, False]
    assert [expected[1] for _, expected in outcomes if expected is not None] == [0, 0, 1]


_HEADER_VALUES = st.lists(_texts, max_size=3).map(tuple)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(
        st.sampled_from(
            [
                "http.request.header.accept",
                "http.request.header.user_agent",
                "http.response.header.content_type",
                "http.request.header.authorization",
                "url.full",
                "http.target",
                "db.statement",
                "query",
            ]
        ),
        _HEADER_VALUES,
        min_size=1,
    ),
    others=st.dictionaries(st.sampled_from(["http.route", "note"]), _texts),
    cut=st.sampled_from([None, (4, False), (60, False), (None, True)]),
)
def test_captured_headers_take_the_plain_path_only_as_the_full_path_writes_them(
    headers: dict[str, tuple[str, ...]], others: dict[str, str], cut: Any
) -> None:
    """A tuple of texts (a captured header's values) is plain only where the full path
    writes it as it is: under a key masked as any text, no text cut, nothing to mask."""
    policy = PiiPolicy()
    learn(policy)
    attributes: dict[str, Any] = {**others, **headers}
    snapshot = (*made_snapshot(attributes=attributes, trace_id=7, span_id=9)[:12], cut)
    full_path(snapshot, policy)  # the policy learns the keys, as from earlier spans
    plain = assert_agrees(snapshot, policy)
    special = {"url.full", "http.target", "db.statement", "query"}
    if plain is not None:
        assert not special & headers.keys()  # masked their own way: the full path's
        event("plain_queued_row: a row with captured headers")
    else:
        event("plain_queued_row: None")


async def test_fastapi_spans_with_captured_headers_take_the_plain_path() -> None:
    """Real server spans capturing every request and response header, over httpx: the
    headers' values (tuples of texts) keep the span on the plain path, unless one holds
    PII, and the authorization header is dropped by the full path."""
    app, provider, captured = orders_app(
        http_capture_headers_server_request=[".*"], http_capture_headers_server_response=[".*"]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
        headers = [
            {"accept": "application/json"},
            {"accept": "application/json", "x-region": "ca-central"},
            {"accept": "application/json", "x-contact": "ann@example.com"},
            {"accept": "application/json", "authorization": "Bearer abc"},
        ]
        for number, sent in enumerate(headers):
            assert (await client.get(f"/orders/{number}", headers=sent)).status_code == 200
    provider.shutdown()
    policy = PiiPolicy()
    outcomes = []
    for span in captured.get_finished_spans():
        if not default_span_filter(span):
            continue
        assert type((span.attributes or {}).get("http.request.header.accept")) is tuple
        snapshot = snapshot_of(span)
        full_path(snapshot, policy)  # the policy learns the keys, as from earlier spans
        plain = assert_agrees(snapshot, policy)
        expected = full_path(snapshot, policy)
        assert expected is not None
        outcomes.append((plain is not None, expected[1]))
    # plain, plain, an address masked by the full path, a PII key dropped by it
    assert outcomes == [(True, 0), (True, 0), (False, 1), (False, 1)]
