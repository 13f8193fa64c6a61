"""The span exporter's settings: code, then ``OTEL_EXPORTER_OPERATION_JSON_*``, then defaults.

=============================================  ==========  =============================
environment variable                           default     meaning
=============================================  ==========  =============================
``OTEL_EXPORTER_OPERATION_JSON_PATH``          ``./metrics``  storage directory
``OTEL_EXPORTER_OPERATION_JSON_FLUSH_INTERVAL``  ``5``     seconds between timed flushes
``OTEL_EXPORTER_OPERATION_JSON_MAX_BATCH_SIZE``  ``1000``  records per batch file, at most
``OTEL_EXPORTER_OPERATION_JSON_MAX_QUEUE_SIZE``  ``10000`` records waiting in memory, at most
``OTEL_EXPORTER_OPERATION_JSON_RETENTION_DAYS``  unset     delete batch files older than this
``OTEL_EXPORTER_OPERATION_JSON_WRITER``        ``thread``  ``thread``, or ``process``: spans
                                                           mapped and written in a child
                                                           process, off the app's GIL
=============================================  ==========  =============================

A value given in code always wins and is checked by
:class:`~otel_json_exporter.manager.MetricsManager` (ValueError if invalid). An
environment variable that is empty counts as unset; one that cannot be parsed,
or is out of range, is logged as a warning and the default is used, as the
OpenTelemetry configuration specification asks. The warning names the variable,
never its value.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar, cast

from otel_json_exporter.manager import WriterKind
from otel_json_exporter.writer import MAX_RETENTION_DAYS

__all__ = [
    "DEFAULT_FLUSH_INTERVAL_SECONDS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_STORAGE_PATH",
    "ENV_FLUSH_INTERVAL",
    "ENV_MAX_BATCH_SIZE",
    "ENV_MAX_QUEUE_SIZE",
    "ENV_PATH",
    "ENV_RETENTION_DAYS",
    "ENV_WRITER",
    "ExporterSettings",
    "resolve_settings",
]

logger = logging.getLogger("otel_json_exporter")

ENV_PATH = "OTEL_EXPORTER_OPERATION_JSON_PATH"
ENV_FLUSH_INTERVAL = "OTEL_EXPORTER_OPERATION_JSON_FLUSH_INTERVAL"
ENV_MAX_BATCH_SIZE = "OTEL_EXPORTER_OPERATION_JSON_MAX_BATCH_SIZE"
ENV_MAX_QUEUE_SIZE = "OTEL_EXPORTER_OPERATION_JSON_MAX_QUEUE_SIZE"
ENV_RETENTION_DAYS = "OTEL_EXPORTER_OPERATION_JSON_RETENTION_DAYS"
ENV_WRITER = "OTEL_EXPORTER_OPERATION_JSON_WRITER"

DEFAULT_STORAGE_PATH = Path("./metrics")
DEFAULT_FLUSH_INTERVAL_SECONDS = 5.0
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_QUEUE_SIZE = 10000
DEFAULT_WRITER: WriterKind = "thread"


@dataclass(frozen=True)
class ExporterSettings:
    """The resolved settings of a standalone exporter.

    ``storage_path_source`` says where the path came from (``"argument"``, the
    variable's name, or ``"default"``), so that a storage error can say so.
    """

    storage_path: Path
    flush_interval_seconds: float
    max_batch_size: int
    max_queue_size: int
    retention_days: float | None
    storage_path_source: str
    writer: WriterKind = DEFAULT_WRITER


def resolve_settings(
    storage_path: str | os.PathLike[str] | None = None,
    flush_interval_seconds: float | None = None,
    max_batch_size: int | None = None,
    max_queue_size: int | None = None,
    retention_days: float | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    writer: WriterKind | None = None,
) -> ExporterSettings:
    """Resolve each setting: the argument if not None, else the variable, else the default.

    >>> resolve_settings(max_batch_size=50, environ={ENV_MAX_BATCH_SIZE: "10"}).max_batch_size
    50
    """
    env = os.environ if environ is None else environ
    if storage_path is not None:
        if not os.fspath(storage_path):  # Path("") would be the current directory
            raise ValueError("storage_path must be a non-empty path")
        path, source = Path(storage_path), "argument"
    elif env.get(ENV_PATH, "").strip():
        path, source = Path(env[ENV_PATH].strip()), ENV_PATH
    else:
        path, source = DEFAULT_STORAGE_PATH, "default"

    def setting(code: _T | None, name: str, parse: Callable[[str], _T], default: _T) -> _T:
        # The variable is read only when no argument is given: a warning about a
        # bad value must never name one that is not used.
        if code is not None:
            return code
        from_env = _from_env(env, name, parse, default)
        return from_env if from_env is not None else default

    return ExporterSettings(
        storage_path=path,
        flush_interval_seconds=setting(
            flush_interval_seconds,
            ENV_FLUSH_INTERVAL,
            _positive_float,
            DEFAULT_FLUSH_INTERVAL_SECONDS,
        ),
        max_batch_size=setting(
            max_batch_size, ENV_MAX_BATCH_SIZE, _positive_int, DEFAULT_MAX_BATCH_SIZE
        ),
        max_queue_size=setting(
            max_queue_size, ENV_MAX_QUEUE_SIZE, _positive_int, DEFAULT_MAX_QUEUE_SIZE
        ),
        retention_days=(
            retention_days
            if retention_days is not None
            else _from_env(env, ENV_RETENTION_DAYS, _retention_days, None)
        ),
        storage_path_source=source,
        writer=setting(writer, ENV_WRITER, _writer_kind, DEFAULT_WRITER),
    )


_T = TypeVar("_T")


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise ValueError("must be a positive number")
    return value


def _retention_days(raw: str) -> float:
    value = _positive_float(raw)
    if value > MAX_RETENTION_DAYS:
        raise ValueError(f"must be at most {MAX_RETENTION_DAYS}")
    return value


def _writer_kind(raw: str) -> WriterKind:
    value = raw.lower()
    if value not in ("thread", "process"):
        raise ValueError("must be thread or process")
    return cast("WriterKind", value)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


_EXPECTED: dict[object, str] = {
    _positive_int: "a positive integer",
    _retention_days: f"a positive number of days, at most {MAX_RETENTION_DAYS}",
    _writer_kind: "'thread' or 'process'",
}


def _from_env(
    env: Mapping[str, str], name: str, parse: Callable[[str], _T], default: _T | None
) -> _T | None:
    """The parsed variable; None when unset, or (with a warning) when invalid."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return parse(raw)
    except ValueError:
        # The value is not repeated: the message must never carry data.
        expected = _EXPECTED.get(parse, "a positive number")
        shown = "unset" if default is None else default
        logger.warning("%s must be %s; using the default (%s)", name, expected, shown)
        return None
