"""``MetricsManager(writer="process")``: batches written by a real child process.

Faults are real too: the child is killed with SIGKILL, sent SIGINT and SIGTERM,
and its storage directory is swapped for a file, so that its writes fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanContext, SpanKind

from otel_json_exporter import MetricsManager, OperationSpanExporter, _process_writer
from otel_json_exporter._process_writer import ProcessBatchWriter, WriterProcessError
from otel_json_exporter.mapping import snapshot_of
from otel_json_exporter.pii import DEFAULT_POLICY
from otel_json_exporter.records import OperationRecord, build_row, queued_row

from ._tricky import Region, Status500
from .conftest import load_batches, load_records
from .test_plain_path import shape


def make(storage: Path, **options: object) -> MetricsManager:
    settings: dict[str, object] = {"flush_interval_seconds": 60.0, "writer": "process"}
    settings.update(options)
    return MetricsManager(storage, **settings)  # type: ignore[arg-type]


def child_pid(manager: MetricsManager) -> int:
    process = manager._batch_writer._process  # type: ignore[union-attr]
    assert process is not None, "no writer process"
    pid: int = process.pid
    return pid


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, or a thread id, does not count)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except FileNotFoundError:
        return False
    return fields["Tgid"].strip() == str(pid) and not fields["State"].strip().startswith("Z")


async def eventually(check: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def record(manager: MetricsManager, rids: range) -> None:
    for rid in rids:
        await manager.record_operation("job", f"step {rid % 7}", float(rid), metadata={"rid": rid})


def rids_on_disk(records: list[OperationRecord]) -> list[int]:
    return [record.metadata["rid"] for record in records]


class TestWriting:
    async def test_writes_every_record_in_order_and_the_child_ends_with_stop(
        self, storage: Path
    ) -> None:
        manager = make(storage, max_batch_size=100)
        await manager.start()
        pid = child_pid(manager)
        assert pid != os.getpid()
        assert running(pid)
        await record(manager, range(2_050))
        await manager.stop()
        assert not running(pid)
        assert rids_on_disk(load_records(storage)) == list(range(2_050))
        batches = load_batches(storage)
        assert [batch.total_records for batch in batches] == [100] * 20 + [50]
        stats = manager.stats()
        assert (stats.total_persisted, stats.batches_written, stats.write_errors) == (2_050, 21, 0)
        assert stats.bytes_written == sum(path.stat().st_size for path in storage.iterdir())

    async def test_writes_the_same_records_as_the_thread_writer(self, tmp_path: Path) -> None:
        records: dict[str, list[OperationRecord]] = {}
        for writer in ("thread", "process"):
            directory = tmp_path / writer
            manager = make(directory, writer=writer, max_batch_size=64)
            await manager.start()
            await manager.record_operation("api", "GET /a", 1.5, False, "boom", {"k": [1, "x"]})
            await manager.record_operation("db", "SELECT", 0.25, metadata={"note": "é ☃"})
            await record(manager, range(200))
            await manager.stop()
            records[writer] = load_records(directory)
        fields = [
            [(r.operation_type, r.operation_name, r.duration_ms, r.success, r.error_message,
              r.metadata) for r in records[writer]]
            for writer in ("thread", "process")
        ]  # fmt: skip
        assert fields[0] == fields[1]
        assert len(fields[1]) == 202

    async def test_timer_flush_and_restart_after_stop(self, storage: Path) -> None:
        manager = make(storage, flush_interval_seconds=0.05)
        await manager.start()
        await record(manager, range(3))
        await eventually(lambda: manager.stats().total_persisted == 3)
        await manager.stop()
        await manager.start()  # a new child
        await record(manager, range(3, 5))
        await manager.flush()
        assert rids_on_disk(load_records(storage)) == [0, 1, 2, 3, 4]
        await manager.stop()

    def test_an_unknown_writer_is_refused(self, storage: Path) -> None:
        with pytest.raises(ValueError, match="writer must be 'thread' or 'process'"):
            MetricsManager(storage, writer="fork")  # type: ignore[arg-type]


class TestFaults:
    async def test_a_killed_child_is_replaced_and_no_record_is_lost(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=50, max_queue_size=400)
        await manager.start()
        first = child_pid(manager)
        await record(manager, range(500))
        os.kill(first, signal.SIGKILL)
        await record(manager, range(500, 1_500))
        await manager.stop(timeout=30)
        on_disk = rids_on_disk(load_records(storage))
        assert set(on_disk) == set(range(1_500))
        # Only batches in flight when the child died (two of 50) may be written twice.
        assert len(on_disk) - len(set(on_disk)) <= 100
        stats = manager.stats()
        assert stats.write_errors >= 1
        assert stats.total_persisted == 1_500

    async def test_a_failing_disk_keeps_records_queued_in_order(self, storage: Path) -> None:
        manager = make(storage, max_batch_size=10, flush_interval_seconds=0.05)
        await manager.start()
        await record(manager, range(10))
        await eventually(lambda: manager.stats().total_persisted == 10)
        moved = storage.with_name("moved")
        storage.rename(moved)
        storage.write_text("not a directory")  # every write of the child now fails
        await record(manager, range(10, 45))  # batches queue up behind the failing one
        await eventually(lambda: manager.stats().write_errors >= 2)
        assert manager.stats().queue_size == 35
        storage.unlink()
        moved.rename(storage)
        await manager.flush(timeout=30)
        # Nothing doubled, nothing out of order: the batch behind a failure was skipped.
        assert rids_on_disk(load_records(storage)) == list(range(45))
        await manager.stop()

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
    async def test_the_child_ignores_interrupts_and_termination(
        self, storage: Path, signum: int
    ) -> None:
        manager = make(storage, max_batch_size=10)
        await manager.start()
        pid = child_pid(manager)
        os.kill(pid, signum)
        await asyncio.sleep(0.2)
        await record(manager, range(25))
        await manager.stop()
        assert rids_on_disk(load_records(storage)) == list(range(25))
        assert manager.stats().write_errors == 0  # the same child did it all

    def test_the_child_exits_when_its_parent_dies(self, storage: Path) -> None:
        script = textwrap.dedent(
            f"""
            import asyncio, os
            from otel_json_exporter import MetricsManager

            async def main():
                manager = MetricsManager({str(storage)!r}, writer="process", max_batch_size=5)
                await manager.start()
                for rid in range(12):
                    await manager.record_operation("job", "step", 1.0, metadata={{"rid": rid}})
                await manager.flush()
                print(manager._batch_writer._process.pid, flush=True)
                os._exit(0)  # no stop(), no exit hooks: the parent is simply gone

            asyncio.run(main())
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
        )
        pid = int(done.stdout.split()[-1])
        deadline = time.monotonic() + 10
        while running(pid):
            assert time.monotonic() < deadline, "the writer process outlived its parent"
            time.sleep(0.02)
        assert rids_on_disk(load_records(storage)) == list(range(12))


