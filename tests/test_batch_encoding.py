"""Batch files encoded straight from rows: the same records as the models write.

``encode_rows`` writes compact JSON with one record per line::

    {"records":[
    {"operation_type":...},
    {"operation_type":...}
    ],"batch_timestamp":"...","batch_id":"...","total_records":2}

Each record line (without its trailing comma) is byte for byte
``record_from_row(row).model_dump_json()``; the whole file reads back through
``MetricsBatch.model_validate_json`` and ``json.loads`` to the same records, for
any timestamp in the years 1 to 9999, and however many seconds a batch spans
(``record_lines`` reuses the formatted second).
"""

from __future__ import annotations

import gc
import json
import math
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic_core import to_json

from otel_json_exporter.records import (
    MAX_ERROR_MESSAGE_LENGTH,
    MAX_INTEGER_DIGITS,
    NEGATIVE_INTEGER_LIMIT,
    MetricsBatch,
    OperationRecord,
    RecordRow,
    batch_id_for,
    build_row,
    format_timestamp,
    microseconds_of,
    moment_of,
    queued_row,
    record_from_row,
    record_lines,
    row_of,
)
from otel_json_exporter.writer import BatchWriter, encode_batch, encode_rows
from tests._tricky import disguised
from tests.conftest import load_batches

UTC = timezone.utc
MIN_US = microseconds_of(datetime.min.replace(tzinfo=UTC))  # 0001-01-01T00:00:00.000000
MAX_US = microseconds_of(datetime.max.replace(tzinfo=UTC))  # 9999-12-31T23:59:59.999999
SECOND = 1_000_000
NOW_US = 1_765_872_000_123_456  # 2025-12-16T08:00:00.123456+00:00
BATCH_MOMENT = datetime(2025, 12, 16, 8, 0, 5, 654321, tzinfo=UTC)
BIGGEST = 10**MAX_INTEGER_DIGITS - 1
SMALLEST = NEGATIVE_INTEGER_LIMIT + 1  # a minus sign and 4,299 digits
HEAD = b'{"records":['
TAIL_KEYS = ["batch_timestamp", "batch_id", "total_records"]
# The ends of the range, second boundaries, and the seconds around the epoch.
EDGES = [
    *(MIN_US, MIN_US + 1, MIN_US + SECOND - 1, MIN_US + SECOND),
    *(MAX_US, MAX_US - 1, MAX_US - SECOND + 1, MAX_US - SECOND),
    *(0, 1, SECOND - 1, SECOND, -1, -SECOND, -SECOND + 1, -SECOND - 1),
    *(-2 * SECOND, -2 * SECOND + 1, -86_400 * SECOND, NOW_US, NOW_US // SECOND * SECOND),
]
moments = st.one_of(
    st.integers(MIN_US, MAX_US),
    st.integers(-(10**14), 10**14),  # within about three years of 1970
    st.integers(NOW_US - 10**13, NOW_US + 10**13),
    st.sampled_from(EDGES),
)


def spread(base: int, offsets: list[int]) -> list[int]:
    return [min(max(base + offset, MIN_US), MAX_US) for offset in offsets]


# The timestamps of one batch: a few seconds around one moment, in any order.
batch_moments = st.builds(
    spread,
    moments,
    st.lists(
        st.integers(-3 * SECOND, 3 * SECOND)
        | st.sampled_from([0, 1, -1, SECOND, -SECOND, SECOND - 1, 1 - SECOND]),
        min_size=1,
        max_size=10,
    ),
)

characters = st.characters(blacklist_categories=["Cs"])  # any Unicode but lone surrogates
texts = st.text(characters, min_size=1, max_size=16) | st.sampled_from(
    ["GET /api/users", "caf\u00e9", "\u65e5\u672c\u8a9e", "\U0001f600", 'a\nb"c\\d', "\u2028"]
)
durations = st.one_of(
    st.floats(min_value=0, allow_nan=False, allow_infinity=False),
    st.integers(0, 10**6),
    st.sampled_from([0.0, -0.0, 1e-7, 1e22, 5e-324, 1.7976931348623157e308, 0.1, 1e16]),
)
error_messages = st.one_of(
    st.none(),
    st.text(characters, max_size=40),
    st.integers(MAX_ERROR_MESSAGE_LENGTH - 1, MAX_ERROR_MESSAGE_LENGTH + 200).map(
        lambda n: "\u00e9x" * (n // 2) + "e" * (n % 2)
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(SMALLEST, BIGGEST),
    st.sampled_from([BIGGEST, SMALLEST, 2**63, -(2**63) - 1, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e-7, 1e22, -0.0, 5e-324, 1.7976931348623157e308, -1e-7]),
    st.text(characters, max_size=12),
)
metadata = st.none() | st.dictionaries(
    st.text(characters, max_size=8),
    st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.text(characters, max_size=6), inner, max_size=3)
        ),
        max_leaves=8,
    ),
    max_size=5,
)


