"""gunicorn with uvicorn's workers under ``opentelemetry-instrument``, stopped by SIGTERM.

The exporter is made in gunicorn's master (the distro's sitecustomize runs there),
each worker is a fork that sets SIGTERM back to its default action, and uvicorn ends
a worker by raising SIGTERM again after its graceful shutdown: no exit hook runs.
README's gunicorn hook, ``flush_on_sigterm()`` in ``post_worker_init``, must leave
every answered request on disk.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from tests.conftest import load_records

_BIN = Path(sys.executable).parent
INSTRUMENT = shutil.which("opentelemetry-instrument", path=str(_BIN))
GUNICORN = shutil.which("gunicorn", path=str(_BIN))

_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}
"""

# README's hook, as a user would write it in gunicorn.conf.py.
_CONFIG = """
def post_worker_init(worker):
    from otel_json_exporter import flush_on_sigterm

    flush_on_sigterm()
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_listening(port: int, server: subprocess.Popen[str]) -> None:
    """Until gunicorn's master accepts connections (a request then waits for a worker)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, "gunicorn ended before listening"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("gunicorn did not listen within 60 s")


def test_gunicorn_uvicorn_workers_write_every_answered_request_on_sigterm(
    tmp_path: Path,
) -> None:
    # Both are in the test extra: missing scripts are a failure, not a skip.
    assert INSTRUMENT is not None, "test extra not installed"
    assert GUNICORN is not None, "test extra not installed"
    (tmp_path / "app.py").write_text(textwrap.dedent(_APP))
    (tmp_path / "gunicorn.conf.py").write_text(textwrap.dedent(_CONFIG))
    storage = tmp_path / "metrics"
    port = _free_port()
    env = {
        **os.environ,
        "OTEL_SERVICE_NAME": "items",
        "OTEL_TRACES_EXPORTER": "operation_json",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OPERATION_JSON_PATH": str(storage),
        "OTEL_EXPORTER_OPERATION_JSON_FLUSH_INTERVAL": "3600",
        # The spans stay in the SDK's processor until the end: only the hook writes them.
        "OTEL_BSP_SCHEDULE_DELAY": "3600000",
    }
    server = subprocess.Popen(
        [
            INSTRUMENT,
            GUNICORN,  # reads ./gunicorn.conf.py, as it does by default
            "--worker-class",
            "uvicorn.workers.UvicornWorker",
            "--workers",
            "2",
            "--bind",
            f"127.0.0.1:{port}",
            "app:app",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_until_listening(port, server)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for item_id in range(40):
                assert client.get(f"/items/{item_id}").status_code == 200
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    requests = [
        record for record in load_records(storage) if record.operation_type == "api_request"
    ]
    assert sorted(record.operation_name for record in requests) == ["GET /items/{item_id}"] * 40
    assert all(record.success for record in requests)
    assert "Worker (pid:" in output, output[-2000:]  # the workers did end by the signal
