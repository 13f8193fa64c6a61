"""Trial A: an asyncio service that is not FastAPI (an aiohttp server, a queue worker
with threads) uses MetricsManager and track_operation.

Two kinds of tests:

* ``DEFECT``: fails on the code as tried; asserts what the user expects, with the
  README line that promises it.
* ``PASSING (pinned)``: behaviour that held when tried, kept so that it keeps holding.

Faults are injected at the ``os`` call only (a stalled ``os.fsync`` in the writer
thread); everything else runs for real: real files under ``tmp_path``, real event
loops, subprocesses where a process must end. Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import pkgutil
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import otel_json_exporter
from otel_json_exporter import MetricsManager
from otel_json_exporter.tracking import track_operation

from ._faults import StalledDisk, full_queue_on_a_stalled_disk
from .conftest import load_records

CAP = 10.0  # hang guard for anything expected to end at once


# -- helpers -------------------------------------------------------------------------


def run_script(
    tmp_path: Path, source: str, *args: str, timeout: float = 60, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run(
        [sys.executable, *flags, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def rids(storage: Path) -> list[Any]:
    return [record.metadata["rid"] for record in load_records(storage)]


# =====================================================================================
# DEFECT 1. The package does not import on Python 3.10, which it declares it supports.
# =====================================================================================


def _nodes(parsed: Any) -> Iterator[str]:
    """The names of every operation in a parsed pattern, at any depth."""
    for op, argument in parsed:
        yield str(op)
        stack = [argument]
        while stack:
            item = stack.pop()
            if isinstance(item, (list, tuple)):
                stack.extend(item)
            elif hasattr(item, "data"):  # a nested SubPattern
                yield from _nodes(item)


def test_defect_every_pattern_the_package_compiles_at_import_compiles_on_python_310() -> None:
    """DEFECT. pyproject.toml: ``requires-python = ">=3.10"``; README: "On a fresh clone,
    with only Python >= 3.10 and make". pii.py's patterns used possessive quantifiers
    (``*+``, ``++``), new in Python 3.11's ``re``: on 3.10, ``from otel_json_exporter
    import MetricsManager`` raised ``re.error: multiple repeat at position 72``
    (pii._CUT_END). Every module-level pattern is parsed here, and none may hold a
    possessive repeat or an atomic group, which 3.10's ``re`` refuses. (ruff, with
    target-version py310, holds the syntax; mypy, with python_version 3.10, the API.)"""
    parser: Any = importlib.import_module(
        "re._parser" if sys.version_info >= (3, 11) else "sre_parse"
    )
    found = {}
    for module in pkgutil.iter_modules(otel_json_exporter.__path__):
        loaded = importlib.import_module(f"otel_json_exporter.{module.name}")
        for name, value in vars(loaded).items():
            if isinstance(value, re.Pattern) and isinstance(value.pattern, str):
                ops = set(_nodes(parser.parse(value.pattern, value.flags)))
                found[f"{module.name}.{name}"] = ops & {"POSSESSIVE_REPEAT", "ATOMIC_GROUP"}
    assert "pii._CUT_END" in found
    assert {name: ops for name, ops in found.items() if ops} == {}


# =====================================================================================
# DEFECT 2. A tracked plain function that returns an awaitable gets back a different
# object: a coroutine. A Task, aiohttp's session.get() context manager... are lost.
# =====================================================================================


class _RequestContextManager:
    """What aiohttp's ``session.get(url)`` returns (``aiohttp.client._RequestContextManager``):
    awaitable *and* an async context manager; ``async with session.get(url) as r`` is
    the documented way to use it."""

    def __init__(self) -> None:
        self.closed = False

    def __await__(self) -> Any:
        return self._response().__await__()

    async def _response(self) -> str:
        await asyncio.sleep(0)
        return "response"

    async def __aenter__(self) -> str:
        return await self._response()

    async def __aexit__(self, *exc: object) -> None:
        self.closed = True


async def test_defect_a_tracked_function_returning_an_async_context_manager_keeps_it(
    tmp_path: Path,
) -> None:
    """DEFECT. README: "a plain function (a functools.partial) that returns an awaitable
    is timed until that is awaited to its end". The wrapper returns its own coroutine
    (``track_operation._until_done``) instead of the object: ``async with get(url)``
    raises ``TypeError: 'coroutine' object does not support the asynchronous context
    manager protocol``, and Python warns that both coroutines were never awaited."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    try:

        @track_operation(manager, "http_client", "GET /users")
        def get(url: str) -> _RequestContextManager:
            return _RequestContextManager()

        returned = get("http://example.invalid/users")
        if asyncio.iscoroutine(returned) and not isinstance(returned, _RequestContextManager):
            returned.close()  # keep the "never awaited" warning out of the report
            pytest.fail(
                f"the tracked function returned {type(returned).__name__}, "
                "not the _RequestContextManager the function returned"
            )
        async with returned as response:
            assert response == "response"
    finally:
        await manager.stop()


