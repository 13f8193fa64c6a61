"""A review of the OTEL_SDK_DISABLED switch and of the command line's new batch reader.

Real SDK spans, real files, real subprocesses. Each test here failed on the code it was
written against, for the reason its docstring gives, but
test_a_lease_never_given_up_is_reported_not_waited_for_for_ever, which bounds the fix of
the test before it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from otel_json_exporter.records import OperationRecord
from otel_json_exporter.writer import BatchWriter

from .conftest import load_records

# == OTEL_SDK_DISABLED =====================================================================


class TestSpansThatComeToADisabledExporter:
    def test_they_are_written_not_dropped(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The SDK reads OTEL_SDK_DISABLED once, when a TracerProvider is made, and a
        disabled provider makes no spans; it never drops spans handed to an exporter.
        An exporter made while the variable said "true" dropped every span a provider
        made before it (one made while the SDK was on: a provider built at import, the
        variable set later from a .env file) and answered SUCCESS: the records were lost
        with no log line and no count."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        from otel_json_exporter import OperationSpanExporter

        caplog.set_level(logging.WARNING, logger="otel_json_exporter")
        provider = TracerProvider()  # made while the SDK is on: it makes real spans
        storage = tmp_path / "metrics"
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        exporter = OperationSpanExporter(storage)
        assert not storage.exists()  # still nothing started while no span has come
        provider.add_span_processor(BatchSpanProcessor(exporter))
        for step in ("one", "two", "three"):
            with provider.get_tracer("job").start_as_current_span(step):
                pass
        provider.shutdown()  # the processor's thread exports them, at the latest now
        names = sorted(record.operation_name for record in load_records(storage))
        assert names == ["one", "three", "two"]
        stats = exporter.manager.stats()
        assert (stats.total_persisted, stats.total_dropped, stats.queue_size) == (3, 0, 0)
        assert "OTEL_SDK_DISABLED" in caplog.text  # said once, not silent

    def test_an_unusable_path_then_fails_the_export_and_says_so(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The same with a storage path that cannot be used: the export fails, FAILURE
        and logged with the StorageError's reason, where it answered SUCCESS."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        from otel_json_exporter import OperationSpanExporter

        finished = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(finished))
        with provider.get_tracer("job").start_as_current_span("step"):
            pass
        (tmp_path / "a-file").write_text("")
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        exporter = OperationSpanExporter(tmp_path / "a-file" / "metrics")
        with caplog.at_level(logging.ERROR, logger="otel_json_exporter"):
            result = exporter.export(finished.get_finished_spans())
        assert result is SpanExportResult.FAILURE
        assert "1 spans dropped" in caplog.text
        assert "Not a directory" in caplog.text
        exporter.shutdown()


# == the command line's batch reader ========================================================

# Holds a write lease on a file, as Samba (kernel oplocks) and the NFS server (write
# delegations) do, and gives it up when the kernel asks (SIGIO), as they do.
_LEASE_HOLDER = """
import fcntl, os, signal, sys

fd = os.open(sys.argv[1], os.O_RDONLY)
released = False


def give_up(signum, frame):
    global released
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    released = True


signal.signal(signal.SIGIO, give_up)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
print("holding", flush=True)
while not released:
    signal.pause()
