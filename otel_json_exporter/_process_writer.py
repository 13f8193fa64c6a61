"""A batch writer in a child process: encoding and disk work leave the application's GIL.

``MetricsManager(writer="process")`` hands its batches to
:class:`ProcessBatchWriter` instead of :class:`~otel_json_exporter.writer.BatchWriter`.
The child process runs that same ``BatchWriter``, so the files, their
atomicity and their fsyncs are exactly the same; what moves is the CPU time.
Under the GIL the writer thread's encoding and its system calls take turns
with the threads that produce records; in a child they run on another core.

The parent sends each batch over a pipe and the child answers once the batch
is on disk. A batch of rows goes as ``marshal``, anything else as a pickle
that the child reads back as plain values only (see :func:`_encode`). A batch may
hold spans not yet mapped (:data:`~otel_json_exporter._span_rows.SpanSnapshot`,
from the span exporter): the child maps them, with the manager's PII policy,
before it encodes, and says how many it masked and how many could not become
records.

To keep the child busy while the parent hands over the next batch, a second
batch may be in flight: :meth:`ProcessBatchWriter.write_rows` sends the batch
asked for, then the next one that is ready (the manager's ``following``
callback says which), and returns when the first is on disk. When the manager then asks for
a batch that starts with the rows already in flight, it gets that batch's
answer without sending anything.

What keeps this safe:

* A record leaves the manager's queue only when the child has said its batch
  is on disk, as with the thread writer.
* After a failed batch the child answers ``skipped`` to the batch behind it
  without writing it, until the parent says ``resume``: the failed batch is
  retried first, and the files keep the records' order.
* If the child dies, the batches in flight count as failed and are written
  again by a new child. A batch the dead child had already written is then
  written twice: records are never lost, but may, in that case only, be doubled.
* A batch no child can take (none could be started; or the manager stops, or
  the interpreter exits, with none running) is written in this process, by the
  same ``BatchWriter`` after the same mapping (:func:`rows_of`).
* The child ignores SIGINT and SIGTERM (a Ctrl-C or a service manager reaches
  the whole process group, while the application may still be flushing) and
  exits when its input closes: when the manager stops, or the parent dies.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import marshal
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from otel_json_exporter._span_rows import SNAPSHOT_FIELDS, SpanSnapshot, is_snapshot, rows_of
from otel_json_exporter.pii import PiiPolicy
from otel_json_exporter.records import QueuedRow, RecordRow
from otel_json_exporter.writer import BatchWriter, WrittenBatch, encode_rows, write_all

__all__ = ["ProcessBatchWriter", "WriterProcessError"]

logger = logging.getLogger("otel_json_exporter")

_HEADER = struct.Struct("<QB")  # the payload's length, and its codec
_PICKLED = 0
_MARSHALLED = 1
# Version 2 writes no references: versions 3 and later look every shared object up in
# a table (a batch's texts are shared with the application), which doubles the cost.
_MARSHAL_VERSION = 2
_PIPE_BYTES = 1 << 20  # a batch of 1,000 records is about 200 KB on the pipe: no partial writes
_LARGEST_MESSAGE = 1 << 32  # a length beyond this is not one of ours: the pipe is corrupt
_CLOSE_TIMEOUT = 10.0
_START_TIMEOUT = 10.0  # Python's start-up and the imports take about 0.1 s


# Every pipe end this module holds. A process forked from the application (gunicorn's
# workers, multiprocessing) must not keep them: the child would never see its input
# close. They are closed in the forked process, with no lock taken around fork(),
# which a fork from a signal handler could wait on forever.
_PIPE_ENDS: set[int] = set()


def _close_inherited_pipe_ends() -> None:
    for fd in list(_PIPE_ENDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _PIPE_ENDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_pipe_ends)


def _pipe() -> tuple[int, int]:
    read, write = os.pipe()  # not inheritable (close-on-exec), as every fd Python makes
    _PIPE_ENDS.update((read, write))
    return read, write


def _close_pipe_end(fd: int) -> None:
    _PIPE_ENDS.discard(fd)  # first: a fork in between keeps it, rather than closing a reused fd
    with contextlib.suppress(OSError):
        os.close(fd)


_PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)

QueuedItem = QueuedRow | SpanSnapshot
"""What the manager's queue holds: a validated row, or a span the child maps."""

