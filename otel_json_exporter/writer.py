"""Records -> one atomic, fsynced, never-overwriting batch file; retention; temp clean-up.

Everything here is synchronous and uses plain ``os`` calls, so it works on any
thread, including during interpreter shutdown when thread pools refuse new work.

How one batch is written (:meth:`BatchWriter.write_rows`):

1. encode the batch (its ``batch_id`` comes from its ``batch_timestamp``);
2. write it to ``.metrics_<pid>_n<process space>_<random>.tmp`` in the storage directory,
   created with ``O_EXCL``, then ``fsync`` it;
3. ``os.link`` it to ``metrics_<batch_id>.json``: a hard link never replaces an
   existing file, so when the name is taken (same microsecond, another process)
   the timestamp moves on by one microsecond and the batch is written again;
4. remove the temporary name and ``fsync`` the directory.

A reader therefore sees a complete ``metrics_*.json`` or none. The storage
directory must be on a local filesystem that supports hard links.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from otel_json_exporter.records import (
    BATCH_FILE_PATTERN,
    OperationRecord,
    QueuedRow,
    RecordRow,
    batch_id_for,
    encode_lines,
    format_timestamp,
    next_microsecond,
    parse_batch_id,
    row_of,
)

logger = logging.getLogger("otel_json_exporter")

__all__ = [
    "MAX_RETENTION_DAYS",
    "STALE_TEMP_SECONDS",
    "BatchWriter",
    "StorageError",
    "WrittenBatch",
    "delete_expired_batches",
    "encode_batch",
    "encode_rows",
    "iter_batch_files",
    "remove_stale_temp_files",
]

MAX_RETENTION_DAYS = 36_500
"""The longest retention accepted (a hundred years); use no retention to keep everything."""

STALE_TEMP_SECONDS = 600.0
"""A temporary file older than this is stale even if its writer's PID is alive."""

# .metrics_<pid>_n<process space>_<random>.tmp; a name without "n..." (before the
# space was named) is judged by its age only
_TEMP_PATTERN = re.compile(r"^\.metrics_([0-9]+)_(?:n([0-9a-f]+)_)?[0-9a-f]+\.tmp$")  # fullmatch
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class StorageError(OSError):
    """The storage directory cannot be used (missing and not creatable, not a directory...)."""


@dataclass(frozen=True)
class WrittenBatch:
    """What one successful :meth:`BatchWriter.write_rows` put on disk.

    A batch handed to the writer process may also hold spans still to be mapped:
    ``rejected`` counts those that could not become records (left out, so the
    batch took ``records + rejected`` items), ``redacted`` the values their
    mapping masked. ``path`` and ``batch_id`` are None when no item became a
    record and no file was written.
    """

    path: Path | None
    batch_id: str | None
    records: int
    bytes: int
    rejected: int = 0
    redacted: int = 0


def encode_rows(rows: Sequence[RecordRow | QueuedRow], batch_timestamp: datetime) -> bytes:
    """The bytes of one batch file: compact JSON, one record per line.

    ::

        {"records":[
        {"operation_type":"api_request","operation_name":"GET /api/users",...},
        {"operation_type":"database_query",...}
        ],"batch_timestamp":"...","batch_id":"...","total_records":2}

    Keys come in the specification's order, and each record line is exactly
    ``OperationRecord.model_dump_json()`` of that record
    (:func:`~otel_json_exporter.records.encode_lines`), without building a model
    per record; an indented file would take twice as long to encode and a
    third more disk.
    """
    tail = to_json(
        {
            "batch_timestamp": format_timestamp(batch_timestamp),
            "batch_id": batch_id_for(batch_timestamp),
            "total_records": len(rows),
        }
    )
    if not rows:
        return b'{"records":[],' + tail[1:] + b"\n"
    return encode_lines(rows, b'{"records":[\n', b"\n]," + tail[1:] + b"\n")


def encode_batch(records: Sequence[OperationRecord], batch_timestamp: datetime) -> bytes:
    """The bytes of one batch file holding ``records``; see :func:`encode_rows`."""
    return encode_rows([row_of(record) for record in records], batch_timestamp)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``: ``os.write`` may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


_CLOCK_STEP_KEPT = timedelta(seconds=1)
"""How far the wall clock may go back and batch names still increase past it."""