@st.composite
def batches(draw: st.DrawFn, min_size: int = 0) -> list[RecordRow]:
    """Valid rows, as ``build_row`` makes them, whose timestamps span a few seconds."""
    stamps = draw(batch_moments)
    if min_size == 0:
        stamps = stamps[: draw(st.integers(0, len(stamps)))]
    return [
        build_row(
            draw(texts),
            draw(texts),
            draw(durations),
            stamp,
            draw(st.booleans()),
            draw(error_messages),
            draw(metadata),
        )
        for stamp in stamps
    ]


# A batch timestamp is the writer's clock. (Before the year 1000, strftime's %Y
# has fewer than four digits, and batch_id_for no longer matches its pattern.)
batch_timestamps = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
) | st.sampled_from([BATCH_MOMENT, BATCH_MOMENT.astimezone(timezone(timedelta(hours=-5)))])


def expected_lines(rows: list[RecordRow]) -> list[bytes]:
    return [record_from_row(row).model_dump_json().encode("utf-8") for row in rows]


def tail_of(batch_timestamp: datetime, count: int) -> dict[str, Any]:
    return {
        "batch_timestamp": format_timestamp(batch_timestamp),
        "batch_id": batch_id_for(batch_timestamp),
        "total_records": count,
    }


def assert_batch_file(data: bytes, rows: list[RecordRow], batch_timestamp: datetime) -> None:
    """``data`` is the one-record-per-line file of ``rows``, and reads back to them."""
    assert data.endswith(b"\n")
    lines = data[:-1].split(b"\n")
    if rows:
        assert len(lines) == len(rows) + 2
        assert lines[0] == HEAD
        records = lines[1:-1]
        assert [line.removesuffix(b",") for line in records] == expected_lines(rows)
        assert all(line.endswith(b",") for line in records[:-1])
        assert not records[-1].endswith(b",")
        assert lines[-1].startswith(b"],")
        tail = json.loads(b"{" + lines[-1][2:])
    else:
        assert len(lines) == 1
        assert lines[0].startswith(HEAD + b"],")
        tail = json.loads(b"{" + lines[0][len(HEAD) + 2 :])
    assert list(tail) == TAIL_KEYS
    assert tail == tail_of(batch_timestamp, len(rows))

    batch = MetricsBatch.model_validate_json(data)
    assert batch.records == [record_from_row(row) for row in rows]
    assert [row_of(record) for record in batch.records] == rows
    assert batch.total_records == len(rows)
    assert batch.batch_timestamp == batch_timestamp
    assert batch.batch_id == batch_id_for(batch_timestamp)

    parsed = json.loads(data)
    assert list(parsed) == ["records", *TAIL_KEYS]
    assert parsed["records"] == [json.loads(line) for line in expected_lines(rows)]
    assert record_lines(rows) == expected_lines(rows)


