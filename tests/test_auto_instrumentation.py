"""``opentelemetry-instrument`` with ``OTEL_TRACES_EXPORTER=operation_json``, no code change.

The uninstrumented example app runs in a subprocess under the real
``opentelemetry-instrument``; its spans are written by the SDK's shutdown at
interpreter exit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

from otel_json_exporter import OperationSpanExporter
from tests.conftest import load_batches

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "auto_instrumented_app.py"
INSTRUMENT = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))


def test_the_entry_point_is_registered() -> None:
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name="operation_json")
    assert entry.load() is OperationSpanExporter


def test_an_uninstrumented_app_writes_its_spans(tmp_path: Path) -> None:
    # opentelemetry-distro is in the test extra: a missing script is a failure, not a skip.
    assert INSTRUMENT is not None, "opentelemetry-instrument is not installed beside python"
    storage = tmp_path / "metrics"
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "inventory",
        "OTEL_TRACES_EXPORTER": "operation_json",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OPERATION_JSON_PATH": str(storage),
        "OTEL_EXPORTER_OPERATION_JSON_MAX_BATCH_SIZE": "2",
        "OTEL_EXPORTER_OPERATION_JSON_FLUSH_INTERVAL": "not-a-number",
    }
    result = subprocess.run(
        [INSTRUMENT, sys.executable, str(APP)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GET /stock/plum -> 200" in result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    # An invalid variable is a warning and the default, not a failure.
    assert "OTEL_EXPORTER_OPERATION_JSON_FLUSH_INTERVAL must be a positive number" in result.stderr
    assert "not-a-number" not in result.stderr

    batches = load_batches(storage)
    assert [len(batch.records) for batch in batches] == [2, 2, 2]  # MAX_BATCH_SIZE from the env
    records = [record for batch in batches for record in batch.records]
    kinds = Counter((r.operation_type, r.operation_name) for r in records)
    assert kinds == {("api_request", "GET /stock/{item}"): 3, ("lookup", "count stock"): 3}
    assert {record.metadata["service.name"] for record in records} == {"inventory"}
    servers = {r.metadata["span_id"]: r for r in records if r.operation_type == "api_request"}
    for lookup in (r for r in records if r.operation_type == "lookup"):
        parent = servers[lookup.metadata["parent_span_id"]]
        assert parent.metadata["trace_id"] == lookup.metadata["trace_id"]
        assert parent.metadata["http.route"] == "/stock/{item}"
