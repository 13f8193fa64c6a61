"""Reliability across real processes: concurrent writers, and writers killed with SIGKILL.

The processes run ``tests/_writer_process.py``; every record carries a unique
``rid`` so the parent can check that each is on disk exactly once, and every
batch file is parsed and checked against its name (:func:`load_batches`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from otel_json_exporter import MetricsManager
from otel_json_exporter import writer as writer_module

from .conftest import load_batches

HELPER = Path(__file__).with_name("_writer_process.py")
CAP = 60.0
pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX only")


def spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPER), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=CAP)
    assert process.returncode == 0, err
    return out


def rids(storage: Path) -> list[int]:
    """Every record's rid, after checking every batch file (content and name)."""
    return [record.metadata["rid"] for batch in load_batches(storage) for record in batch.records]


def temp_files(storage: Path) -> set[str]:
    return {name for name in os.listdir(storage) if name.endswith(".tmp")}


class TestConcurrentProcesses:
    def test_four_processes_thousands_of_small_batches_every_record_once(
        self, storage: Path
    ) -> None:
        processes, per_process = 4, 1500
        start_at = time.time() + 2.0  # all processes are up by then: they write together
        writers = [
            spawn("manager", storage, index * per_process, per_process, 1 + index % 4, start_at)
            for index in range(processes)
        ]
        for writer in writers:
            assert finish(writer).strip() == "done"
        batches = load_batches(storage)  # every file parses and matches its name
        assert len(batches) >= 2000
        on_disk = [record.metadata["rid"] for batch in batches for record in batch.records]
        assert Counter(on_disk) == Counter(range(processes * per_process))
        assert all(1 <= batch.total_records <= 4 for batch in batches)
        assert temp_files(storage) == set()
        # They really wrote at the same time: some second holds batches of every process.
        writers_by_second: dict[str, set[int]] = {}
        for batch in batches:
            second = batch.batch_id[:15]
            owner = batch.records[0].metadata["rid"] // per_process
            writers_by_second.setdefault(second, set()).add(owner)
        assert max(len(owners) for owners in writers_by_second.values()) == processes

    def test_the_same_microsecond_in_four_processes_never_overwrites(self, storage: Path) -> None:
        # Every process writes every batch with the same timestamp: each name is fought
        # over, and a hard link never replaces a file, so each writer moves on.
        processes, per_process = 4, 150
        start_at = time.time() + 2.0
        writers = [
            spawn("clash", storage, index * per_process, per_process, start_at)
            for index in range(processes)
        ]
        clashes = 0
        for writer in writers:
            word, count = finish(writer).split()
            assert word == "clashes"
            clashes += int(count)
        assert clashes > 0
        batches = load_batches(storage)
        assert len(batches) == processes * per_process
        assert len({batch.batch_id for batch in batches}) == len(batches)
        assert Counter(rids(storage)) == Counter(range(processes * per_process))
        assert temp_files(storage) == set()


class TestProcessExit:
    def test_records_are_written_at_exit_without_stop(self, storage: Path) -> None:
        out = finish(spawn("exit", storage, 250))
        assert out.split() == ["leaving", "0"]  # nothing was on disk when it returned
        assert rids(storage) == list(range(250))
        assert temp_files(storage) == set()


_FORKED_CHILD = """
import asyncio, multiprocessing, os, sys
from otel_json_exporter import MetricsManager

manager = MetricsManager(sys.argv[1], flush_interval_seconds=3600, writer=sys.argv[2])
manager.start_sync()


def child(tag):
    if len(sys.argv) > 3:
        sys.executable = sys.argv[3]  # a program that notes each writer process started
    async def record():
        for index in range(5):
            await manager.record_operation("job", tag, float(index))
    asyncio.run(record())  # and return without stop(): multiprocessing then calls os._exit


if __name__ == "__main__":
    worker = multiprocessing.get_context("fork").Process(target=child, args=("mp-child",))
    worker.start()
    worker.join()
    pid = os.fork()
    if pid == 0:  # a plain fork child that exits the ordinary way (atexit runs)
        child("fork-child")
        sys.exit(0)
    os.waitpid(pid, 0)
    child("parent")  # the parent's writer still works after its children are gone
    manager.flush_sync()
    manager.stop_sync()
    sys.exit(worker.exitcode)
"""