class TestEncodeRows:
    @settings(max_examples=150, deadline=None)
    @given(rows=batches(), batch_timestamp=batch_timestamps)
    def test_one_record_per_line_and_reads_back(
        self, rows: list[RecordRow], batch_timestamp: datetime
    ) -> None:
        assert_batch_file(encode_rows(rows, batch_timestamp), rows, batch_timestamp)

    @settings(max_examples=150, deadline=None)
    @given(rows=batches(), queued=st.lists(st.booleans(), min_size=1), data=st.data())
    def test_queued_rows_encode_as_the_rows_they_were(
        self, rows: list[RecordRow], queued: list[bool], data: st.DataObject
    ) -> None:
        """Metadata already JSON text goes in as it is, in any mix with rows holding a dict."""
        moment = data.draw(batch_timestamps)
        mixed = [
            queued_row(row) if queued[index % len(queued)] else row
            for index, row in enumerate(rows)
        ]
        assert encode_rows(mixed, moment) == encode_rows(rows, moment)

    def test_the_layout_of_the_docstring(self) -> None:
        rows = [
            build_row("api_request", "GET /api/users", 42.5, NOW_US, True, None, {"n": 1}),
            build_row("database_query", "SELECT", 1.0, NOW_US + 1, False, "boom", None),
        ]
        assert encode_rows(rows, BATCH_MOMENT) == (
            b'{"records":[\n'
            b'{"operation_type":"api_request","operation_name":"GET /api/users",'
            b'"duration_ms":42.5,"timestamp":"2025-12-16T08:00:00.123456+00:00",'
            b'"success":true,"error_message":null,"metadata":{"n":1}},\n'
            b'{"operation_type":"database_query","operation_name":"SELECT",'
            b'"duration_ms":1.0,"timestamp":"2025-12-16T08:00:00.123457+00:00",'
            b'"success":false,"error_message":"boom","metadata":{}}\n'
            b'],"batch_timestamp":"2025-12-16T08:00:05.654321+00:00",'
            b'"batch_id":"20251216_080005_654321","total_records":2}\n'
        )

    @pytest.mark.parametrize(
        "metadata",
        [
            {"x": [{"operation_type": 1}, {"operation_type": 2}]},
            {"x": [{"operation_type": "a"}, {"operation_type": "b"}], "y": "},{"},
            {"operation_type": {"operation_type": [{}, {"operation_type": None}]}},
            {"text": '},{"operation_type":"x"}', "list": ["},{", "\n"]},
        ],
    )
    def test_metadata_that_looks_like_the_next_record(self, metadata: dict[str, Any]) -> None:
        """A record line ends where the record does, whatever its metadata holds."""
        rows = [
            build_row("job", f"run {i}", 1.0, NOW_US + i, True, None, metadata if i % 2 else None)
            for i in range(5)
        ]
        assert_batch_file(encode_rows(rows, BATCH_MOMENT), rows, BATCH_MOMENT)

    def test_an_empty_batch_is_valid_json(self) -> None:
        data = encode_rows([], BATCH_MOMENT)
        assert data == (
            b'{"records":[],"batch_timestamp":"2025-12-16T08:00:05.654321+00:00",'
            b'"batch_id":"20251216_080005_654321","total_records":0}\n'
        )
        assert_batch_file(data, [], BATCH_MOMENT)

    @settings(max_examples=60, deadline=None)
    @given(
        rows=batches(min_size=1),
        text=st.text(characters, min_size=1, max_size=8),
        number=st.integers(SMALLEST, BIGGEST),
    )
    def test_non_ascii_and_long_integers_as_pydantic_writes_them(
        self, rows: list[RecordRow], text: str, number: int
    ) -> None:
        kind, _, duration, stamp, success, _, _ = rows[0]
        rows[0] = build_row(kind, text, duration, stamp, success, text, {text: [number, text]})
        data = encode_rows(rows, BATCH_MOMENT)
        assert_batch_file(data, rows, BATCH_MOMENT)
        assert to_json(text)[1:-1] in data  # UTF-8, as pydantic writes it: not \\u-escaped

    def test_encode_batch_of_records_made_elsewhere(self) -> None:
        """Records validated from other time zones and from strings are written in UTC."""
        moment = datetime(1969, 12, 31, 19, 0, 0, 500, tzinfo=timezone(timedelta(hours=-5)))
        records = [
            OperationRecord(
                operation_type="job", operation_name="a", duration_ms=1.0, timestamp=moment
            ),
            OperationRecord.model_validate(
                {
                    "operation_type": "job",
                    "operation_name": "b",
                    "duration_ms": 2,
                    "timestamp": "0001-01-01T00:00:00.000000+00:00",
                    "metadata": {"big": BIGGEST, "f": 1e22},
                }
            ),
        ]
        data = encode_batch(records, BATCH_MOMENT)
        assert data == encode_rows([row_of(record) for record in records], BATCH_MOMENT)
        assert data.split(b"\n")[1:3] == [
            records[0].model_dump_json().encode() + b",",
            records[1].model_dump_json().encode(),
        ]
        assert b'"timestamp":"1970-01-01T00:00:00.000500+00:00"' in data
        assert MetricsBatch.model_validate_json(data).records == records


def timestamps_of(rows: list[RecordRow]) -> list[str]:
    return [json.loads(line)["timestamp"] for line in record_lines(rows)]