@contextlib.contextmanager
def a_child(storage: Path) -> Iterator[tuple[int, int]]:
    """A writer process for ``storage``, told the default policy: its input and its output.

    It must exit cleanly when its input closes.
    """
    from otel_json_exporter._process_writer import _child_command, _receive, _send

    storage.mkdir(exist_ok=True)
    child = subprocess.Popen(_child_command(storage), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None
    assert child.stdout is not None
    to_child, from_child = child.stdin.fileno(), child.stdout.fileno()
    try:
        _send(to_child, ("policy", [], []))
        assert _receive(from_child) == ("ready",)
        yield to_child, from_child
    finally:
        child.stdin.close()
        assert child.wait(10) == 0  # its input closed: it exits, cleanly
        child.stdout.close()


class TestTheChildsProtocol:
    """The child alone, spoken to through its pipes: what a failed batch does to the next."""

    def test_after_a_failure_batches_are_skipped_until_resume(self, storage: Path) -> None:
        from otel_json_exporter._process_writer import _receive, _send
        from otel_json_exporter.records import build_row

        def rows(first: int) -> list[object]:
            return [
                build_row("job", "step", 1.0, 1_700_000_000_000_000, True, None, {"rid": rid})
                for rid in range(first, first + 3)
            ]

        with a_child(storage) as (to_child, from_child):
            _send(to_child, ("write", rows(0)))
            assert _receive(from_child)[0] == "written"
            moved = storage.with_name("moved")
            storage.rename(moved)
            storage.write_text("not a directory")
            _send(to_child, ("write", rows(3)))
            failed = _receive(from_child)
            assert failed[0] == "oserror"
            assert isinstance(failed[1], int)
            storage.unlink()
            moved.rename(storage)  # the disk works again, but the child waits for resume
            _send(to_child, ("write", rows(6)))
            assert _receive(from_child) == ("skipped",)
            _send(to_child, ("resume",))
            _send(to_child, ("write", rows(3)))
            assert _receive(from_child)[0] == "written"
        assert rids_on_disk(load_records(storage)) == [0, 1, 2, 3, 4, 5]


class TestWhatGoesDownThePipe:
    """Rows go as ``marshal``, anything else as the plain pickle; each arrives as sent."""

    @staticmethod
    def through_a_pipe(message: tuple[object, ...]) -> tuple[int, object]:
        """The codec a message was framed with, and what the other end reads."""
        frame = _process_writer._frame(message)
        assert len(frame) < 60_000, "more than a pipe holds with no one reading"
        read, write = os.pipe()
        try:
            os.write(write, frame)
            return frame[_process_writer._HEADER.size - 1], _process_writer._receive(read)
        finally:
            os.close(read)
            os.close(write)

    def test_a_batch_of_rows_goes_as_marshal_and_arrives_as_sent(self) -> None:
        metadata = {"rid": 1, "ok": True, "ratio": 0.5, "tags": ["a", "b"], "none": None}
        rows: list[object] = [
            queued_row(
                build_row(
                    "job",
                    f"step {i}",
                    1.5,
                    1_700_000_000_000_000 + i,
                    i % 2 == 0,
                    "boom" if i else None,
                    {**metadata, "rid": i},
                )
            )
            for i in range(3)
        ]
        rows.append(build_row("job", "dict", 2.0, 1_700_000_000_000_009, False, "x", metadata))
        codec, back = self.through_a_pipe(("write", rows))
        assert codec == _process_writer._MARSHALLED
        assert back == ("write", rows)
        assert shape(back) == shape(("write", rows))  # every part of the same exact type

    def test_a_batch_holding_a_span_goes_as_the_plain_pickle(self) -> None:
        # A hand-made span may hold what the SDK would refuse: marshal would turn both
        # of these into bytes, which the mapping reads differently.
        view = memoryview(b"cd")
        span = ReadableSpan(
            name="blob",
            context=SpanContext(0x1F, 0x2F, is_remote=False),
            attributes={"blob": bytearray(b"ab"), "view": view},
            start_time=5,
            end_time=7,
        )
        row = queued_row(build_row("job", "step", 1.0, 1_700_000_000_000_000, True, None, None))
        codec, back = self.through_a_pipe(("write", [row, snapshot_of(span)]))
        assert codec == _process_writer._PICKLED
        attributes = back[1][1][6]  # type: ignore[index]
        assert attributes == {"blob": bytearray(b"ab"), "view": str(view)}
        assert type(attributes["blob"]) is bytearray
        assert back[1][0] == row  # type: ignore[index]

    def test_a_row_that_marshal_refuses_goes_as_the_plain_pickle(self) -> None:
        row = (
            "job",
            "step",
            1.0,
            1_700_000_000_000_000,
            True,
            None,
            {"region": Region.CA, "status": Status500.BAD_GATEWAY},
        )
        codec, back = self.through_a_pipe(("write", [row]))
        assert codec == _process_writer._PICKLED
        metadata = back[1][0][6]  # type: ignore[index]
        assert metadata == {"region": "ca-central-1", "status": 502}
        assert (type(metadata["region"]), type(metadata["status"])) == (str, int)

    def test_other_messages_go_as_the_plain_pickle(self) -> None:
        assert self.through_a_pipe(("resume",)) == (_process_writer._PICKLED, ("resume",))

    def test_an_unknown_codec_is_an_unreadable_message_and_the_next_one_is_read(self) -> None:
        read, write = os.pipe()
        try:
            # A payload either codec could read: only the codec byte makes it unreadable.
            payload = _process_writer._pickle(("resume",))
            os.write(write, _process_writer._HEADER.pack(len(payload), 9) + payload)
            os.write(write, _process_writer._frame(("resume",)))
            with pytest.raises(OSError, match="unreadable message") as caught:
                _process_writer._receive(read)
            assert caught.value.errno == errno.EPROTO
            assert _process_writer._receive(read) == ("resume",)
        finally:
            os.close(read)
            os.close(write)


class TestAnUnreadableMessage:
    def test_the_child_answers_an_error_then_writes_after_resume(self, storage: Path) -> None:
        from otel_json_exporter._process_writer import _receive, _send
        from otel_json_exporter.records import build_row

        rows = [
            queued_row(build_row("job", "step", 1.0, 1_700_000_000_000_000, True, None, {"rid": 7}))
        ]
        whole = _process_writer._frame(("write", rows))
        header = _process_writer._HEADER
        assert whole[header.size - 1] == _process_writer._MARSHALLED
        cut = whole[header.size : -10]  # a marshal payload cut short
        with a_child(storage) as (to_child, from_child):
            os.write(to_child, header.pack(len(cut), _process_writer._MARSHALLED) + cut)
            assert _receive(from_child) == ("error", "unreadable message (EOFError)")
            _send(to_child, ("resume",))
            os.write(to_child, whole)
            assert _receive(from_child)[0] == "written"
        assert rids_on_disk(load_records(storage)) == [7]


_FORK_AND_RECORD_TOGETHER = """
import asyncio, os, sys
from otel_json_exporter import MetricsManager

manager = MetricsManager(sys.argv[1], writer="process", max_batch_size=20)
manager.start_sync()


async def record(tag):
    for rid in range(1500):
        await manager.record_operation("job", tag, float(rid), metadata={"rid": rid})
    await manager.flush()
    print(tag, manager._batch_writer._process.pid, manager.stats().write_errors, flush=True)
    await manager.stop()


pid = os.fork()
asyncio.run(record("child" if pid == 0 else "parent"))  # both at once
if pid == 0:
    os._exit(0)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_gets_its_own_writer_process(tmp_path: Path) -> None:
    script = tmp_path / "fork.py"
    script.write_text(_FORK_AND_RECORD_TOGETHER)
    storage = tmp_path / "metrics"
    done = subprocess.run(
        [sys.executable, str(script), str(storage)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    writers = {tag: (pid, errors) for tag, pid, errors in map(str.split, done.stdout.splitlines())}
    assert writers.keys() == {"parent", "child"}
    assert writers["parent"][0] != writers["child"][0]
    assert writers["parent"][1] == writers["child"][1] == "0"  # no write failed on the way
    records = load_records(storage)
    for tag in ("parent", "child"):
        assert [r.metadata["rid"] for r in records if r.operation_name == tag] == list(range(1500))


def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``sys.executable`` a program that exits at once; returns where it notes each start."""
    starts = tmp_path / "starts"
    fake = tmp_path / "not-python"
    fake.write_text(f"#!/bin/sh\necho started >> {starts}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    return starts


async def kill_child(manager: MetricsManager) -> None:
    child = manager._batch_writer._process  # type: ignore[union-attr]
    assert child is not None
    os.kill(child.pid, signal.SIGKILL)
    await eventually(lambda: child.poll() is not None)


class TestWithNoChild:
    """Batches that no child can take are written in the application's process, by the same code."""

    async def test_when_no_child_can_be_started_the_batches_are_written_here(
        self,
        storage: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        manager = make(storage)
        await manager.start()
        await record(manager, range(5))
        await manager.flush(timeout=30)
        starts = fake_python(tmp_path, monkeypatch)
        await kill_child(manager)
        for first in (5, 10, 15):
            await record(manager, range(first, first + 5))
            await manager.flush(timeout=30)
        assert starts.read_text() == "started\n"  # tried once, not for every batch
        assert "the writer process did not start" in caplog.text
        assert "batches are written in this process until the manager starts again" in caplog.text
        stats = manager.stats()
        assert (stats.total_persisted, stats.write_errors, stats.queue_size) == (20, 0, 0)
        await manager.stop(timeout=30)
        assert rids_on_disk(load_records(storage)) == list(range(20))
        monkeypatch.undo()
        await manager.start()  # a new start tries a child again
        assert running(child_pid(manager))
        await record(manager, range(20, 25))
        await manager.stop(timeout=30)
        assert rids_on_disk(load_records(storage)) == list(range(25))

    async def test_a_stop_with_no_child_running_starts_none(
        self,
        storage: Path,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        manager = make(storage)
        await manager.start()
        await record(manager, range(30))  # a batch not due yet: none in flight
        starts = fake_python(tmp_path, monkeypatch)
        await kill_child(manager)
        await manager.stop(timeout=30)
        assert not starts.exists()
        assert "the writer process exited (exit code -9); the last batches are written here" in (
            caplog.text
        )
        assert rids_on_disk(load_records(storage)) == list(range(30))
        assert manager.stats().write_errors == 0

    def test_spans_written_here_are_mapped_as_export_maps_them(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        here, mapped_in_export = tmp_path / "here", tmp_path / "export"
        with_child = OperationSpanExporter(here, writer="process", flush_interval_seconds=60)
        without = OperationSpanExporter(mapped_in_export, flush_interval_seconds=60)
        provider = TracerProvider()
        for exporter in (with_child, without):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        starts = fake_python(tmp_path, monkeypatch)
        asyncio.run(kill_child(with_child.manager))
        tracer = provider.get_tracer("orders")
        for number in range(40):
            name = f"GET /orders/{number}"
            with tracer.start_as_current_span(name, kind=SpanKind.SERVER) as span:
                span.set_attribute("http.request.method", "GET")
                span.set_attribute("http.response.status_code", 200 if number % 5 else 500)
                span.set_attribute(
                    "url.full", f"https://shop.example/orders?email=jane{number}@x.ca"
                )
                span.set_attribute("user.email", f"jane{number}@x.ca")
                span.set_attribute("cloud.region", Region.CA)
                span.set_attribute("note", f"paid by jane{number}@x.ca" if number % 2 else "paid")
        assert provider.force_flush(30_000)
        assert with_child.force_flush()
        assert without.force_flush()
        assert starts.read_text() == "started\n"
        expected, written = load_records(mapped_in_export), load_records(here)
        assert len(written) == 40
        assert [r.model_dump() for r in written] == [r.model_dump() for r in expected]
        assert not any(b"jane" in path.read_bytes() for path in here.iterdir())
        assert with_child.manager.stats().pii_redacted == without.manager.stats().pii_redacted
        assert with_child.manager.stats().pii_redacted >= 40
        provider.shutdown()


class TestAPipeThatFails:
    """A write to the child's pipe that fails (EIO, injected at ``os.write``) may have
    sent part of a frame: the child would read what follows out of step, and its
    answers would be taken for other batches'. Before, the batch sent whole was
    counted failed while the child wrote it, every later answer went to the wrong
    batch, and records were removed from the queue that were on no disk."""

    @staticmethod
    def rows(first: int, count: int) -> list[Any]:
        return [
            queued_row(build_row("job", "s", 1.0, 1_700_000_000_000_000, True, None, {"rid": rid}))
            for rid in range(first, first + count)
        ]

    @pytest.mark.parametrize(
        ("failing", "part"),
        [(1, 5), (2, 0), (2, 5)],
        ids=["the-batch-asked-for-in-part", "the-one-sent-ahead", "the-one-sent-ahead-in-part"],
    )
    def test_the_child_is_replaced_and_every_batch_written_once(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch, failing: int, part: int
    ) -> None:
        first, ahead, last = self.rows(0, 4), self.rows(4, 6), self.rows(10, 5)
        sent_ahead: list[list[Any]] = [ahead]
        writer = ProcessBatchWriter(
            storage, lambda taken: sent_ahead.pop() if sent_ahead else None, DEFAULT_POLICY
        )
        writer.prepare()
        pipe_writes = 0
        real_write = os.write

        def write(fd: int, data: bytes) -> int:
            nonlocal pipe_writes
            if fd == writer._to_child:
                pipe_writes += 1
                if pipe_writes == failing:
                    if part:
                        real_write(fd, bytes(data)[:part])  # part of the frame went
                    raise OSError(errno.EIO, "Input/output error")
            return real_write(fd, data)

        monkeypatch.setattr(os, "write", write)
        killed = writer._process
        assert killed is not None
        written: list[int] = []
        for batch in (first, ahead, last):
            for _ in range(3):  # as the manager does: a failed batch is tried again
                try:
                    written.append(writer.write_rows(batch).records)
                    break
                except OSError:
                    continue
        writer.close()
        assert killed.poll() is not None  # ended: its pipe was out of step
        assert written == [4, 6, 5]
        assert rids_on_disk(load_records(storage)) == list(range(15))  # each once


class TestReviewFindings:
    """Each of these failed before its fix (a hang, a 10 s stall, a doubled batch...)."""

    async def test_int_and_float_subclasses_are_written_as_plain_values(
        self, storage: Path
    ) -> None:
        class Status(enum.IntEnum):  # a local class: no other process can import it
            OK = 200

        class Seconds(float):
            pass

        manager = make(storage, max_batch_size=5)
        await manager.start()
        for rid in range(12):
            metadata = {"rid": rid, "status": Status.OK, "wait": Seconds(0.5), "l": [Status.OK]}
            await manager.record_operation("job", "step", Seconds(1.5), metadata=metadata)
        await manager.stop(timeout=30)
        records = load_records(storage)
        assert rids_on_disk(records) == list(range(12))
        assert records[0].metadata == {"rid": 0, "status": 200, "wait": 0.5, "l": [200]}
        assert type(records[0].metadata["status"]) is int
        stats = manager.stats()
        assert (stats.write_errors, stats.worker_errors) == (0, 0)

    @pytest.mark.parametrize("program", ["sleep 60", "echo hello", "printf abc; sleep 60"])
    async def test_start_fails_clearly_when_the_executable_is_not_python(
        self, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, program: str
    ) -> None:
        fake = tmp_path / "frozen-app"
        fake.write_text(f"#!/bin/sh\n{program}\n")
        fake.chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(fake))  # as in a frozen application
        monkeypatch.setattr(_process_writer, "_START_TIMEOUT", 0.5)
        manager = make(storage)
        started = time.monotonic()
        with pytest.raises(WriterProcessError, match="did not start"):
            await manager.start()
        assert time.monotonic() - started < 5
        assert manager._batch_writer.closed  # nothing left running
        assert not manager.is_running

    async def test_an_executable_that_cannot_run_fails_start_and_leaks_no_descriptor(
        self, storage: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        manager = make(storage)
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            with pytest.raises(WriterProcessError, match="cannot start the writer process"):
                await manager.start()
        assert set(os.listdir("/proc/self/fd")) <= before
        assert not _process_writer._PIPE_ENDS

    async def test_a_start_that_fails_after_the_child_started_ends_the_child(
        self, storage: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        storage.mkdir()
        real_scandir = os.scandir
        listed = []

        def scandir(path: object = ".") -> object:
            # Listing the directory for stale temporary files, after prepare() listed it
            # and started the child: refused (a stale file that cannot be removed no
            # longer fails).
            if str(path) == str(storage):
                listed.append(path)
                if len(listed) > 1:
                    raise PermissionError(13, "Permission denied")  # injected at the os call
            return real_scandir(path)  # type: ignore[call-overload]

        monkeypatch.setattr(os, "scandir", scandir)
        manager = make(storage)
        with pytest.raises(PermissionError):
            await manager.start()
        assert manager._batch_writer.closed  # the child started by prepare() was ended
        assert not _process_writer._PIPE_ENDS

    async def test_an_idle_child_that_died_is_replaced_without_a_failed_write(
        self, storage: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        manager = make(storage, flush_interval_seconds=0.05)
        await manager.start()
        first = child_pid(manager)
        child = manager._batch_writer._process  # type: ignore[union-attr]
        assert child is not None
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: child.poll() is not None)  # dead before the next write
        await record(manager, range(5))
        await manager.flush(timeout=30)
        assert rids_on_disk(load_records(storage)) == list(range(5))
        assert manager.stats().write_errors == 0
        assert child_pid(manager) != first
        assert "the writer process exited (exit code -9); starting a new one" in caplog.text
        await manager.stop()

    def test_a_stuck_child_holds_up_neither_stop_nor_other_threads(self, storage: Path) -> None:
        manager = make(storage)
        manager.start_sync()
        pid = child_pid(manager)
        os.kill(pid, signal.SIGSTOP)  # a child stuck in the kernel (a hung mount)
        try:
            started = time.monotonic()
            manager.stop_sync(0.5)  # nothing was queued: it only has to end the child
            assert time.monotonic() - started < 5  # not the 10 s given to a child to exit
            started = time.monotonic()
            manager.stats()  # the writer thread, still ending the child, holds no lock
            assert time.monotonic() - started < 1
        finally:
            os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 15
        while running(pid):
            assert time.monotonic() < deadline
            time.sleep(0.02)

    async def test_a_stop_that_gives_up_with_a_batch_in_flight_doubles_nothing(
        self, tmp_path: Path
    ) -> None:
        for round_ in range(5):
            storage = tmp_path / str(round_)
            manager = make(storage, max_batch_size=50, max_queue_size=5000)
            await manager.start()
            await record(manager, range(3000))
            with contextlib.suppress(asyncio.TimeoutError):
                await manager.stop(timeout=0)
            await manager.start()
            await manager.stop(timeout=30)
            assert sorted(rids_on_disk(load_records(storage))) == list(range(3000))

    def test_without_a_stderr_the_child_writes_nothing_into_its_answers(
        self, storage: Path
    ) -> None:
        script = textwrap.dedent(
            f"""
            import os
            from otel_json_exporter import MetricsManager

            os.close(2)
            manager = MetricsManager({str(storage)!r}, writer="process")
            manager.start_sync()
            pid = manager._batch_writer._process.pid
            print(os.readlink(f"/proc/{{pid}}/fd/1"), os.readlink(f"/proc/{{pid}}/fd/2"))
            manager.stop_sync()
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
        )
        assert done.stdout.split() == ["/dev/null", "/dev/null"]

    def test_works_when_its_pipes_get_descriptors_above_1023(self, storage: Path) -> None:
        # A server with a raised `ulimit -n` and many sockets: select.select() failed here.
        script = textwrap.dedent(
            f"""
            import asyncio, os, resource
            from otel_json_exporter import MetricsManager

            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(4096, soft), max(4096, hard)))
            held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
            manager = MetricsManager({str(storage)!r}, writer="process", max_batch_size=10)
            manager.start_sync()
            pipe = manager._batch_writer._from_child

            async def record():
                for rid in range(100):
                    await manager.record_operation("job", "x", 1.0, metadata={{"rid": rid}})

            asyncio.run(record())
            manager.stop_sync(30)
            print(pipe, manager.stats().write_errors)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        pipe, write_errors = map(int, done.stdout.split())
        assert pipe > 1023  # the case in point
        assert write_errors == 0
        assert rids_on_disk(load_records(storage)) == list(range(100))


_FORKED_PROCESS_KEEPS_NO_PIPE = """
import os, sys
from otel_json_exporter import MetricsManager

manager = MetricsManager(sys.argv[1], writer="process")
manager.start_sync()
writer = manager._batch_writer
ends = {os.readlink(f"/proc/self/fd/{fd}") for fd in (writer._to_child, writer._from_child)}
pid = os.fork()
if pid == 0:
    held = {os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")}
    os.write(1, (" ".join(sorted(ends & held)) or "none").encode() + b"\\n")
    os._exit(0)
os.waitpid(pid, 0)
manager.stop_sync()
"""


def test_a_forked_process_keeps_none_of_the_writer_pipes(tmp_path: Path) -> None:
    # Else the writer process would not see its input close while that process lives.
    script = tmp_path / "fork.py"
    script.write_text(_FORKED_PROCESS_KEEPS_NO_PIPE)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "metrics")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["none"]