Following = Callable[[int], "list[QueuedItem] | None"]
"""Given how many items at the head of the queue are taken, the next batch that is ready, if any."""


class WriterProcessError(OSError):
    """The writer process could not be started, or died: its batches in flight failed."""


class _PlainPickler(pickle.Pickler):
    """Pickles builtins as they are, and what a span may hold besides as builtins too.

    A span's attributes may hold a subclass of ``str``, ``int``, ``float`` or
    ``bytes`` (an enum member...), which the child, importing nothing of the
    application's, could not unpickle: it goes as the plain value it holds, as
    the mapping would read it; another mapping as a dict, another sequence as a
    list. Any other object goes as its ``str()``, which is what the mapping
    makes of it. Builtins that pickle carries itself (``set``, ``bytearray``...)
    never reach this method, nor do exact ``str``, ``int``, ``dict``... (C
    pickles them first), so rows cost nothing more.

    Reading an object may run the application's code (``__str__``, ``__bytes__``,
    ``items()``); whatever that raises becomes a PicklingError naming the type
    only, since its message could hold a value, and the manager logs errors.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, type):
            return NotImplemented  # the builtin types returned below, pickled by name
        try:
            return self._plain(obj)
        except Exception:
            raise pickle.PicklingError(f"cannot read a {type(obj).__name__}") from None

    @staticmethod
    def _plain(obj: Any) -> tuple[type, tuple[Any]]:
        if isinstance(obj, str):
            return str, (str.__str__(obj),)
        if isinstance(obj, int):  # bool cannot be subclassed: never seen here
            return int, (int.__int__(obj),)
        if isinstance(obj, float):
            return float, (float.__float__(obj),)
        if isinstance(obj, bytes):
            return bytes, (bytes(obj),)
        if isinstance(obj, Mapping):
            return dict, (list(obj.items()),)
        if isinstance(obj, (tuple, list)):
            return list, (list(obj),)
        return str, (str(obj),)


def _pickle(message: Any) -> bytes:
    buffer = io.BytesIO()
    _PlainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(message)
    return buffer.getvalue()


def _encode(message: Any) -> tuple[int, bytes]:
    """The codec and payload of a message: ``marshal`` for a batch of rows alone, else a pickle.

    A queued row holds exact builtins only, made so by validation: ``str``,
    ``str``, ``float``, ``int``, ``bool``, ``str`` or None, and its metadata as
    ``bytes`` (or, from a caller of ``write_rows``, a dict of JSON values).
    ``marshal`` carries those exactly as the pickle does, in a quarter of the
    time (0.12 µs a row against 0.46, for 1,000 of the benchmark's records
    queued by ``record_operation``). It would not carry everything so: it
    refuses subclasses of ``str``, ``int``, ``float``, ``dict``, ``list`` and
    ``tuple``, but reads any other object with a buffer (a ``bytearray``, a
    ``memoryview``, a ``bytes`` subclass whatever its ``__bytes__`` says) as
    ``bytes``, and keeps a ``complex`` or a code object as it is. So spans,
    whose attributes may hold anything, go as the pickle, and so does a batch
    ``marshal`` fails on.
    """
    if message[0] == "write" and SNAPSHOT_FIELDS not in set(map(len, message[1])):
        # Any failure, not only its ValueError: the pickle is the way that always was.
        with contextlib.suppress(Exception):
            return _MARSHALLED, marshal.dumps(message, _MARSHAL_VERSION)
    return _PICKLED, _pickle(message)


def _frame(message: Any) -> bytes:
    """A message as sent: length, codec, payload (which may raise: nothing is sent yet)."""
    codec, payload = _encode(message)
    return _HEADER.pack(len(payload), codec) + payload


def _send(fd: int, message: Any) -> None:
    write_all(fd, _frame(message))


def _send_within(fd: int, message: Any, deadline: float) -> None:
    """:func:`_send`, giving up (TimeoutError) at ``deadline`` if nobody reads the pipe.

    Written a pipe buffer's atomic unit at a time, once poll says there is room
    for it, so that no write can block past the deadline.
    """
    view = memoryview(_frame(message))
    waiting = select.poll()
    waiting.register(fd, select.POLLOUT)
    while view:
        if not waiting.poll(max(deadline - time.monotonic(), 0.0) * 1000):
            raise TimeoutError
        view = view[os.write(fd, view[: select.PIPE_BUF]) :]


def _read_exactly(fd: int, size: int, deadline: float | None = None) -> bytes | None:
    """``size`` bytes; None at end of file, or when ``deadline`` (monotonic) passes first."""
    chunks = []
    while size:
        if deadline is not None and not _readable(fd, deadline):
            return None
        chunk = os.read(fd, min(size, _PIPE_BYTES))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _readable(fd: int, deadline: float) -> bool:
    waiting = select.poll()  # not select.select: it fails on descriptors above 1023
    waiting.register(fd, select.POLLIN)
    return bool(waiting.poll(max(deadline - time.monotonic(), 0.0) * 1000))


_PLAIN_TYPES = {"str": str, "int": int, "float": float, "bytes": bytes, "dict": dict, "list": list}


class _PlainUnpickler(pickle.Unpickler):
    """Builtins only, and nothing may import code on the way.

    The builtin types :class:`_PlainPickler` rebuilds a value with are the only
    callables it finds; they make plain values of plain values.
    """

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and name in _PLAIN_TYPES:
            return _PLAIN_TYPES[name]
        raise pickle.UnpicklingError(f"not a plain value: {module}.{name}")


def _receive(fd: int, deadline: float | None = None) -> Any:
    """The next message; None when the other side has closed the pipe, or at ``deadline``.

    Raises OSError when what arrives is not a message of ours: EBADMSG for a frame
    longer than any we send (the pipe is out of step), EPROTO for a payload that
    cannot be decoded.
    """
    header = _read_exactly(fd, _HEADER.size, deadline)
    if header is None:
        return None
    size, codec = _HEADER.unpack(header)
    if size > _LARGEST_MESSAGE:  # out of step: nothing after this can be read either
        raise OSError(errno.EBADMSG, "the writer process pipe carries something else")
    payload = _read_exactly(fd, size, deadline)
    if payload is None:
        return None
    return _decode(codec, payload)


def _decode(codec: int, payload: bytes) -> Any:
    """The message :func:`_encode` made ``payload`` of; OSError (EPROTO) if it cannot be read."""
    try:
        if codec == _MARSHALLED:
            return marshal.loads(payload)
        if codec == _PICKLED:
            return _PlainUnpickler(io.BytesIO(payload)).load()
        raise ValueError("unknown codec")
    except Exception as exc:
        raise OSError(errno.EPROTO, f"unreadable message ({type(exc).__name__})") from None


class ProcessBatchWriter:
    """:class:`~otel_json_exporter.writer.BatchWriter`'s contract, served by a child process.

    One instance per manager; ``write_rows`` is called by the manager's writer
    thread only, ``prepare`` and ``close`` by any thread.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        following: Following,
        policy: PiiPolicy,
        ending: Callable[[], bool] = lambda: False,
    ) -> None:
        self.directory = Path(directory)
        self._following = following
        self._ending = ending  # the manager stops, or the process exits: see _child_takes_it
        self._policy = policy  # the child maps spans with the manager's own PII rule
        self._here = BatchWriter(self.directory)  # for batches no child can take
        self._no_child = False  # one could not be started: write here until prepare()
        self._lock = threading.Lock()  # one conversation with the child at a time
        self._process: subprocess.Popen[bytes] | None = None
        self._to_child = -1  # our ends of its stdin and stdout pipes while it runs
        self._from_child = -1
        self._in_flight: list[QueuedItem] | None = None  # sent ahead, not yet answered
        self._deferred: BaseException | None = None  # see write_rows

    def prepare(self) -> None:
        """Check the directory here (StorageError says what is wrong), then start the child."""
        BatchWriter(self.directory).prepare()
        self._no_child = False
        process = self._process
        if process is not None and process.poll() is None:
            return  # running; the lock may be held by a write that waits for a slow disk
        with self._lock:
            self._ensure_child()

    @staticmethod
    def accepts(item: QueuedItem) -> bool:
        """Whether this item can be handed to the child as plain values, and written.

        A span the child cannot map is accepted: the child counts it as rejected.
        """
        try:
            _PlainUnpickler(io.BytesIO(_pickle(item))).load()
        except Exception:
            return False
        return is_snapshot(item) or BatchWriter.accepts(item)

    @property
    def closed(self) -> bool:
        """Whether no child is running (none started yet, or closed)."""
        return self._process is None

    @property
    def in_flight(self) -> int:
        """Items sent ahead whose answer has not been asked for: the manager must ask next."""
        ahead = self._in_flight
        return 0 if ahead is None else len(ahead)

    def write_rows(self, rows: Sequence[QueuedItem]) -> WrittenBatch:
        """Write ``rows``, or the batch already in flight if ``rows`` starts with it.

        Returns what was written: ``records`` plus ``rejected`` (spans that could
        not become records) is how many items it took, which the manager removes;
        ``path`` is None when no item became a record. Raises OSError when the
        batch failed.
        """
        with self._lock:
            if self._deferred is not None:
                # Raised while the batch before was in flight, and kept until its answer
                # was taken: nothing is in flight now, so ending here leaves nothing
                # written that the manager still holds.
                deferred, self._deferred = self._deferred, None
                raise deferred
            ahead, self._in_flight = self._in_flight, None
            if ahead is not None and not _starts_with(rows, ahead):
                # Cannot happen while the manager keeps its queue in order and asks for
                # what is in flight first; a batch sent is written unless refused, so
                # its answer comes before anything else.
                self._in_flight = ahead
                self._recover()
                ahead = None
            if ahead is None and not self._child_takes_it():
                return self._write_here(rows)
            batch = ahead if ahead is not None else list(rows)
            # Encoded before anything is sent: a batch that cannot be fails alone
            # (the manager drops its bad rows after three tries), and one that cannot
            # go ahead is simply not sent ahead.
            first = None if ahead is not None else _frame(("write", batch))
            following = self._following(len(batch))
            second = None
            if following:
                try:
                    second = _frame(("write", following))
                except Exception:  # not sent ahead: tried again as a batch of its own
                    pass
                except BaseException as exc:
                    # SystemExit or KeyboardInterrupt from a value's own code: raised on
                    # the next call, once the batch in flight is answered and taken.
                    self._deferred = exc
            if first is not None:
                self._send(first)
            if second is not None:
                try:
                    write_all(self._to_child, second)
                except OSError:
                    # The batch asked for went whole, the one sent ahead perhaps in part:
                    # the child would read what follows out of step. Its answer about
                    # the first is taken, then it is ended; a new one takes the next.
                    try:
                        return self._answer()
                    finally:
                        self._end_child()
                self._in_flight = following
            try:
                return self._answer()
            except WriterProcessError:
                raise  # the child is gone; whatever was in flight is retried
            except (OSError, RuntimeError):
                self._recover()
                raise

    def close(self) -> None:
        """End the child once it has answered everything; it exits when its input closes."""
        with self._lock:
            self._deferred = None  # its writer is ending anyway; a value that raises does again
            if self._in_flight is not None:
                self._in_flight = None
                self._settle()
            process = self._let_go()
        if process is not None:
            _reap(process)

    def after_fork(self) -> None:
        """In a forked child: forget the parent's writer process without touching it.

        Its pipe ends are closed already (``_close_inherited_pipe_ends``).
        """
        process, self._process = self._process, None
        self._to_child = self._from_child = -1
        self._in_flight = None
        self._deferred = None
        self._lock = threading.Lock()
        if process is not None:
            process.returncode = 0  # not ours to wait for: the parent reaps it

    # -- the conversation ---------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        """Send the first frame, or end the child: a write that failed may have sent part
        of it, and the child would read what follows out of step, its answers taken for
        other batches'. Nothing else is in flight, and a frame sent in part is never
        written: the batch is simply tried again, by a new child (EPIPE, a child that
        died, is that case too)."""
        try:
            write_all(self._to_child, frame)
        except OSError:
            raise self._end_child() from None

    def _end_child(self) -> WriterProcessError:
        """Kill the child and forget it (lock held), saying so; the next batch starts a
        new one."""
        if self._process is not None:
            self._process.kill()
        return self._lost()

    def _child_takes_it(self) -> bool:
        """(Lock held, nothing in flight.) Whether a child, started if need be, writes the batch.

        If not, the batch is written in this process, by the same code: once a
        child could not be started (an executable that is not Python, a
        machine too busy to start one in time), until the manager starts
        again; and when the manager stops or the interpreter exits with no
        child running, where starting one would only delay the last batches
        (a forked worker that ends before its first batch starts none).
        """
        if self._no_child:
            return False
        process = self._process
        if self._ending() and (process is None or process.poll() is not None):
            if process is not None:
                logger.warning("%s; the last batches are written here", self._lost().strerror)
            return False
        try:
            self._ensure_child()
        except WriterProcessError as exc:
            logger.warning(
                "%s; batches are written in this process until the manager starts again",
                exc.strerror,
            )
            self._no_child = True
            return False
        return True

    def _write_here(self, items: Sequence[QueuedItem]) -> WrittenBatch:
        """What the child does with a batch, done in this process: map its spans, write it."""
        rows, rejected, redacted = rows_of(items, self._policy)
        if not rows:
            return WrittenBatch(None, None, 0, 0, rejected, redacted)
        written = self._here.write_rows(rows)
        return WrittenBatch(
            written.path, written.batch_id, written.records, written.bytes, rejected, redacted
        )

    def _answer(self) -> WrittenBatch:
        assert self._process is not None
        try:
            reply = _receive(self._from_child)
        except OSError:
            self._process.kill()  # it says what it should not: start afresh
            reply = None
        if reply is None:
            raise self._lost()
        match reply:
            case (
                "written",
                str(path),
                str(batch_id),
                int(records),
                int(size),
                int(rejected),
                int(redacted),
            ):
                return WrittenBatch(Path(path), batch_id, records, size, rejected, redacted)
            case ("nothing", int(rejected), int(redacted)):
                return WrittenBatch(None, None, 0, 0, rejected, redacted)
            case ("oserror", int(number), str(reason)):
                raise OSError(number, reason)
            case ("skipped",):
                raise OSError(errno.ECANCELED, "skipped: the batch before it failed")
            case ("error", str(kind)):
                raise RuntimeError(f"the writer process failed to write a batch ({kind})")
        self._process.kill()  # out of step with us: start afresh
        raise self._lost()

    def _settle(self) -> None:
        """Wait for the answer about a batch nobody will ask for any more."""
        with contextlib.suppress(OSError, RuntimeError):
            self._answer()

    def _recover(self) -> None:
        """After a failed batch: drain the skipped one behind it, let the child go on."""
        if self._in_flight is not None:
            self._in_flight = None
            self._settle()
        if self._process is not None:
            with contextlib.suppress(OSError):
                _send(self._to_child, ("resume",))

    def _let_go(self) -> subprocess.Popen[bytes] | None:
        """Forget the child and close our pipe ends, so that it sees its input close."""
        process, self._process = self._process, None
        for fd in (self._to_child, self._from_child):
            if fd >= 0:
                _close_pipe_end(fd)
        self._to_child = self._from_child = -1
        return process

    def _lost(self) -> WriterProcessError:
        self._in_flight = None
        # A new child starts afresh: the batch is pickled again, and its value raises
        # again if it always does. Kept, the exception could outlive this writer thread
        # (a stop that ran out of time does not close()) and end the next one.
        self._deferred = None
        process = self._let_go()
        code = None
        if process is not None:
            _reap(process)
            code = process.returncode
        return WriterProcessError(errno.EPIPE, f"the writer process exited (exit code {code})")

    def _ensure_child(self) -> None:
        """Start a child if none runs (lock held, nothing in flight)."""
        if self._process is not None:
            if self._process.poll() is None:
                return
            # It died while idle (killed, out of memory): nothing was in flight, so a
            # new one takes over at once; say so, since something killed it.
            logger.warning("%s; starting a new one", self._lost().strerror)
        if not sys.executable:
            raise WriterProcessError(errno.ENOENT, "no Python executable to start (sys.executable)")
        # Looked at first: with no stderr of ours, a new pipe could take its number.
        stderr = None if _is_open(2) else subprocess.DEVNULL
        ends: list[int] = []
        try:
            ends.extend(_pipe())
            ends.extend(_pipe())
            child_in, to_child, from_child, child_out = ends
            process = subprocess.Popen(
                _child_command(self.directory),
                stdin=child_in,
                stdout=child_out,
                stderr=stderr,  # with none of ours, the child's would be its answer pipe
            )
        except BaseException as exc:  # Ctrl-C included: every end made so far goes
            for fd in ends:
                _close_pipe_end(fd)
            if not isinstance(exc, OSError):
                raise
            raise WriterProcessError(
                exc.errno,
                f"cannot start the writer process with {sys.executable}: {exc.strerror}",
            ) from exc
        _close_pipe_end(child_in)  # the child's ends are the child's now
        _close_pipe_end(child_out)
        self._process, self._to_child, self._from_child = process, to_child, from_child
        try:
            ready = self._handshake(to_child, from_child, self._policy)
        except BaseException:  # Ctrl-C included: no child is left half started
            process.kill()
            self._lost()
            raise
        if ready is not True:
            process.kill()
            lost = self._lost()
            raise WriterProcessError(
                errno.ECHILD,
                f"the writer process did not start: {ready or lost.strerror}; is "
                f"{sys.executable} a Python interpreter that can import this package?",
            )

    @staticmethod
    def _handshake(to_child: int, answers: int, policy: PiiPolicy) -> bool | str:
        """Send the policy; True once the child says it is ready; else what went wrong.

        The policy goes through the pipe, not the command line, whose arguments
        the system limits (128 KiB each on Linux); "" when the child exited.
        """
        grow = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
        if grow is not None:
            with contextlib.suppress(OSError):  # a smaller pipe still works, only slower
                fcntl.fcntl(to_child, grow, _PIPE_BYTES)
        deadline = time.monotonic() + _START_TIMEOUT
        keys = ("policy", sorted(policy.blocked_keys), sorted(policy.allowed_keys))
        try:
            _send_within(to_child, keys, deadline)
            ready = _receive(answers, deadline)
        except TimeoutError:
            return f"no answer within {_START_TIMEOUT:g} s"
        except BrokenPipeError:
            return ""
        except OSError as exc:
            return exc.strerror or "an unreadable answer"
        if ready == ("ready",):
            return True
        return f"no answer within {_START_TIMEOUT:g} s" if time.monotonic() >= deadline else ""


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _starts_with(rows: Sequence[QueuedItem], ahead: list[QueuedItem]) -> bool:
    """Whether ``rows`` begins with the very item objects of ``ahead``."""
    return len(rows) >= len(ahead) and all(a is b for a, b in zip(ahead, rows, strict=False))


def _reap(process: subprocess.Popen[bytes]) -> None:
    """Wait for a child whose input is closed; one that does not exit in time is killed."""
    try:
        process.wait(_CLOSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- the child ---------------------------------------------------------------------

# Isolated (-I): no PYTHONPATH, PYTHONSTARTUP or user site, so that nothing the
# application's environment runs at start-up (auto-instrumentation's
# sitecustomize, say) runs in the child. It imports from the parent's sys.path.
_CHILD_CODE = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from otel_json_exporter._process_writer import serve; serve(sys.argv[2])"
)


def _child_command(directory: Path) -> list[str]:
    """How to start the child: this interpreter, isolated, with our paths and the directory.

    Its first message is the manager's PII policy (:meth:`ProcessBatchWriter._handshake`).
    """
    paths = [_PACKAGE_PARENT, *(entry for entry in sys.path if isinstance(entry, str))]
    return [sys.executable, "-I", "-c", _CHILD_CODE, json.dumps(paths), str(directory)]


def serve(directory: str) -> None:
    """The child's main loop: write each batch it is sent, answer what happened.

    The first message is the manager's PII policy, which spans are mapped with.
    A reading thread takes each later message, maps its spans and encodes its
    batch while this thread fsyncs the one before: the two overlap, since fsync
    releases the GIL.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    match _receive(0):
        case ("policy", list(blocked), list(allowed)):
            policy = PiiPolicy(blocked_keys=blocked, allowed_keys=allowed)
        case _:  # the parent is gone, or speaks another protocol: nothing to do
            os._exit(1)
    # Answers go to a private copy of stdout; a stray print goes to stderr instead
    # of into the middle of an answer.
    answers = os.dup(1)
    os.dup2(2, 1)

    def answer(message: Any) -> None:
        # A parent that died reads no answer; what it sent is still written.
        with contextlib.suppress(BrokenPipeError):
            _send(answers, message)

    writer = BatchWriter(directory)
    work: queue.Queue[_Work | None] = queue.Queue(maxsize=1)
    threading.Thread(target=_read_and_encode, args=(work, policy), daemon=True).start()
    answer(("ready",))
    failed = False
    while True:
        item = work.get()
        if item is None:
            # Nothing is left to do or to flush: every answer went out through os.write,
            # every batch was fsynced. Skipping the interpreter's clean-up saves stop()
            # the 30 ms it takes.
            os._exit(0)
        if item.rows is None and item.problem is None:  # resume
            failed = False
            continue
        if failed:
            answer(("skipped",))
            continue
        if item.rows is None:
            failed = True
            answer(("error", item.problem))
            continue
        if not item.rows:  # every item was a span that could not become a record
            answer(("nothing", item.rejected, item.redacted))
            continue
        try:
            written = writer.write_rows(item.rows, item.moment, encoded=item.encoded)
        except OSError as exc:
            failed = True
            answer(("oserror", exc.errno, exc.strerror or type(exc).__name__))
        except Exception as exc:
            failed = True
            answer(("error", type(exc).__name__))
        else:
            answer(
                (
                    "written",
                    str(written.path),
                    written.batch_id,
                    written.records,
                    written.bytes,
                    item.rejected,
                    item.redacted,
                )
            )


@dataclass
class _Work:
    # None: resume after a failure, or a message it could not read
    rows: list[RecordRow | QueuedRow] | None
    moment: datetime | None = None
    encoded: bytes | None = None
    problem: str | None = None  # why a message could not be read
    rejected: int = 0  # spans that could not become records, left out of rows
    redacted: int = 0  # values masked while mapping spans


def _read_and_encode(work: queue.Queue[_Work | None], policy: PiiPolicy) -> None:
    try:
        while True:
            try:
                message = _receive(0)
            except OSError as exc:
                if exc.errno == errno.EBADMSG:
                    return
                # Not a batch of plain values: answered as an error, never imported.
                work.put(_Work(None, problem=exc.strerror))
                continue
            if message is None:
                return
            if message[0] == "resume":
                work.put(_Work(None))
                continue
            rows, rejected, redacted = rows_of(message[1], policy)
            moment = datetime.now(timezone.utc)
            try:
                encoded: bytes | None = encode_rows(rows, moment) if rows else None
            except Exception:
                encoded = None  # the writing thread encodes again and reports the error
            work.put(_Work(rows, moment, encoded, rejected=rejected, redacted=redacted))
    finally:
        work.put(None)  # whatever ends this thread ends the child, which the parent sees
