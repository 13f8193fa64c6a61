"""Disk faults injected at the OS-call boundary, for the reliability tests.

A :class:`Fault` replaces one ``os`` function (``os.open``, ``os.write``,
``os.fsync``, ``os.link``...) with a wrapper that raises ``OSError(errno)`` for
the calls it matches while it is armed, and passes every other call to the real
function. It counts the calls it matched, so a test can say exactly how many
writes failed. Everything above the ``os`` call (the writer, the manager) runs
for real.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otel_json_exporter import MetricsManager

WRITER_THREAD = "otel-json-exporter-writer"


def on_temp_file(args: tuple[Any, ...]) -> bool:
    """The call's first argument is a writer's temporary file (``.metrics_<pid>_<hex>.tmp``)."""
    return Path(os.fspath(args[0])).name.startswith(".metrics_")


def on_regular_fd(args: tuple[Any, ...]) -> bool:
    """The call's first argument is a descriptor of a regular file (not the directory)."""
    return stat.S_ISREG(os.fstat(args[0]).st_mode)


def on_directory_fd(args: tuple[Any, ...]) -> bool:
    """The call's first argument is a descriptor of a directory."""
    return stat.S_ISDIR(os.fstat(args[0]).st_mode)


class Fault:
    """Make ``os.<name>`` fail with ``error`` for matching calls while armed.

    ``failures`` limits how many calls fail (None: every matching call while
    armed). ``match`` picks calls by their arguments; ``writer_thread_only``
    restricts the fault to the manager's writer thread, so the test's own file
    access is never affected. ``delay`` makes every matching call slow instead
    of (or before) failing: a slow disk.
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        name: str,
        error: int | None,
        *,
        failures: int | None = None,
        match: Callable[[tuple[Any, ...]], bool] | None = None,
        writer_thread_only: bool = True,
        delay: float = 0.0,
    ) -> None:
        self.name = name
        self.error = error
        self.failures_left = failures
        self.match = match
        self.writer_thread_only = writer_thread_only
        self.delay = delay
        self.armed = True
        self.calls = 0
        self.failed = 0
        self.call_times: list[float] = []
        self._lock = threading.Lock()
        self._real: Callable[..., Any] = getattr(os, name)
        monkeypatch.setattr(os, name, self._call)

    def heal(self) -> None:
        """The disk recovers: every later call goes through."""
        self.armed = False

    def _matches(self, args: tuple[Any, ...]) -> bool:
        if self.writer_thread_only and threading.current_thread().name != WRITER_THREAD:
            return False
        return self.match is None or self.match(args)

    def _call(self, *args: Any, **kwargs: Any) -> Any:
        if not self._matches(args):
            return self._real(*args, **kwargs)
        with self._lock:
            self.calls += 1
            self.call_times.append(time.monotonic())
            fail = (
                self.error is not None
                and self.armed
                and (self.failures_left is None or self.failures_left > 0)
            )
            if fail:
                self.failed += 1
                if self.failures_left is not None:
                    self.failures_left -= 1
        if self.delay:
            time.sleep(self.delay)
        if fail:
            assert self.error is not None
            raise OSError(self.error, os.strerror(self.error))
        return self._real(*args, **kwargs)


class StalledDisk:
    """``os.fsync`` in the manager's writer thread blocks until ``release()``: a disk
    that does not move for a while. Other threads' fsyncs are untouched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._go = threading.Event()
        self._real = os.fsync
        self.entered = threading.Event()
        monkeypatch.setattr(os, "fsync", self._fsync)

    def _fsync(self, fd: int) -> None:
        if threading.current_thread().name == WRITER_THREAD:
            self.entered.set()
            self._go.wait(60)  # backstop: never hang the suite
        self._real(fd)

    def release(self) -> None:
        self._go.set()


async def full_queue_on_a_stalled_disk(
    storage: Path, disk: StalledDisk, **options: Any
) -> MetricsManager:
    """A running manager (queue of one, "block" unless ``options`` say otherwise) whose
    queue is full and whose writer is stuck in fsync: the next record finds no room
    until the disk moves."""
    manager = MetricsManager(
        storage, flush_interval_seconds=60, max_queue_size=1, max_batch_size=1, **options
    )
    await manager.start()
    await manager.record_operation("fill", "fill", 1.0, metadata={"rid": -1})
    assert await asyncio.to_thread(disk.entered.wait, 10.0), "the writer never began its write"
    return manager


IS_ROOT = os.geteuid() == 0
# Root keeps its uid (so the interpreter under /root stays reachable: a pyenv Python's
# libpython is not, to another user) but loses what lets it ignore file permissions: it
# is then refused as any other user would be.
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]


def as_ordinary_user(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``command`` so that file permissions apply (root without its overrides)."""
    prefix = NO_OVERRIDE if IS_ROOT else []
    return subprocess.run(
        prefix + command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
