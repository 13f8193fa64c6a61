"""The models: validation rules, the timestamp format and the batch-file shape."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from otel_json_exporter.records import (
    MetricsBatch,
    OperationRecord,
    batch_id_for,
    format_timestamp,
    parse_batch_id,
)

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00$")
MOMENT = datetime(2025, 12, 16, 8, 0, 0, tzinfo=timezone.utc)


def record(**overrides: object) -> OperationRecord:
    fields: dict[str, object] = {
        "operation_type": "api_request",
        "operation_name": "GET /api/users",
        "duration_ms": 42.5,
        "timestamp": MOMENT,
    }
    fields.update(overrides)
    return OperationRecord.model_validate(fields)


class TestTimestamps:
    def test_whole_seconds_still_get_six_digits_and_offset(self) -> None:
        assert format_timestamp(MOMENT) == "2025-12-16T08:00:00.000000+00:00"

    def test_other_zones_are_converted_to_utc(self) -> None:
        montreal = timezone(timedelta(hours=-5))
        moment = datetime(2025, 12, 16, 3, 0, 0, 123, tzinfo=montreal)
        assert format_timestamp(moment) == "2025-12-16T08:00:00.000123+00:00"
        assert record(timestamp=moment).timestamp == MOMENT.replace(microsecond=123)

    def test_naive_datetimes_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="timezone-aware"):
            record(timestamp=datetime(2025, 1, 1))

    @pytest.mark.parametrize(
        "text",
        [
            "2025-12-16T08:00:00Z",
            "2025-12-16T08:00:00.000000Z",
            "2025-12-16T08:00:00.000+00:00",
            "2025-12-16T03:00:00.000000-05:00",
            "2025-12-16 08:00:00.000000+00:00",
        ],
    )
    def test_only_the_exact_format_is_read_back(self, text: str) -> None:
        with pytest.raises(ValidationError, match="timestamp must look like"):
            OperationRecord.model_validate_json(
                json.dumps(
                    {
                        "operation_type": "t",
                        "operation_name": "n",
                        "duration_ms": 1.0,
                        "timestamp": text,
                    }
                )
            )

    def test_batch_id_round_trip(self) -> None:
        moment = MOMENT.replace(microsecond=123456)
        assert batch_id_for(moment) == "20251216_080000_123456"
        assert parse_batch_id("20251216_080000_123456") == moment
        with pytest.raises(ValueError, match="YYYYMMDD_HHMMSS_ffffff"):
            parse_batch_id("2025-12-16")


class TestOperationRecord:
    def test_defaults(self) -> None:
        made = record()
        assert made.success is True
        assert made.error_message is None
        assert made.metadata == {}

    def test_long_error_message_is_truncated_to_1000(self) -> None:
        assert record(error_message="x" * 5000).error_message == "x" * 1000

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("duration_ms", -0.001),
            ("duration_ms", float("nan")),
            ("duration_ms", float("inf")),
            ("duration_ms", "12"),
            ("duration_ms", True),
            ("operation_type", ""),
            ("operation_name", ""),
            ("operation_type", 5),
            ("success", "yes"),
            ("error_message", 12),
        ],
    )
    def test_invalid_fields(self, field: str, value: object) -> None:
        with pytest.raises(ValidationError) as caught:
            record(**{field: value})
        assert caught.value.errors()[0]["loc"][0] == field

    @pytest.mark.parametrize(
        ("metadata", "message"),
        [
            ({1: "x"}, "keys must be strings"),
            ({"a": {"b": {2: 1}}}, "keys must be strings"),
            ({"x": float("nan")}, "finite"),
            ({"x": [1, float("-inf")]}, "finite"),
            ({"x": (1, 2)}, "tuple is not allowed"),
            ({"x": {1, 2}}, "set is not allowed"),
            ({"x": b"raw"}, "bytes is not allowed"),
            ({"x": object()}, "object is not allowed"),
            ({"x": "\ud800"}, "not valid Unicode"),
            ({"x\udfff": 1}, "metadata key: string is not valid Unicode"),
            ({"a": {"\ud800": 1}}, "metadata 'a' key: string is not valid Unicode"),
            ("not a dict", "must be a dict"),
        ],
    )
    def test_invalid_metadata(self, metadata: object, message: str) -> None:
        with pytest.raises(ValidationError, match=message):
            record(metadata=metadata)

    def test_nesting_is_bounded(self) -> None:
        deep: dict[str, object] = {}
        node = deep
        for _ in range(40):
            node["d"] = {}
            node = node["d"]  # type: ignore[assignment]
        with pytest.raises(ValidationError, match="nested deeper than 32"):
            record(metadata=deep)

    def test_metadata_is_copied(self) -> None:
        source: dict[str, object] = {"tags": ["a"], "inner": {"n": 1}}
        made = record(metadata=source)
        source["tags"].append("b")  # type: ignore[attr-defined]
        source["inner"]["n"] = 2  # type: ignore[index]
        assert made.metadata == {"tags": ["a"], "inner": {"n": 1}}

    def test_json_round_trip(self) -> None:
        made = record(metadata={"n": 1, "f": 0.5, "b": False, "z": None, "l": [{"k": "v"}]})
        assert OperationRecord.model_validate_json(made.model_dump_json()) == made


class TestMetricsBatch:
    def test_key_order_matches_the_specification(self) -> None:
        batch = MetricsBatch(
            records=[record()],
            batch_timestamp=MOMENT,
            batch_id=batch_id_for(MOMENT),
            total_records=1,
        )
        data = json.loads(batch.model_dump_json())
        assert list(data) == ["records", "batch_timestamp", "batch_id", "total_records"]
        assert list(data["records"][0]) == [
            "operation_type",
            "operation_name",
            "duration_ms",
            "timestamp",
            "success",
            "error_message",
            "metadata",
        ]
        assert TIMESTAMP.match(data["batch_timestamp"])
        assert TIMESTAMP.match(data["records"][0]["timestamp"])

    def test_total_records_must_match(self) -> None:
        with pytest.raises(ValidationError, match="total_records is 2 but the batch holds 1"):
            MetricsBatch(
                records=[record()],
                batch_timestamp=MOMENT,
                batch_id=batch_id_for(MOMENT),
                total_records=2,
            )

    def test_batch_id_must_match_the_timestamp(self) -> None:
        with pytest.raises(ValidationError, match="batch_id does not match"):
            MetricsBatch(
                records=[],
                batch_timestamp=MOMENT,
                batch_id="20251216_080000_000001",
                total_records=0,
            )

    def test_unknown_keys_are_refused(self) -> None:
        with pytest.raises(ValidationError, match="Extra inputs"):
            MetricsBatch.model_validate(
                {
                    "records": [],
                    "batch_timestamp": MOMENT,
                    "batch_id": batch_id_for(MOMENT),
                    "total_records": 0,
                    "extra": 1,
                }
            )