class BatchWriter:
    """Writes batches into one directory; one instance per writer thread."""

    in_flight = 0
    """Rows sent ahead and not yet answered: none, each batch is written when asked."""

    closed = True
    """Nothing runs between calls: there is never anything to close."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._last_timestamp: datetime | None = None

    def close(self) -> None:
        """Nothing to release: every call opens and closes its own files."""

    @staticmethod
    def accepts(row: tuple[Any, ...]) -> bool:
        """Whether this row can be written (validation should make it always so)."""
        try:
            encode_rows([row], datetime.now(timezone.utc))
        except Exception:
            return False
        return True

    def after_fork(self) -> None:
        """Nothing to forget in a forked child: no file stays open between calls."""

    def prepare(self) -> None:
        """Create the directory if needed and prove it is writable.

        Raises :class:`StorageError` saying what is wrong. A full disk is not an
        error here: writes are retried later.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
        except FileExistsError:
            raise StorageError(
                errno.ENOTDIR, f"storage path {self.directory} exists and is not a directory"
            ) from None
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot create storage directory {self.directory}: {exc.strerror}"
            ) from exc
        if not self.directory.is_dir():
            raise StorageError(errno.ENOTDIR, f"storage path {self.directory} is not a directory")
        try:
            with os.scandir(self.directory):
                pass  # removing dead writers' files and retention need to list it
        except OSError as exc:
            raise StorageError(
                exc.errno, f"storage directory {self.directory} cannot be listed: {exc.strerror}"
            ) from exc
        probe = self._temp_path()
        try:
            fd = os.open(probe, _FILE_FLAGS, 0o600)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return
            raise StorageError(
                exc.errno, f"storage directory {self.directory} is not writable: {exc.strerror}"
            ) from exc
        os.close(fd)
        linked = self._temp_path()
        try:
            os.link(probe, linked)  # every batch is published with a hard link
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                return  # full (the link may need an inode or a block): writes are retried
            raise StorageError(
                exc.errno,
                f"storage directory {self.directory} does not support hard links, which "
                f"atomic batch files need: {exc.strerror}",
            ) from exc
        finally:
            os.unlink(probe)
        os.unlink(linked)

    def write(
        self, records: Sequence[OperationRecord], now: datetime | None = None
    ) -> WrittenBatch:
        """Write ``records`` as one new batch file; see :meth:`write_rows`."""
        return self.write_rows([row_of(record) for record in records], now)

    def write_rows(
        self,
        rows: Sequence[RecordRow | QueuedRow],
        now: datetime | None = None,
        *,
        encoded: bytes | None = None,
    ) -> WrittenBatch:
        """Write validated rows as one new batch file and return what was written.

        ``encoded`` is ``encode_rows(rows, now)`` when the caller has it already;
        it is used if ``now`` is still free to be this batch's timestamp.
        Raises OSError when the disk refuses; then nothing is left behind under
        a ``metrics_*.json`` name and the same records can be written again.
        A temporary file that cannot be removed is left for
        :func:`remove_stale_temp_files`; it never makes a written batch count as failed.
        """
        moment = now or datetime.now(timezone.utc)
        last = self._last_timestamp
        if last is not None and last - _CLOCK_STEP_KEPT <= moment <= last:
            # Names increase, so that they sort as the batches were written; a clock set
            # back further is followed, so that a clock once wrong (a VM's at boot, years
            # ahead) does not name every later batch in its future: retention and
            # cleanup judge age by the name.
            moment = next_microsecond(last)
            encoded = None
        while True:
            data = encode_rows(rows, moment) if encoded is None else encoded
            encoded = None
            final = self.directory / f"metrics_{batch_id_for(moment)}.json"
            temp = self._temp_path()
            try:
                self._write_durably(temp, data)
                try:
                    os.link(temp, final)
                except FileExistsError:
                    moment = next_microsecond(moment)
                    continue
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(temp)
            try:
                self._fsync_directory()
            except OSError:
                # The name may not survive a crash: take it back, so that the retry
                # writes the batch once (a reader that took the file meanwhile sees its
                # records again). If even that fails, the batch stays written.
                if self._take_back(final):
                    raise
            self._last_timestamp = moment
            return WrittenBatch(final, batch_id_for(moment), len(rows), len(data))

    @staticmethod
    def _take_back(final: Path) -> bool:
        try:
            os.unlink(final)
        except OSError:
            return False
        return True

    def _temp_path(self) -> Path:
        name = f".metrics_{os.getpid()}_n{_PROCESS_SPACE}_{secrets.token_hex(6)}.tmp"
        return self.directory / name

    @staticmethod
    def _write_durably(path: Path, data: bytes) -> None:
        fd = os.open(path, _FILE_FLAGS, 0o644)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, _DIR_FLAGS)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _process_space() -> str:
    """Where this process's PID names it: its PID namespace on this boot of this host.

    Two containers sharing a volume (a rolling restart) number their processes each
    in its own namespace, and two hosts sharing one each on its own; the initial
    namespace's inode is the same on every Linux host, so the boot's id goes with
    it. A PID is judged only by a process of the same space. "0" where neither can
    be read (not Linux): every process there is taken to share one space.
    """
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return "0"
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii")
    except OSError:
        boot = ""
    return f"{namespace:x}" + "".join(c for c in boot.lower() if c in "0123456789abcdef")[:12]