class TestRecordLines:
    @settings(max_examples=150, deadline=None)
    @given(rows=batches())
    def test_each_line_is_its_records_model_dump_json(self, rows: list[RecordRow]) -> None:
        lines = record_lines(rows)
        assert lines == expected_lines(rows)
        for line, row in zip(lines, rows, strict=True):
            assert list(json.loads(line)) == list(OperationRecord.model_fields)
            assert json.loads(line)["timestamp"] == format_timestamp(moment_of(row[3]))

    @settings(max_examples=100, deadline=None)
    @given(texts=st.lists(texts | st.sampled_from(["api_request", "x"]), min_size=2, max_size=8))
    def test_texts_repeated_in_a_batch(self, texts: list[str]) -> None:
        """Each distinct text is encoded once per batch, and reused where it comes again."""
        rows = [
            build_row(text, texts[-index], 1.0, NOW_US + index, index % 2 == 0, text, None)
            for index, text in enumerate(texts)
        ]
        assert record_lines(rows) == expected_lines(rows)

    @pytest.mark.parametrize(
        "duration",
        [
            0.0,
            -0.0,
            1e-7,
            1.5e-5,
            9.9999e-5,
            1e-4,
            0.1,
            1e15,
            1e16,
            1e22,
            5e-324,
            1.7976931348623157e308,
        ],
    )
    def test_floats_with_and_without_an_exponent(self, duration: float) -> None:
        """JSON writes ``1e-7`` where ``repr`` writes ``1e-07``: the line is pydantic's."""
        row = build_row("job", "run", duration, NOW_US, True, None, {"f": duration})
        assert record_lines([row]) == expected_lines([row])

    def test_a_row_that_validation_would_refuse_is_written_as_pydantic_writes_it(self) -> None:
        """Rows are valid; if one is not, its line is still what the serialiser makes of it."""

        Text = disguised("job")  # equal to "job" and hashed like it: it would find its JSON
        rows: list[tuple[object, ...]] = [
            ("job", "run", 1.0, NOW_US, True, None, {}),
            (Text("job"), Text("other"), 2, NOW_US, 1, Text("run"), {}),
        ]
        line = record_lines(rows)[1]  # type: ignore[arg-type]
        assert json.loads(line) == {
            "operation_type": "job",
            "operation_name": "other",
            "duration_ms": 2,
            "timestamp": format_timestamp(moment_of(NOW_US)),
            "success": 1,
            "error_message": "run",
            "metadata": {},
        }
        # Durations are encoded for the whole batch at once; a value whose JSON holds
        # a comma does not shift the others onto the wrong lines.
        odd = [("job", "run", [1.5, "a,b"], NOW_US, True, None, b"{}"), rows[0]]
        assert [json.loads(line)["duration_ms"] for line in record_lines(odd)] == [  # type: ignore[arg-type]
            [1.5, "a,b"],
            1.0,
        ]
        with pytest.raises(ValueError, match="Unable to serialize"):
            record_lines([("job", "run", object(), NOW_US, True, None, {})])  # type: ignore[list-item]
        # No JSON number holds these: the row is refused, not written unreadable.
        duration: float | str | None
        for duration in (math.nan, math.inf, -math.inf):
            with pytest.raises(ValueError, match="duration_ms is not a finite number"):
                record_lines([("job", "run", duration, NOW_US, True, None, b"{}")])
        # Other values spelt with the same letters are written as the serialiser writes them.
        for duration in (None, "NaN", "Infinity-free", "n"):
            (line,) = record_lines([("job", "run", duration, NOW_US, True, None, b"{}")])  # type: ignore[list-item]
            assert json.loads(line)["duration_ms"] == duration

    @settings(max_examples=100, deadline=None)
    @given(
        stamps=st.lists(
            st.sampled_from([0, 1, SECOND - 1, SECOND, 3 * SECOND + 7, -SECOND - 1])
            | st.sampled_from(EDGES),
            min_size=1,
            max_size=12,
        )
    )
    def test_seconds_revisited_in_any_order(self, stamps: list[int]) -> None:
        rows = [build_row("job", "run", 1.0, stamp, True, None, None) for stamp in stamps]
        assert timestamps_of(rows) == [
            moment_of(stamp).isoformat(timespec="microseconds") for stamp in stamps
        ]

    @pytest.mark.parametrize("stamp", EDGES)
    def test_edges_of_the_range_and_of_seconds(self, stamp: int) -> None:
        row = build_row("job", "run", 1.0, stamp, True, None, None)
        (timestamp,) = timestamps_of([row])
        assert timestamp == format_timestamp(moment_of(stamp))
        assert microseconds_of(datetime.fromisoformat(timestamp)) == stamp
        assert_batch_file(encode_rows([row], BATCH_MOMENT), [row], BATCH_MOMENT)

    @pytest.mark.parametrize(
        ("stamp", "text"),
        [
            (MIN_US, "0001-01-01T00:00:00.000000+00:00"),
            (MAX_US, "9999-12-31T23:59:59.999999+00:00"),
            (-SECOND - 1, "1969-12-31T23:59:58.999999+00:00"),
            (-1, "1969-12-31T23:59:59.999999+00:00"),
            (-SECOND, "1969-12-31T23:59:59.000000+00:00"),
            (0, "1970-01-01T00:00:00.000000+00:00"),
            (NOW_US, "2025-12-16T08:00:00.123456+00:00"),
        ],
    )
    def test_known_timestamps(self, stamp: int, text: str) -> None:
        assert timestamps_of([build_row("job", "run", 1.0, stamp, True, None, None)]) == [text]


