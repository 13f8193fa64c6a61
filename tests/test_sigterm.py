"""SIGTERM with its default action: what was held is written, then the process ends by it.

Each script runs in its own interpreter and ends by SIGTERM; the records must be on
disk. The uvicorn case does what uvicorn does after its graceful shutdown: it restores
the handler it found and raises the signal again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import load_records

_PRELUDE = """
import asyncio, os, signal, sys
from otel_json_exporter import MetricsManager, OperationSpanExporter

storage = sys.argv[1]

async def record(manager, count):
    for rid in range(count):
        await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
"""

_SCENARIOS = {
    # Docker's or Kubernetes' stop: SIGTERM, nobody handling it.
    "plain": """
manager = MetricsManager(storage, flush_interval_seconds=3600)
manager.start_sync()
asyncio.run(record(manager, 25))
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
""",
    # uvicorn: its own handler while serving, then the one it found, and the signal again.
    "uvicorn": """
manager = MetricsManager(storage, flush_interval_seconds=3600)
manager.start_sync()
found = signal.signal(signal.SIGTERM, lambda signum, frame: None)
asyncio.run(record(manager, 25))
signal.signal(signal.SIGTERM, found)
signal.raise_signal(signal.SIGTERM)
""",
    # Spans still in the SDK's batch processor, not yet exported.
    "spans": """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

exporter = OperationSpanExporter(storage, flush_interval_seconds=3600)
provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=3_600_000))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("sigterm")
for index in range(25):
    with tracer.start_as_current_span(f"span-{index}"):
        pass
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
""",
}


def _run(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_PRELUDE) + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / "metrics")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("scenario", sorted(_SCENARIOS))
def test_what_was_held_is_written_then_sigterm_ends_the_process(
    tmp_path: Path, scenario: str
) -> None:
    done = _run(tmp_path, _SCENARIOS[scenario])
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr[-800:])
    assert len(load_records(tmp_path / "metrics")) == 25, done.stderr[-800:]


def test_a_handler_of_the_application_is_left_alone(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        """
def mine(signum, frame):
    print("the application's handler", flush=True)
    sys.exit(0)

signal.signal(signal.SIGTERM, mine)
manager = MetricsManager(storage, flush_interval_seconds=3600)
manager.start_sync()
assert signal.getsignal(signal.SIGTERM) is mine
asyncio.run(record(manager, 25))
os.kill(os.getpid(), signal.SIGTERM)
signal.pause()
""",
    )
    assert done.returncode == 0, done.stderr[-800:]
    assert done.stdout == "the application's handler\n"
    # It exited the ordinary way: the exit hook wrote the records.
    assert len(load_records(tmp_path / "metrics")) == 25