_PROCESS_SPACE = _process_space()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError, ValueError):
        return False  # gone, or no process can have that number
    except PermissionError:
        return True  # it exists, under another user
    return True


def remove_stale_temp_files(
    directory: str | os.PathLike[str], max_age_seconds: float = STALE_TEMP_SECONDS
) -> list[Path]:
    """Remove temporary files left by writers that died; return what was removed.

    A temporary file is removed when the process named in it is gone, or when
    it is older than ``max_age_seconds`` (a live writer's file is that old only
    when one write took ten minutes; that write then fails and is retried). A
    file of another process space (another container's, another host's), or
    named before spaces were, is judged by its age only. One
    that cannot be removed (another user's, in a shared directory; a directory
    by that name) is left, with a warning: it must not keep a manager from starting.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return removed
    for entry in entries:
        match = _TEMP_PATTERN.fullmatch(entry.name)
        if not match:
            continue
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            continue
        ours = match.group(2) == _PROCESS_SPACE
        if age > max_age_seconds or (ours and not _pid_alive(int(match.group(1)))):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                logger.warning(
                    "cannot remove stale temporary file %s: %s",
                    entry.name,
                    exc.strerror or type(exc).__name__,
                )
                continue
            removed.append(Path(entry.path))
    return removed


def iter_batch_files(directory: str | os.PathLike[str]) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, batch_id)`` for every batch file, oldest ``batch_id`` first.

    Only names matching ``metrics_YYYYMMDD_HHMMSS_ffffff.json`` count.
    """
    found = []
    for entry in os.scandir(directory):
        match = BATCH_FILE_PATTERN.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append((match.group(1), Path(entry.path)))
    for batch_id, path in sorted(found):
        yield path, batch_id


def delete_expired_batches(
    directory: str | os.PathLike[str],
    older_than: timedelta,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    on_error: Callable[[Path, OSError], None] | None = None,
) -> list[Path]:
    """Delete batch files whose ``batch_id`` is older than ``older_than``.

    Age is judged by the ``batch_id`` in the file name, not by the file's
    mtime. Only exact ``metrics_YYYYMMDD_HHMMSS_ffffff.json`` names are
    considered; a name that is not a real date is left alone. Returns the paths
    deleted (or, with ``dry_run``, that would be). A file that cannot be deleted
    (another user's, in a shared directory) does not stop the others: it is
    passed to ``on_error`` with the error, or, without ``on_error``, the first
    such error is raised once every other file has been tried.

    >>> delete_expired_batches("./metrics", timedelta(days=30))  # doctest: +SKIP
    """
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    try:
        cutoff = (now or datetime.now(timezone.utc)) - older_than
    except OverflowError:
        return []  # older than the calendar: nothing is
    expired: list[Path] = []
    first_error: OSError | None = None
    for path, batch_id in iter_batch_files(directory):
        try:
            written = parse_batch_id(batch_id)
        except ValueError:
            continue
        if written < cutoff:
            if not dry_run:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if on_error is not None:
                        on_error(path, exc)
                    elif first_error is None:
                        first_error = exc
                    continue
            expired.append(path)
    if first_error is not None:
        raise first_error
    return expired
