"""Defects found reviewing c02eaca..8a5cc19 (cut values, "%40", stop/flush, lazy __init__).

Each test failed on 8a5cc19, and passes since the fix. Real SDK pipelines
(TracerProvider, SimpleSpanProcessor, OperationSpanExporter), real batch files, real
subprocesses; the only fault injected is a failing ``os.fsync`` on the writer thread
(``_faults.Fault``).
"""

from __future__ import annotations

import asyncio
import errno
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.trace import Status, StatusCode, Tracer

from otel_json_exporter import MetricsManager
from otel_json_exporter.pii import DEFAULT_POLICY

from ._faults import WRITER_THREAD, Fault, on_regular_fd
from ._spans import export_spans

WRITERS = ["thread", "process"]
REPO = Path(__file__).resolve().parent.parent


def _export(
    directory: Path,
    make_spans: Callable[[Tracer], None],
    *,
    writer: str = "thread",
    limit: int | None = 24,
) -> list[dict[str, Any]]:
    """Spans through a real SDK pipeline; the records written."""
    limits = SpanLimits(max_attribute_length=limit) if limit else SpanLimits()
    return export_spans(directory, make_spans, writer=writer, limits=limits)[0]


# -- cut values: what the SDK's length limit left is still personal data --------------


@pytest.mark.parametrize("writer", WRITERS)
def test_error_type_cut_by_the_limit_is_masked_in_error_message(
    tmp_path: Path, writer: str
) -> None:
    """error_message falls back to the ``error.type`` attribute, which the SDK cut:
    the metadata copy is masked (``_cut_ends_masked``), the error_message copy is not
    (snapshot_to_row runs mask_cut_end on the error only for an exception event)."""

    def make(tracer: Tracer) -> None:
        with tracer.start_as_current_span("op") as span:
            # Cut to "denied: jean.tremblay@gm" (24 characters).
            span.set_attribute("error.type", "denied: jean.tremblay@gmail.com")
            span.set_status(Status(StatusCode.ERROR))  # no description, no exception event

    (record,) = _export(tmp_path, make, writer=writer)
    assert record["metadata"]["error.type"] == "denied: [REDACTED]"
    assert "tremblay" not in record["error_message"], record["error_message"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_full_width_at_sign_cut_by_the_limit_is_masked(tmp_path: Path, writer: str) -> None:
    """The full-width at sign (U+FF20) is an "@" to the filter (NFKC), whole address
    or not; mask_cut_end looks for "@", "%40" or "//" only, so a cut one stays."""
    whole = "hello, jean.tremblay\uff20gmail.com"
    assert DEFAULT_POLICY.redact(whole)[0] == "[REDACTED]"  # uncut: masked
    records = _export(tmp_path, lambda t: _one_span(t, {"note": whole}), writer=writer)
    (record,) = records
    # Cut to "hello, jean.tremblay" + U+FF20 + "gma".
    assert "tremblay" not in record["metadata"]["note"], record["metadata"]["note"]


@pytest.mark.parametrize("writer", WRITERS)
def test_a_percent_encoded_at_sign_cut_inside_its_escape_is_masked(
    tmp_path: Path, writer: str
) -> None:
    """A cut right after "@" leaves "jean.tremblay@", which is masked; a cut inside
    "%40" ("jean.tremblay%4") leaves the same local part, which is not. URL
    attributes hold "%40" more than anything."""
    url = "https://api.example.com/users/jean.tremblay%40gmail.com"
    at_cut = url.index("%40") + 2  # ".../users/jean.tremblay%4"
    # Free text cut at the same place: "lookup ----... jean.tremblay%4".
    text = "lookup " + "-" * (at_cut - 23) + " jean.tremblay%40gmail.com"
    records = _export(
        tmp_path,
        lambda t: _one_span(t, {"url.full": url, "detail": text}),
        writer=writer,
        limit=at_cut,
    )
    (record,) = records
    metadata = record["metadata"]
    assert metadata["detail"].endswith("%4") or "tremblay" not in metadata["detail"]
    assert "tremblay" not in metadata["url.full"], metadata["url.full"]
    assert "tremblay" not in metadata["detail"], metadata["detail"]


def _one_span(tracer: Tracer, attributes: dict[str, Any]) -> None:
    with tracer.start_as_current_span("op") as span:
        span.set_attributes(attributes)


# -- over-masking: percent-encoded text that is not an address ------------------------


def test_a_percent_encoded_mention_is_not_an_address(tmp_path: Path) -> None:
    """ "cc @john.doe" is no address (nothing before the "@"); percent-encoded, the
    "%20" joins "cc" to it as local-part characters and the whole is masked, in free
    text and (by mask_url's last pass) in a URL whose query mask_url itself decoded
    and judged free of PII. c02eaca left both alone."""
    assert DEFAULT_POLICY.redact("search for cc @john.doe")[0] == "search for cc @john.doe"
    url = "https://x.io/search?q=cc%20%40john.doe&page=2"
    records = _export(
        tmp_path,
        lambda t: _one_span(t, {"url.full": url, "query": "search for cc%20%40john.doe"}),
        limit=None,
    )
    (record,) = records
    assert record["metadata"]["url.full"] == url
    assert record["metadata"]["query"] == "search for cc%20%40john.doe"


# -- stop(): the later deadline kept from a stop() that was cancelled ------------------


async def test_a_bounded_stop_after_a_cancelled_long_stop_ends_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop(timeout=3600) is cancelled (an application shutting down with
    asyncio.timeout); then stop(timeout=0.3). The disk is failing. On c02eaca the
    writer gave up at the second stop's deadline; now the cancelled stop's deadline
    "holds": the writer thread retries every 50 ms for an hour, logging a warning
    each time, and the second stop's error blames "another stop()" that no one runs."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60.0)
    await manager.start()
    await manager.record_operation("job", "step", 1.0)
    Fault(monkeypatch, "fsync", errno.EIO, match=on_regular_fd)

    long_stop = asyncio.create_task(manager.stop(timeout=3600))
    await asyncio.sleep(0.3)
    long_stop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await long_stop

    with pytest.raises(asyncio.TimeoutError) as caught:
        await manager.stop(timeout=0.3)
    time.sleep(1.0)  # the bounded stop's deadline is long past
    errors = manager.stats().write_errors
    time.sleep(0.5)
    retries = manager.stats().write_errors - errors
    writers = [t for t in threading.enumerate() if t.name == WRITER_THREAD]
    assert (retries, len(writers)) == (0, 0), "the writer still retries after stop() returned"
    assert "another stop()" not in str(caught.value)


# -- the lazy package __init__ (PEP 562) -------------------------------------------------


def test_submodules_are_attributes_of_the_package_as_before(tmp_path: Path) -> None:
    """c02eaca imported every submodule in __init__, so ``otel_json_exporter.mapping``
    (and .pii, .records...) worked after ``import otel_json_exporter``; now
    AttributeError, unless some other code happened to import it first."""
    code = textwrap.dedent(
        """
        import otel_json_exporter
        print(otel_json_exporter.mapping.span_to_row.__name__)
        print(otel_json_exporter.pii.mask_text("a@b.io")[0])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-500:]


def test_mypy_still_flags_a_misspelled_public_name(tmp_path: Path) -> None:
    """A module-level ``__getattr__ -> Any`` tells mypy that every name exists:
    ``from otel_json_exporter import MetricManager`` (typo) type-checks as Any.
    On c02eaca mypy said 'Module "otel_json_exporter" has no attribute "MetricManager"'."""
    user = tmp_path / "user_code.py"
    user.write_text("from otel_json_exporter import MetricManager\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(user)],
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"MYPYPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert 'has no attribute "MetricManager"' in result.stdout, result.stdout