class TestLongBatches:
    @pytest.mark.parametrize("count", [255, 256, 257, 512, 513, 1000])
    def test_batches_of_a_few_hundred_records(self, count: int) -> None:
        rows = [
            build_row("job", f"run {i}", i / 7, NOW_US + i * 3_001, i % 3 == 0, None, {"i": i})
            for i in range(count)
        ]
        assert_batch_file(encode_rows(rows, BATCH_MOMENT), rows, BATCH_MOMENT)

    def test_encoding_a_batch_sets_off_no_garbage_collection(self) -> None:
        """A dict per record would: a thousand alive at once pass the default threshold, 700
        (2,000 from Python 3.13 on: there, the batch is three times the threshold)."""
        assert gc.isenabled()
        threshold = gc.get_threshold()[0]
        assert threshold > 0
        rows = [
            build_row("api_request", f"GET /{i}", 1.5, NOW_US + i, True, None, {"n": i})
            for i in range(max(3000, 3 * threshold))
        ]
        queued = [queued_row(row) for row in rows]
        as_dicts = [json.loads(line) for line in expected_lines(rows)]
        assert collections_during(lambda: [dict(item) for item in as_dicts])  # it can fail
        assert collections_during(lambda: encode_rows(queued, BATCH_MOMENT)) == []


def collections_during(action: Callable[[], object]) -> list[int]:
    """The generations the garbage collector collected while ``action`` ran."""
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # the counts start from zero
    gc.callbacks.append(count)
    try:
        action()
    finally:
        gc.callbacks.remove(count)
    return collections


class TestTheSecondBeforeTheEpoch:
    """1969-12-31T23:59:59.000000 to .999999: microseconds -1,000,000 to -1.

    The encoder once started its cache of the formatted second at -1 with an empty
    prefix, so a first row in this second was written as ``.ffffff+00:00``.
    """

    @pytest.mark.parametrize("stamp", [-1, -500_000, -999_999, -SECOND])
    def test_first_row_of_a_batch(self, stamp: int) -> None:
        row = build_row("job", "run", 1.0, stamp, True, None, None)
        assert timestamps_of([row]) == [moment_of(stamp).isoformat(timespec="microseconds")]
        assert_batch_file(encode_rows([row], BATCH_MOMENT), [row], BATCH_MOMENT)

    @pytest.mark.parametrize("stamp", [-1, -500_000, -999_999, -SECOND])
    def test_after_a_row_of_another_second(self, stamp: int) -> None:
        rows = [build_row("job", "run", 1.0, at, True, None, None) for at in (0, stamp, stamp)]
        assert timestamps_of(rows) == [
            "1970-01-01T00:00:00.000000+00:00",
            *[moment_of(stamp).isoformat(timespec="microseconds")] * 2,
        ]
        assert_batch_file(encode_rows(rows, BATCH_MOMENT), rows, BATCH_MOMENT)