async def test_defect_a_tracked_function_returning_a_task_returns_that_task(
    tmp_path: Path,
) -> None:
    """DEFECT. Same cause: ``def spawn(): return asyncio.create_task(work())`` tracked
    returns a coroutine, not the Task; ``spawn().add_done_callback(...)`` or
    ``spawn().cancel()`` raise AttributeError, and a fire-and-forget call (the Task is
    kept alive elsewhere) records nothing and leaves a never-awaited coroutine."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    spawned: list[asyncio.Task[str]] = []
    try:

        @track_operation(manager, "job", "spawn")
        def spawn() -> asyncio.Task[str]:
            task = asyncio.ensure_future(asyncio.sleep(0, "done"))
            spawned.append(task)
            return task

        returned = spawn()
        a_future = isinstance(returned, asyncio.Future)
        if not a_future and asyncio.iscoroutine(returned):
            returned.close()
        assert await spawned[0] == "done"
        assert a_future, f"spawn() returned a {type(returned).__name__}, not its Task"
    finally:
        await manager.stop()


async def test_defect_aiohttp_session_get_through_a_tracked_function(tmp_path: Path) -> None:
    """DEFECT (real aiohttp, in the test extra). A client helper
    ``def get(url): return session.get(url)`` under ``@track_operation`` and the
    documented ``async with get(url) as resp``: TypeError, the request is never sent."""
    from aiohttp import ClientSession, web

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    try:
        async with ClientSession() as session:

            @track_operation(manager, "http_client", "GET /")
            def get(url: str) -> Any:
                return session.get(url)

            returned = get(f"http://127.0.0.1:{port}/")
            # A coroutine object of the wrapper's: session.get()'s own object is a
            # Coroutine to asyncio.iscoroutine, not a coroutine object to inspect.
            if inspect.iscoroutine(returned):
                returned.close()
                pytest.fail("the tracked helper returned a coroutine, not session.get()'s object")
            async with returned as response:
                assert await response.text() == "hi"
    finally:
        await manager.stop()
        await runner.cleanup()


# =====================================================================================
# DEFECT 3. A tracked block that is cancelled waits for room in a full queue before
# the cancellation may end it: asyncio.timeout no longer bounds the block.
# =====================================================================================


async def test_defect_a_timeout_around_a_tracked_block_is_not_held_up_by_a_full_queue(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """DEFECT. ``async with asyncio.timeout(0.2): async with track_operation(...):``
    with the queue full (default "block" policy) and the disk stalled: the timeout
    cancels the block, then ``__aexit__`` awaits ``record_operation`` for room, with the
    one cancel already spent, so the scope ends only when the disk moves again (3.01 s
    for a 3 s stall when tried by hand; never, for a disk that stays stuck). The same
    holds a TaskGroup whose sibling failed, or asyncio.run's shutdown of such a task.
    A cancelled task must end promptly; the record of a cancelled block may be dropped
    and counted (as "drop" does), not wait."""
    manager = await full_queue_on_a_stalled_disk(tmp_path / "m", stalled_disk)

    async def tracked() -> None:
        async with track_operation(manager, "api_request", "GET /slow"):
            await asyncio.sleep(30)

    async def handler() -> str:
        try:
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(0.2):  # type: ignore[attr-defined,unused-ignore]
                    await tracked()
            else:  # asyncio.wait_for cancels the block the same way
                await asyncio.wait_for(tracked(), 0.2)
        except (TimeoutError, asyncio.TimeoutError):
            return "timed out"
        return "finished"

    task = asyncio.ensure_future(handler())
    try:
        done, _ = await asyncio.wait({task}, timeout=CAP)
        assert done, (
            "asyncio.timeout(0.2) around a tracked block did not end it while the queue "
            f"stayed full ({CAP}s hang guard)"
        )
        assert task.result() == "timed out"
    finally:
        stalled_disk.release()
        if not task.done():
            await asyncio.wait_for(task, CAP)
        await asyncio.wait_for(manager.stop(), CAP)


def test_defect_ctrl_c_in_a_tracked_sync_block_is_not_held_up_by_a_full_queue(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """DEFECT (sync twin of the above). A worker thread's ``with track_operation(...)``
    block raises KeyboardInterrupt (what Ctrl-C raises in the main thread) while the
    queue is full: ``__exit__`` waits in ``submit_records(timeout=inf)`` for room before
    the KeyboardInterrupt may leave, for as long as the disk is stuck."""
    manager = MetricsManager(
        tmp_path / "m", flush_interval_seconds=60, max_queue_size=1, max_batch_size=1
    )
    manager.start_sync()
    try:
        assert manager.submit_records(_one_record()) == 1
        assert stalled_disk.entered.wait(CAP)
        outcome: dict[str, str] = {}

        def worker() -> None:
            try:
                with track_operation(manager, "task", "resize_image"):
                    raise KeyboardInterrupt
            except KeyboardInterrupt:
                outcome["raised"] = "KeyboardInterrupt"

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join(CAP)
        ended = not thread.is_alive()
        stalled_disk.release()
        thread.join(CAP)
        assert ended, "the KeyboardInterrupt waited for room in the queue"
        assert outcome == {"raised": "KeyboardInterrupt"}
    finally:
        stalled_disk.release()
        manager.stop_sync(CAP)


def _one_record() -> list[Any]:
    from datetime import datetime, timezone

    from otel_json_exporter import OperationRecord

    return [
        OperationRecord(
            operation_type="fill",
            operation_name="fill",
            duration_ms=1.0,
            timestamp=datetime.now(timezone.utc),
            metadata={"rid": -1},
        )
    ]


# =====================================================================================
# DEFECT 4. A cancel that reached track_operation while it recorded a failure replaced
# the block's own exception: the root cause left the TaskGroup's ExceptionGroup. Now a
# failed block's exception goes on at once, and its record waits for room on its own.
# =====================================================================================


async def test_defect_a_cancel_while_recording_a_failure_keeps_the_blocks_exception(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """DEFECT. README: "If recording itself fails, that error is ... only logged after a
    failing one, so it never hides your exception." A task's tracked block raised
    ValueError("root cause") while the queue was full; its ``__aexit__`` waited for room;
    a sibling failed and the TaskGroup cancelled the task there: the CancelledError from
    the recording replaced the ValueError, and the group held only the sibling's
    KeyError. Now the ValueError leaves the block at once, whatever the queue, and the
    group holds it; its record is written once there is room."""
    manager = await full_queue_on_a_stalled_disk(tmp_path / "m", stalled_disk)

    async def failing() -> None:
        async with track_operation(manager, "database_query", "SELECT orders"):
            raise ValueError("root cause")

    async def sibling() -> None:
        await asyncio.sleep(0.3)  # failing() used to wait in its __aexit__ meanwhile
        raise KeyError("other")

    async def both() -> None:
        async with asyncio.timeout(CAP):  # type: ignore[attr-defined,unused-ignore]
            async with asyncio.TaskGroup() as group:  # type: ignore[attr-defined,unused-ignore]
                group.create_task(failing())
                group.create_task(sibling())

    async def recorded() -> None:
        while manager.stats().total_recorded < 2:  # the fill, and the failure
            await asyncio.sleep(0.01)

    try:
        if sys.version_info >= (3, 11):
            with pytest.raises(Exception) as caught:  # an ExceptionGroup  # noqa: PT011
                await both()
            held = [type(exc).__name__ for exc in getattr(caught.value, "exceptions", ())]
            assert "ValueError" in held, f"the ExceptionGroup holds {held}"
        else:  # no TaskGroup: the sibling's failure cancels the task as the group would
            task = asyncio.ensure_future(failing())
            with pytest.raises(KeyError):
                await sibling()
            task.cancel()
            with pytest.raises(ValueError, match="root cause"):
                await asyncio.wait_for(task, CAP)
        stalled_disk.release()
        await asyncio.wait_for(recorded(), CAP)
    finally:
        stalled_disk.release()
        await asyncio.wait_for(manager.stop(), CAP)
    failure = [r for r in load_records(tmp_path / "m") if r.operation_type == "database_query"]
    assert [(r.success, r.error_message) for r in failure] == [(False, "ValueError: root cause")]


# =====================================================================================
# DEFECT 5. Sync track_operation waiting for room when the manager stops: the record
# is dropped silently (the block "succeeds"); record_operation raises RuntimeError.
# =====================================================================================


def test_defect_sync_track_operation_waiting_for_room_is_told_when_the_manager_stops(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """DEFECT. README, track_operation in sync code: "a full queue is handled by the
    manager's queue_full_policy as record_operation handles it ("block" waits for
    room...)"; Lifecycle table: "stop() while producers wait for room | they get
    RuntimeError". A worker thread's tracked block ends while the queue is full, then
    stop() comes: ``record_operation`` in the same place raises RuntimeError("MetricsManager
    is not running"); the tracked block returns normally and its record is only counted
    in ``total_dropped``. With 8 worker threads stopping mid-run, 8 blocks that
    "succeeded" were never written and nothing told their code."""
    manager = MetricsManager(
        tmp_path / "m", flush_interval_seconds=60, max_queue_size=1, max_batch_size=1
    )
    manager.start_sync()
    outcome: dict[str, str] = {}
    try:
        assert manager.submit_records(_one_record()) == 1
        assert stalled_disk.entered.wait(CAP)

        def worker() -> None:
            try:
                with track_operation(manager, "task", "send_invoice"):
                    pass
                outcome["result"] = "returned normally"
            except RuntimeError as exc:
                outcome["result"] = f"RuntimeError: {exc}"

        thread = threading.Thread(target=worker)
        thread.start()
        wait_until_waiting(thread)  # in submit_records, waiting for room (policy "block")
        stopper = threading.Thread(target=_stop_quietly, args=(manager,))
        stopper.start()
        thread.join(CAP)
        assert not thread.is_alive()
        stalled_disk.release()
        stopper.join(CAP)
        dropped = manager.stats().total_dropped
        assert outcome["result"].startswith("RuntimeError"), (
            f"the tracked block {outcome['result']}; its record was not written "
            f"(total_dropped={dropped})"
        )
    finally:
        stalled_disk.release()
        manager.stop_sync(CAP)


def wait_until_waiting(thread: threading.Thread) -> None:
    """Until ``thread`` waits on a threading.Condition (hang guard: CAP)."""
    deadline = threading.Event()
    timer = threading.Timer(CAP, deadline.set)
    timer.start()
    try:
        while not deadline.is_set():
            frame = sys._current_frames().get(thread.ident or -1)
            while frame is not None:
                if (
                    frame.f_code.co_name == "wait"
                    and frame.f_code.co_filename == threading.__file__
                ):
                    return
                frame = frame.f_back
            deadline.wait(0.01)
        pytest.fail("the thread never waited for room")
    finally:
        timer.cancel()


def _stop_quietly(manager: MetricsManager) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        manager.stop_sync(CAP)


# =====================================================================================
# PASSING (pinned): what held when tried.
# =====================================================================================


def test_passing_one_manager_across_two_asyncio_runs_with_a_producer_blocked(
    tmp_path: Path,
) -> None:
    """PASSING (pinned). asyncio.run() twice with one manager: started and filled in
    the first run; the second run's producers wait for room, are woken on the new
    loop, flush and stop. Nothing lost."""
    storage = tmp_path / "m"
    manager = MetricsManager(
        storage, flush_interval_seconds=60, max_batch_size=10, max_queue_size=3
    )

    async def first() -> None:
        await manager.start()
        for rid in range(3):
            await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})

    async def second() -> None:
        for rid in range(3, 20):
            await asyncio.wait_for(
                manager.record_operation("job", "step", 1.0, metadata={"rid": rid}), CAP
            )
        await asyncio.wait_for(manager.flush(), CAP)
        await asyncio.wait_for(manager.stop(), CAP)

    asyncio.run(first())
    asyncio.run(second())
    assert rids(storage) == list(range(20))


async def test_passing_a_cancelled_blocked_record_operation_leaves_nothing_behind(
    tmp_path: Path, stalled_disk: StalledDisk
) -> None:
    """PASSING (pinned). A producer blocked on a full queue: cancel() and
    asyncio.timeout() both end it with the cancellation (not swallowed; timeout's
    uncancel brings ``cancelling()`` back to 0), the record is not queued, the lock is
    free, and recording goes on once the disk moves."""
    storage = tmp_path / "m"
    manager = await full_queue_on_a_stalled_disk(storage, stalled_disk)
    blocked = asyncio.ensure_future(
        manager.record_operation("job", "step", 1.0, metadata={"rid": "cancelled"})
    )
    await asyncio.sleep(0.1)
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    if sys.version_info >= (3, 11):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await manager.record_operation("job", "step", 1.0, metadata={"rid": "timed out"})
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(manager.flush(), 0.1)
    stalled_disk.release()
    await asyncio.wait_for(manager.record_operation("job", "step", 1.0, metadata={"rid": 0}), CAP)
    await asyncio.wait_for(manager.stop(), CAP)
    assert rids(storage) == [-1, 0]
    assert manager.stats().total_dropped == 0


async def test_passing_a_tracked_block_cancelled_by_a_timeout_is_a_failure_and_reraised(
    tmp_path: Path,
) -> None:
    """PASSING (pinned; README: "cancellation too, as CancelledError"). With room in the
    queue: a block cancelled by an outer asyncio.timeout is recorded success=False,
    "CancelledError", the timeout still becomes TimeoutError and ``cancelling()`` is 0
    again; a timeout inside the block is "TimeoutError"; KeyboardInterrupt is recorded
    and propagates."""
    storage = tmp_path / "m"
    manager = MetricsManager(storage, flush_interval_seconds=60)
    await manager.start()

    async def outer() -> None:
        async with track_operation(manager, "t", "outer"):
            await asyncio.sleep(CAP)

    if sys.version_info >= (3, 11):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):  # type: ignore[attr-defined,unused-ignore]
                await outer()
        current = asyncio.current_task()
        assert current is not None
        assert current.cancelling() == 0  # type: ignore[attr-defined,unused-ignore]
        with pytest.raises(TimeoutError):  # noqa: PT012
            async with track_operation(manager, "t", "inner"):
                async with asyncio.timeout(0.05):  # type: ignore[attr-defined,unused-ignore]
                    await asyncio.sleep(CAP)
    else:  # asyncio.wait_for, which cancels as asyncio.timeout does
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(outer(), 0.05)
        with pytest.raises(asyncio.TimeoutError):
            async with track_operation(manager, "t", "inner"):
                await asyncio.wait_for(asyncio.sleep(CAP), 0.05)
    with pytest.raises(KeyboardInterrupt):
        async with track_operation(manager, "t", "ctrl_c"):
            raise KeyboardInterrupt
    await manager.stop()
    seen = [(r.operation_name, r.success, r.error_message) for r in load_records(storage)]
    assert seen == [
        ("outer", False, "CancelledError"),
        ("inner", False, "TimeoutError"),
        ("ctrl_c", False, "KeyboardInterrupt"),
    ]


def test_passing_uvloop_producers_on_three_loops_share_a_full_queue(tmp_path: Path) -> None:
    """PASSING (pinned). Producers on three uvloop loops (two
    threads and the main one) wait for room in a queue of three and are all woken."""
    import uvloop

    storage = tmp_path / "m"
    manager = MetricsManager(storage, flush_interval_seconds=60, max_queue_size=3, max_batch_size=2)

    async def produce(first: int) -> None:
        for rid in range(first, first + 100):
            await manager.record_operation("j", "s", 1.0, metadata={"rid": rid})

    async def main() -> None:
        await manager.start()
        threads = [threading.Thread(target=uvloop.run, args=(produce(k * 100),)) for k in (1, 2)]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(produce(0), CAP * 3)
        for thread in threads:
            thread.join(CAP * 3)
            assert not thread.is_alive()
        await asyncio.wait_for(manager.stop(), CAP)

    uvloop.run(main())
    assert sorted(rids(storage)) == list(range(300))


async def test_passing_to_thread_producers_and_a_stop_account_for_every_record(
    tmp_path: Path,
) -> None:
    """PASSING (pinned). Eight asyncio.to_thread workers submit while stop() comes: they
    get RuntimeError after it, and what is on disk is exactly total_recorded."""
    storage = tmp_path / "m"
    manager = MetricsManager(
        storage, flush_interval_seconds=0.05, max_queue_size=50, max_batch_size=20
    )
    await manager.start()
    accepted = [0] * 8
    refused = [0] * 8

    def worker(k: int) -> None:
        for _ in range(300):
            try:
                accepted[k] += manager.submit_records(_one_record(), timeout=CAP)
            except RuntimeError:
                refused[k] += 1

    workers = asyncio.gather(*(asyncio.to_thread(worker, k) for k in range(8)))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(manager.stop(), CAP)
    await asyncio.wait_for(workers, CAP * 3)
    stats = manager.stats()
    assert len(load_records(storage)) == stats.total_recorded == stats.total_persisted
    assert sum(accepted) == stats.total_recorded
    assert sum(accepted) + stats.total_dropped + sum(refused) == 8 * 300


_SIGTERM_WORKER = """
import asyncio, signal, sys
from otel_json_exporter import MetricsManager

async def main():
    manager = MetricsManager(sys.argv[1], flush_interval_seconds=60)
    await manager.start()
    for rid in range(5):
        await manager.record_operation("job", "step", 1.0, metadata={"rid": rid})
    print("ready", flush=True)
    await asyncio.sleep(60)

if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_passing_sigterm_to_an_idle_asyncio_worker_writes_what_it_accepted(
    tmp_path: Path, loop: str
) -> None:
    """PASSING (pinned). A queue worker with no signal handling of its own, idle in
    its event loop (asyncio, or uvloop whose libuv retries EINTR): the handler start()
    installed writes the 5 records, then the process ends by SIGTERM."""
    script = tmp_path / "worker.py"
    script.write_text(_SIGTERM_WORKER)
    storage = tmp_path / "m"
    child = subprocess.Popen(
        [sys.executable, str(script), str(storage), loop], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert rids(storage) == list(range(5))


_AIOHTTP_APP = """
import sys
from aiohttp import web
from otel_json_exporter import MetricsManager, track_operation

async def metrics(app):
    manager = MetricsManager(sys.argv[1], flush_interval_seconds=60)
    await manager.start()
    app["metrics"] = manager
    yield
    await manager.stop()

async def hello(request):
    async with track_operation(request.app["metrics"], "api_request", "GET /"):
        return web.Response(text="hi")

app = web.Application()
app.cleanup_ctx.append(metrics)
app.router.add_get("/", hello)
ready = lambda *args: print("ready", flush=True)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=ready)
"""


def test_passing_aiohttp_run_app_graceful_sigterm_writes_every_request(tmp_path: Path) -> None:
    """PASSING (pinned). web.run_app installs its SIGTERM handler
    (loop.add_signal_handler) before the app's cleanup_ctx starts the manager, so the
    library installs none; SIGTERM: aiohttp's graceful exit stops the manager, exit 0,
    every request on disk."""
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "app.py"
    script.write_text(_AIOHTTP_APP)
    storage = tmp_path / "m"
    child = subprocess.Popen(
        [sys.executable, str(script), str(storage), str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        for _ in range(10):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=CAP) as response:
                assert response.read() == b"hi"
        child.send_signal(signal.SIGTERM)
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert len(load_records(storage)) == 10


_DEBUG_SESSION = """
import asyncio, sys
from otel_json_exporter import MetricsManager, track_operation

async def main():
    manager = MetricsManager(
        sys.argv[1], flush_interval_seconds=0.2, max_queue_size=5, max_batch_size=2
    )
    await manager.start()

    async def produce(k):
        for i in range(30):
            async with track_operation(manager, "job", f"p{k}", metadata={"i": i}):
                await asyncio.sleep(0)

    await asyncio.gather(*(produce(k) for k in range(4)))
    try:
        await asyncio.wait_for(manager.flush(), 0.00001)
    except asyncio.TimeoutError:
        pass
    flushing = asyncio.ensure_future(manager.flush())
    await asyncio.sleep(0)
    flushing.cancel()
    try:
        await flushing
    except asyncio.CancelledError:
        pass
    await manager.flush(timeout=5)
    if sys.argv[2] == "stop":
        await manager.stop()

asyncio.run(main(), debug=True)
"""


@pytest.mark.parametrize("ending", ["stop", "forget"])
def test_passing_a_session_in_debug_mode_with_warnings_as_errors_is_silent(
    tmp_path: Path, ending: str
) -> None:
    """PASSING (pinned). ``-X dev -W error``, PYTHONASYNCIODEBUG=1, loop debug on:
    producers, a flush timed out, a flush cancelled, stop() or no stop() (the exit
    hook): no warning, no slow callback, no unclosed resource, all 120 records written.
    (With writer="process", start() is reported as a slow callback, 0.2 s: documented.)"""
    script = tmp_path / "session.py"
    script.write_text(_DEBUG_SESSION)
    storage = tmp_path / "m"
    done = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script), str(storage), ending],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONASYNCIODEBUG": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(load_records(storage)) == 120