class TestForkedChildrenThatForgetStop:
    @staticmethod
    def run(tmp_path: Path, *arguments: str) -> tuple[Counter[str], str]:
        """The forked-children script's records by operation name, and its stderr."""
        script = tmp_path / "forked.py"
        script.write_text(_FORKED_CHILD)
        storage = tmp_path / "metrics"
        done = subprocess.run(
            [sys.executable, str(script), str(storage), *arguments],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        names = Counter(
            record.operation_name for batch in load_batches(storage) for record in batch.records
        )
        return names, done.stderr

    @pytest.mark.parametrize("writer", ["thread", "process"])
    def test_records_of_forked_children_are_written(self, tmp_path: Path, writer: str) -> None:
        names, _ = self.run(tmp_path, writer)
        # multiprocessing ends its forked child with os._exit (no atexit): its exit
        # finalizer writes the records. A forked child starts its own writer (and, with
        # writer="process", its own writer process), leaving the parent's alone.
        assert names == {"mp-child": 5, "fork-child": 5, "parent": 5}

    def test_children_that_end_before_their_first_batch_start_no_writer_process(
        self, tmp_path: Path
    ) -> None:
        starts = tmp_path / "starts"
        noting = tmp_path / "noting-python"
        noting.write_text(f'#!/bin/sh\necho started >> {starts}\nexec {sys.executable} "$@"\n')
        noting.chmod(0o755)
        names, stderr = self.run(tmp_path, "process", str(noting))
        assert names == {"mp-child": 5, "fork-child": 5, "parent": 5}
        # Their exit flush wrote their records in their own process: a writer process
        # would take 0.13 s to start there, and far longer beside many such children.
        assert not starts.exists()
        assert "WARNING" not in stderr


class TestKilledWriters:
    def test_sigkill_at_random_moments_never_leaves_a_partial_batch(self, storage: Path) -> None:
        chance = random.Random(20251216)
        persisted: set[int] = set()
        leftovers: set[str] = set()
        for run in range(6):
            writer = spawn("loop", storage, run * 1_000_000)
            assert writer.stdout is not None
            # Let it write a while (every line is a flush that completed), then kill it.
            for line_number in range(chance.randint(1, 6)):
                line = writer.stdout.readline()
                assert line.startswith("persisted"), writer.communicate(timeout=CAP)[1]
                persisted.update(range(run * 1_000_000, int(line.split()[1]) + 1))
                if line_number == 0:  # it has started: the dead writer's files are gone
                    assert not leftovers & temp_files(storage)
            time.sleep(chance.uniform(0.0, 0.05))
            writer.send_signal(signal.SIGKILL)
            writer.communicate(timeout=CAP)
            assert writer.returncode == -signal.SIGKILL
            # Whatever the moment, every batch file is complete and valid, none doubled,
            # and every record whose flush() returned is there.
            on_disk = rids(storage)
            assert len(on_disk) == len(set(on_disk)), "a record was written twice"
            assert persisted <= set(on_disk)
            leftovers = temp_files(storage)
        manager = MetricsManager(storage)
        manager.start_sync()  # the next start cleans up after the dead writer
        manager.stop_sync()
        assert temp_files(storage) == set()

    @pytest.mark.parametrize("call", ["fsync", "link", "unlink"])
    def test_killed_inside_a_write(self, storage: Path, call: str) -> None:
        writer = spawn("die", storage, call)
        writer.communicate(timeout=CAP)
        assert writer.returncode == -signal.SIGKILL
        leftovers = temp_files(storage)
        assert len(leftovers) == 1
        assert leftovers.pop().startswith(f".metrics_{writer.pid}_")
        written = rids(storage)
        # Killed before the link: no batch at all; after it: the whole batch, once.
        assert written == ([0, 1, 2] if call == "unlink" else [])
        manager = MetricsManager(storage)
        manager.start_sync()
        manager.stop_sync()
        assert temp_files(storage) == set()
        assert rids(storage) == written


class TestTemporaryFileCleanUp:
    def test_only_dead_or_stale_writers_files_are_removed(self, storage: Path) -> None:
        storage.mkdir()
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        finished = subprocess.Popen([sys.executable, "-c", "pass"])
        finished.wait(timeout=CAP)
        try:
            space = f"n{writer_module._PROCESS_SPACE}"  # as this machine's writers name it
            live = storage / f".metrics_{sleeper.pid}_{space}_0123456789ab.tmp"
            stale = storage / f".metrics_{sleeper.pid}_{space}_ba9876543210.tmp"
            dead = storage / f".metrics_{finished.pid}_{space}_00aa11bb22cc.tmp"
            own = storage / f".metrics_{os.getpid()}_{space}_ffffffffffff.tmp"
            # A name of another space, or from before spaces were named: by age only.
            unjudged = [
                storage / f".metrics_{finished.pid}_n0123abc_00aa11bb22cc.tmp",
                storage / f".metrics_{finished.pid}_00aa11bb22cc.tmp",
            ]
            # The dead writer's pid again, in names that are not a writer's temporary file
            arabic_indic = str(finished.pid).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))
            lookalikes = (
                f".metrics_{finished.pid}_00aa11bb22cc.tmp\n",
                f".metrics_{arabic_indic}_00aa.tmp",
            )
            names = (".metrics_x_1.tmp", "notes.tmp", "metrics_a.tmp", *lookalikes)
            others = [storage / name for name in names]
            for path in [live, stale, dead, own, *others, *unjudged]:
                path.write_text("{")
            old = time.time() - 601
            os.utime(stale, (old, old))
            manager = MetricsManager(storage)
            manager.start_sync()
            manager.stop_sync()
            assert live.exists(), "a live writer's temporary file was removed"
            assert own.exists(), "this process's own temporary file was removed"
            assert not stale.exists()
            assert not dead.exists()
            assert all(path.exists() for path in others)
            assert all(path.exists() for path in unjudged)
        finally:
            sleeper.kill()
            sleeper.wait(timeout=CAP)