"""


def test_a_batch_file_under_a_lease_is_read_once_the_lease_is_given_up(tmp_path: Path) -> None:
    """A batch file another process holds a write lease on (a Samba share's oplock, an
    NFS server's delegation) is opened, as by any reader, once the holder gives it up:
    the kernel blocks the open meanwhile. With O_NONBLOCK (added to keep a FIFO from
    blocking) the open fails at once with EAGAIN instead, and `validate` called the
    valid file invalid ("cannot read: Resource temporarily unavailable") and exited 1;
    `summarize` would have left its records out."""
    written = BatchWriter(tmp_path).write(
        [
            OperationRecord(
                operation_type="api_request",
                operation_name="GET /x",
                duration_ms=1.0,
                success=True,
                timestamp=datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc),
            )
        ],
        now=datetime(2026, 3, 1, 8, 0, 1, tzinfo=timezone.utc),
    )
    assert written.path is not None
    holder = subprocess.Popen(
        [sys.executable, "-c", _LEASE_HOLDER, str(written.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        result = subprocess.run(
            [sys.executable, "-m", "otel_json_exporter", "validate", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        _, errors = holder.communicate(timeout=60)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    assert holder.returncode == 0, errors
    assert (result.returncode, result.stderr) == (0, ""), result.stdout
    assert result.stdout.splitlines()[-1].startswith("1 batch file checked in")
    assert "1 valid (1 records), 0 invalid" in result.stdout


def test_a_lease_never_given_up_is_reported_not_waited_for_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait for a lease is bounded (the kernel breaks one itself after its
    lease-break-time): an open that keeps failing with EAGAIN makes the file one that
    cannot be read, as before."""
    import errno
    import os

    from otel_json_exporter import _batchfiles

    path = tmp_path / "metrics_20260301_080001_000000.json"
    path.write_text("{}", encoding="utf-8")
    tries = []

    def leased(*args: object, **kwargs: object) -> int:
        tries.append(args)
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(_batchfiles, "_LEASE_WAIT_SECONDS", 0.0)
    monkeypatch.setattr(os, "open", leased)
    with pytest.raises(_batchfiles.InvalidBatchFile) as raised:
        _batchfiles.read(path, "20260301_080001_000000")
    monkeypatch.undo()
    assert raised.value.reason == f"cannot read: {os.strerror(errno.EAGAIN)}"
    assert len(tries) == 2  # tried again once the first failed


# == control characters inside an address ===================================================

# Characters that show nothing when printed (NUL, backspace, DEL, the C1 controls a
# latin-1 decoding makes of UTF-8, as WSGI's environ does: U+2019 becomes U+00E2 U+0080
# U+0099), inside the local part of an address.
_SPLIT_ADDRESSES = [
    "alice.smith\x00@example.com",
    "alice.smith\x08@example.com",
    "alice.smith\x7f@example.com",
    "alice.smith\x9b@example.com",
    "mary.o\u2019brien@example.com".encode().decode("latin-1"),
    "j\u00fcrgen.gro\u00dfe@example.de".encode().decode("latin-1"),
]


def test_an_address_with_a_control_character_in_its_local_part_is_masked_whole(
    tmp_path: Path,
) -> None:
    """The PII rule reads the invisible format characters (U+200B...) as part of a local
    part, so that one inside an address leaves nothing of it unmasked, and it masks an
    address written with escapes (``alice.smith\\u007f@...``, as ``--json`` prints it),
    but it did not read the control characters so: the part before one was kept, and an
    address with one at the end of its local part was not found at all. The manager
    wrote ``GET /u/alice.smith<DEL>@example.com`` to disk as it came (``cat`` shows no
    DEL: the address), took a metadata value it refuses without the DEL, and of a WSGI
    path's latin-1 ``mary.o'brien`` kept ``mary.o``."""
    import asyncio

    from otel_json_exporter import MetricsManager

    refused = []

    async def write() -> MetricsManager:
        manager = MetricsManager(tmp_path, flush_interval_seconds=60)
        await manager.start()
        for address in _SPLIT_ADDRESSES:
            await manager.record_operation(
                "api_request",
                f"GET /u/{address}",
                1.0,
                success=False,
                error_message=f"no such user {address}",
            )
            try:
                await manager.record_operation(
                    "api_request", "GET /x", 1.0, metadata={"note": f"from {address}"}
                )
            except ValueError as exc:  # as for an address without the character
                refused.append(str(exc))
        await manager.stop()
        return manager

    manager = asyncio.run(write())
    assert refused == ["metadata 'note' contains an e-mail address (PII)"] * len(_SPLIT_ADDRESSES)
    stats = manager.stats()
    assert stats.total_persisted == len(_SPLIT_ADDRESSES)
    assert stats.pii_redacted == 2 * len(_SPLIT_ADDRESSES)
    (batch,) = tmp_path.glob("metrics_*.json")
    for record in json.loads(batch.read_bytes())["records"]:  # the strings as written
        for text in (record["operation_name"], record["error_message"]):
            assert text.endswith("[REDACTED]"), ascii(text)
            for fragment in ("alice", "smith", "mary", "brien", "rgen", "gro"):
                assert fragment not in text, ascii(text)