class TestWrittenFiles:
    @settings(max_examples=40, deadline=None)
    @given(rows=batches(), batch_timestamp=batch_timestamps)
    def test_write_rows_reads_back(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        rows: list[RecordRow],
        batch_timestamp: datetime,
    ) -> None:
        directory = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
        writer = BatchWriter(directory)
        writer.prepare()
        written = writer.write_rows(rows, now=batch_timestamp)
        assert written.path == directory / f"metrics_{batch_id_for(batch_timestamp)}.json"
        assert written.records == len(rows)
        data = written.path.read_bytes()
        assert written.bytes == len(data)
        assert data == encode_rows(rows, batch_timestamp)
        assert_batch_file(data, rows, batch_timestamp)
        (batch,) = load_batches(directory)
        assert batch.records == [record_from_row(row) for row in rows]

    def test_consecutive_batches_in_one_directory(self, tmp_path: Path) -> None:
        writer = BatchWriter(tmp_path)
        writer.prepare()
        first = [
            build_row("job", f"r{i}", 1.0, NOW_US + i * SECOND // 3, True, None, {"i": i})
            for i in range(7)
        ]  # seven records over three seconds
        second = [build_row("job", "empty batch next", 0.5, MIN_US, False, "x" * 1001, None)]
        paths = [writer.write_rows(rows, now=BATCH_MOMENT).path for rows in (first, second, [])]
        assert len(set(paths)) == 3
        batches_read = load_batches(tmp_path)
        assert [len(batch.records) for batch in batches_read] == [7, 1, 0]
        assert batches_read[0].records == [record_from_row(row) for row in first]
        assert batches_read[1].records[0].error_message == "x" * MAX_ERROR_MESSAGE_LENGTH
        for path, rows in zip(paths, (first, second, []), strict=True):
            assert path is not None
            data = path.read_bytes()
            assert data.count(b"\n") == (len(rows) + 2 if rows else 1)
            assert json.loads(data)["records"] == [json.loads(x) for x in expected_lines(rows)]


class TestTimestampRange:
    @pytest.mark.parametrize(
        "stamp", [MIN_US - 1, MAX_US + 1, MIN_US - 10**20, MAX_US + 10**20, -(2**63), 2**63]
    )
    def test_build_row_refuses_what_no_datetime_holds(self, stamp: int) -> None:
        with pytest.raises(ValueError, match="timestamp is outside the years 1 to 9999"):
            build_row("job", "run", 1.0, stamp, True, None, None)
        with pytest.raises(ValueError, match="timestamp is outside the years 1 to 9999"):
            moment_of(stamp)

    @settings(max_examples=100, deadline=None)
    @given(stamp=st.integers(MIN_US, MAX_US) | st.sampled_from(EDGES))
    @example(stamp=MIN_US)
    @example(stamp=MAX_US)
    def test_build_row_keeps_any_timestamp_in_range(self, stamp: int) -> None:
        row = build_row("job", "run", 1.0, stamp, True, None, None)
        assert row[3] == stamp
        assert type(row[3]) is int
        assert microseconds_of(moment_of(stamp)) == stamp
        assert record_from_row(row).timestamp == moment_of(stamp)

    @settings(max_examples=100, deadline=None)
    @given(
        moment=st.datetimes(
            min_value=datetime(2, 1, 1),
            max_value=datetime(9998, 12, 31),
            timezones=st.builds(timezone, st.timedeltas(timedelta(hours=-23), timedelta(hours=23))),
        )
    )
    def test_microseconds_of_and_moment_of_convert_both_ways(self, moment: datetime) -> None:
        stamp = microseconds_of(moment)
        assert moment_of(stamp) == moment
        assert moment_of(stamp).tzinfo is UTC
        assert stamp == (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

    def test_the_limits_are_the_years_1_and_9999(self) -> None:
        assert moment_of(MIN_US) == datetime(1, 1, 1, tzinfo=UTC)
        assert moment_of(MAX_US) == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
        assert microseconds_of(datetime(1970, 1, 1, tzinfo=UTC)) == 0
        assert microseconds_of(datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)) == -1


class TestEncodeBatch:
    @settings(max_examples=80, deadline=None)
    @given(
        rows=batches(),
        offset=st.sampled_from([timedelta(0), timedelta(hours=-5), timedelta(hours=5, minutes=30)]),
        batch_timestamp=batch_timestamps,
    )
    def test_equals_encode_rows_of_its_rows(
        self, rows: list[RecordRow], offset: timedelta, batch_timestamp: datetime
    ) -> None:
        records = [record_from_row(row) for row in rows]
        elsewhere = [
            OperationRecord.model_validate(
                {**record.model_dump(), "timestamp": record.timestamp.astimezone(timezone(offset))}
            )
            if MIN_US + 86_400 * SECOND < row[3] < MAX_US - 86_400 * SECOND
            else record
            for record, row in zip(records, rows, strict=True)
        ]
        data = encode_batch(elsewhere, batch_timestamp)
        assert data == encode_rows([row_of(record) for record in elsewhere], batch_timestamp)
        assert data == encode_rows(rows, batch_timestamp)
        assert_batch_file(data, rows, batch_timestamp)
