"""Reading batch files back: which files are batch files, and is each one valid.

A batch file is read whole (one file holds at most ``max_batch_size`` records)
and checked with :class:`~otel_json_exporter.records.MetricsBatch`, which checks
the keys, the types, the timestamp format, ``total_records`` and ``batch_id``
against ``batch_timestamp``; the name is then checked against ``batch_id``.

Every reason given for a bad file is worded by
:func:`~otel_json_exporter.pii.safe_validation_message`, from pydantic's error
locations and messages only (never from the input, because metadata may hold
personal data), with e-mail addresses in keys masked.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from otel_json_exporter.pii import safe_validation_message
from otel_json_exporter.records import (
    AS_WRITTEN,
    BATCH_FILE_PATTERN,
    MetricsBatch,
    parse_batch_id,
)
from otel_json_exporter.writer import iter_batch_files

__all__ = ["BatchFileGone", "InvalidBatchFile", "other_metrics_names", "read", "read_all"]

_MAX_ERRORS_SHOWN = 3


class BatchFileGone(Exception):
    """A batch file deleted since the directory was listed (retention, ``cleanup``): skipped."""


class InvalidBatchFile(Exception):
    """A batch file that cannot be read or breaks the format; ``reason`` is safe to print."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def read(path: Path, batch_id: str) -> MetricsBatch:
    """The batch in ``path``, named after ``batch_id``; :class:`InvalidBatchFile` if bad,
    :class:`BatchFileGone` if it was deleted since it was listed."""
    try:
        parse_batch_id(batch_id)
    except ValueError:
        raise InvalidBatchFile(path, "the name is not a real date and time") from None
    data = _read_regular_file(path)
    try:
        batch = MetricsBatch.model_validate_json(data, context=AS_WRITTEN)
    except ValidationError as exc:
        reason = safe_validation_message(exc, prefix="", max_errors=_MAX_ERRORS_SHOWN)
        raise InvalidBatchFile(path, reason) from None
    if batch.batch_id != batch_id:
        raise InvalidBatchFile(
            path, f"the file holds batch_id {batch.batch_id}, its name says {batch_id}"
        )
    return batch


_NOT_REGULAR = "not a regular file (a symbolic link, a FIFO or a device): not read"
# O_NOFOLLOW: a symbolic link put at the name is not followed (to another directory's
# file, to /dev/zero); O_NONBLOCK: a FIFO put there does not wait for a writer.
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
# How long an open waits, at most, for another process to give up its lease on a file
# (Samba's oplocks, an NFS server's delegations): Linux breaks a lease itself after
# /proc/sys/fs/lease-break-time, 45 s by default, as a blocking open would have waited.
_LEASE_WAIT_SECONDS = 60.0


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, only if it is a regular file.

    The listing judged the name a regular file, but in a directory others may write
    it may since have been replaced: by a symbolic link (to a file elsewhere, or to a
    device that never ends) or by a FIFO (that would wait for ever). Such a file is
    opened without following or waiting, and not read.
    """
    try:
        fd = _open(path)
    except FileNotFoundError:
        raise BatchFileGone(path) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (EMLINK: BSD)
            raise InvalidBatchFile(path, _NOT_REGULAR) from None
        raise InvalidBatchFile(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InvalidBatchFile(path, _NOT_REGULAR)
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    except OSError as exc:
        raise InvalidBatchFile(path, f"cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _open(path: Path) -> int:
    """``os.open(path, _READ_FLAGS)``, once the lease another process holds on the file,
    if any, is given up. With O_NONBLOCK an open that would wait for that fails at
    once (BlockingIOError), the lease's break under way: it is tried again until it is
    through. A FIFO opened for reading never fails so: it is not waited for."""
    deadline = None
    pause = 0.001
    while True:
        try:
            return os.open(path, _READ_FLAGS)
        except BlockingIOError:
            now = time.monotonic()
            if deadline is None:
                deadline = now + _LEASE_WAIT_SECONDS
            elif now >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def read_all(directory: str | os.PathLike[str]) -> Iterator[MetricsBatch | InvalidBatchFile]:
    """Every batch file of ``directory``, oldest first: each batch, or why its file is bad.

    A file deleted since the listing (retention, ``cleanup``) is skipped: it is not a
    file of the directory any more. One file is read at a time.
    """
    for path, batch_id in iter_batch_files(directory):
        try:
            yield read(path, batch_id)
        except BatchFileGone:
            continue
        except InvalidBatchFile as bad:
            yield bad


def other_metrics_names(directory: str | os.PathLike[str]) -> Iterator[str]:
    """Names like ``metrics_*.json`` that are not batch files (left alone by every command).

    Judged from one listing, as :func:`~otel_json_exporter.writer.iter_batch_files`
    judges a name: a batch file a running manager links between two listings must not
    count as another name.
    """
    others = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if fnmatch.fnmatchcase(entry.name, "metrics_*.json") and not (
                BATCH_FILE_PATTERN.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
            ):
                others.append(entry.name)
    yield from sorted(others)
