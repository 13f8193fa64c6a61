"""A newcomer's trial: the release as built, installed and run by an OpenTelemetry user.

Real builds (``python -m build --no-isolation``, with the ``build`` and ``setuptools``
of the test extra, so that nothing is fetched), real SDK spans, real subprocesses and
real files. Each test here failed on the code it was written against, for the reason its
docstring gives, but those whose docstring starts with "Pinned": they passed, and hold
what the trial checked and found right.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Left out of the copy a build starts from: caches and what a build or a run leaves.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
    "build",
    "dist",
    "*.egg-info",
    "metrics",
)


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and the wheel, built from a copy of this tree as a release would be."""
    base = tmp_path_factory.mktemp("release")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    out = base / "dist"
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _sdist_names(dist: Path) -> set[str]:
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        return {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}


def _tree(folder: str) -> set[str]:
    """The files under ``folder`` of this tree, caches left out, relative to the tree."""
    found = set()
    for path in (ROOT / folder).rglob("*"):
        relative = path.relative_to(ROOT)
        if path.is_file() and not any(
            part == "__pycache__" or part.startswith(".") for part in relative.parts
        ):
            found.add(relative.as_posix())
    return found


class TestTheSdist:
    def test_it_carries_every_file_its_tests_import_or_read(self, dist: Path) -> None:
        """The sdist shipped tests/test_*.py (setuptools' default) but not conftest.py,
        tests/__init__.py, the helpers (_spans.py, _faults.py...), tests/data, nor the
        examples and benchmarks that tests run: 34 of its test modules failed to import
        from the unpacked sdist."""
        names = _sdist_names(dist)
        missing = sorted((_tree("tests") | _tree("examples") | _tree("benchmarks")) - names)
        assert missing == []

    def test_its_tests_are_collected_from_the_unpacked_sdist(
        self, dist: Path, tmp_path: Path
    ) -> None:
        (sdist,) = dist.glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python 3.10.12 and later
                archive.extractall(tmp_path, filter="data")
            else:  # pragma: no cover
                archive.extractall(tmp_path)
        (unpacked,) = tmp_path.iterdir()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
            cwd=unpacked,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert " error" not in done.stdout.splitlines()[-1]


class TestTheWheel:
    def test_it_holds_the_package_its_types_and_its_entry_points(self, dist: Path) -> None:
        """Pinned: every module, py.typed, the command line's and the SDK's entry points,
        and no dependency beyond the API, the SDK and pydantic."""
        (wheel,) = dist.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
            entries = archive.read(entry_points).decode()
            (metadata_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = archive.read(metadata_name).decode()
        modules = {
            f"otel_json_exporter/{p.name}" for p in (ROOT / "otel_json_exporter").glob("*.py")
        }
        assert modules | {"otel_json_exporter/py.typed"} <= names
        assert not any(name.startswith(("tests/", "examples/", "benchmarks/")) for name in names)
        assert "otel-json-exporter = otel_json_exporter.cli:main" in entries
        assert "operation_json = otel_json_exporter.exporter:OperationSpanExporter" in entries
        assert "Requires-Python: >=3.10" in metadata
        required = re.findall(r"^Requires-Dist: ([^;\n]+)$", metadata, re.MULTILINE)
        assert sorted(required) == [
            "opentelemetry-api>=1.27",
            "opentelemetry-sdk>=1.27",
            "pydantic<3,>=2.7",
        ]


# == OTEL_SDK_DISABLED, the SDK's own off switch =========================================

INSTRUMENT = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
_A_SPAN = (
    "from opentelemetry import trace\n"
    "with trace.get_tracer('job').start_as_current_span('step'):\n"
    "    pass\n"
    "print('done')\n"
)


def _instrumented(tmp_path: Path, storage: Path, **env: str) -> subprocess.CompletedProcess[str]:
    assert INSTRUMENT is not None, "opentelemetry-instrument is not installed beside python"
    return subprocess.run(
        [INSTRUMENT, sys.executable, "-c", _A_SPAN],
        cwd=tmp_path,
        env={
            **os.environ,
            "OTEL_TRACES_EXPORTER": "operation_json",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            "OTEL_EXPORTER_OPERATION_JSON_PATH": str(storage),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestSdkDisabled:
    def test_auto_instrumentation_with_the_sdk_disabled_touches_no_disk(
        self, tmp_path: Path
    ) -> None:
        """OTEL_SDK_DISABLED=true turns the SDK into a no-op, yet the SDK's configuration
        still builds the exporters it names: ours created the storage directory, started a
        writer thread and installed its SIGTERM handler for spans that can never come."""
        storage = tmp_path / "metrics"
        done = _instrumented(tmp_path, storage, OTEL_SDK_DISABLED="true")
        assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
        assert not storage.exists()

    def test_with_the_sdk_disabled_an_unusable_path_is_no_error(self, tmp_path: Path) -> None:
        """The same: a storage path that cannot be used (here under a regular file) made
        the disabled SDK's start-up print a StorageError traceback."""
        (tmp_path / "a-file").write_text("")
        done = _instrumented(tmp_path, tmp_path / "a-file" / "metrics", OTEL_SDK_DISABLED="true")
        assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
        assert "Traceback" not in done.stderr, done.stderr

    def test_the_exporter_built_while_disabled_is_inert(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While no span comes (spans that do come are written: test_review_today.py)."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        from otel_json_exporter import OperationSpanExporter

        storage = tmp_path / "metrics"
        monkeypatch.setenv("OTEL_SDK_DISABLED", " True ")  # read as the SDK reads it
        exporter = OperationSpanExporter(storage)
        assert exporter.export([]) is SpanExportResult.SUCCESS
        assert exporter.force_flush() is True
        exporter.shutdown()
        assert not storage.exists()
        assert exporter.manager.stats().total_recorded == 0

    def test_any_other_value_leaves_the_exporter_on(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pinned: as in the SDK, only "true" (any case) disables."""
        from otel_json_exporter import OperationSpanExporter

        monkeypatch.setenv("OTEL_SDK_DISABLED", "1")
        exporter = OperationSpanExporter(tmp_path / "metrics")
        try:
            assert (tmp_path / "metrics").is_dir()
            assert exporter.manager.stats().is_running
        finally:
            exporter.shutdown()


# == README's signatures ==================================================================

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _readme_parameters(name: str) -> list[str]:
    """The parameters README's signature line of ``name`` lists, ``*`` included, in order."""
    match = re.search(rf"`{name}\(([^`]*)\)`", README)
    assert match, f"README gives no signature of {name}"
    return [part.split("=")[0].strip() for part in match.group(1).split(",")]


def _parameters(function: Callable[..., object]) -> list[str]:
    import inspect

    names = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and "*" not in names:
            names.append("*")
        names.append(parameter.name)
    return names


@pytest.mark.parametrize("name", ["MetricsManager", "OperationSpanExporter", "span_to_record"])
def test_readme_gives_every_parameter(name: str) -> None:
    """README's signature of OperationSpanExporter left out ``manager=``, the attached
    mode's own parameter (README shows it only in an example further down)."""
    import otel_json_exporter

    assert _readme_parameters(name) == _parameters(getattr(otel_json_exporter, name))


# == Spans other than HTTP, made with the real SDK ========================================


def _records_of_non_http_spans(tmp_path: Path) -> dict[str, dict[str, object]]:
    """Each span's record as the exporter writes it, by operation name."""
    import json

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Link, SpanKind, Status, StatusCode

    from otel_json_exporter import OperationSpanExporter

    exporter = OperationSpanExporter(tmp_path / "metrics")
    provider = TracerProvider(
        resource=Resource.create({"service.name": "shop", "service.version": "1.2"})
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("trial")
    db = {"db.system": "postgresql", "db.statement": "SELECT * FROM orders WHERE id = $1"}
    with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes=db):
        pass
    publish = {"messaging.system": "kafka", "messaging.destination.name": "orders"}
    with tracer.start_as_current_span(
        "orders publish", kind=SpanKind.PRODUCER, attributes=publish
    ) as producer:
        producer.add_event("sent", {"bytes": 12})
    links = [Link(producer.get_span_context())]
    with tracer.start_as_current_span(
        "orders process", kind=SpanKind.CONSUMER, links=links, attributes=publish
    ):
        pass
    with pytest.raises(ValueError, match="bad input"), tracer.start_as_current_span("compute"):
        raise ValueError("bad input")  # the SDK records the event and sets ERROR
    with tracer.start_as_current_span("bare error") as span:
        span.set_status(Status(StatusCode.ERROR))
    provider.shutdown()
    records = {}
    for path in sorted((tmp_path / "metrics").glob("metrics_*.json")):
        for record in json.loads(path.read_bytes())["records"]:
            records[record["operation_name"]] = record
    return records


def test_non_http_spans_become_the_records_readme_describes(tmp_path: Path) -> None:
    """Pinned: a database client span, a producer and a linked consumer, an internal span
    that raised, and a bare ERROR status, as README's tables map them."""
    records = _records_of_non_http_spans(tmp_path)
    summary = {
        name: (r["operation_type"], r["success"], r["error_message"]) for name, r in records.items()
    }
    assert summary == {
        "SELECT orders": ("database_query", True, None),
        "orders publish": ("messaging", True, None),
        "orders process": ("messaging", True, None),
        "compute": ("internal", False, "ValueError: bad input"),
        "bare error": ("internal", False, None),  # failed, with nothing to say why
    }
    database = records["SELECT orders"]["metadata"]
    assert isinstance(database, dict)
    assert database["db.statement"] == "SELECT * FROM orders WHERE id = $1"
    assert database["span_kind"] == "client"
    for record in records.values():  # no events, no links, one resource attribute
        metadata = record["metadata"]
        assert isinstance(metadata, dict)
        assert metadata["service.name"] == "shop"
        assert not {"service.version", "bytes", "links", "events"} & set(metadata)


def _readme_dropped_semconv_names() -> list[str]:
    """The semantic-convention names README says the default rule drops, though often no
    personal data."""
    match = re.search(
        r"yet often hold no personal data[^:]*:(.*?)are dropped from spans", README, re.S
    )
    assert match, "README does not name the semantic-convention attributes the rule drops"
    return re.findall(r"`([a-z0-9_]+(?:\.[a-z0-9_]+)+)`", match.group(1))


def test_readme_names_the_semconv_attributes_the_rule_drops_that_are_no_personal_data(
    tmp_path: Path,
) -> None:
    """The ``_key`` and ``client_id`` endings drop messaging routing and partition keys, a
    feature flag's key and a client library's id from real spans, silently but for the
    pii_redacted count; README named only geo.postal_code among the semantic conventions'
    names, so an OpenTelemetry user could not know that allowed_keys brings them back."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from otel_json_exporter import PiiPolicy, span_to_record

    names = _readme_dropped_semconv_names()
    assert "messaging.rabbitmq.destination.routing_key" in names
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    attributes = dict.fromkeys(names, "orders-7")
    with provider.get_tracer("trial").start_as_current_span(
        "publish", kind=SpanKind.PRODUCER, attributes={"messaging.system": "rabbitmq", **attributes}
    ):
        pass
    (span,) = finished.get_finished_spans()
    dropped, count = span_to_record(span)
    assert not set(names) & set(dropped.metadata)
    assert count == len(names)
    kept, count = span_to_record(span, PiiPolicy(allowed_keys=names))
    assert {name: kept.metadata[name] for name in names} == attributes
    assert count == 0


class TestVersion:
    def test_the_package_says_its_version_as_the_command_line_does(self) -> None:
        """``otel_json_exporter.__version__``, which a user checks first, was missing."""
        from importlib import metadata

        import otel_json_exporter

        installed = metadata.version("otel-json-exporter")
        assert otel_json_exporter.__version__ == installed
        assert "__version__" in dir(otel_json_exporter)
        shown = subprocess.run(
            [sys.executable, "-m", "otel_json_exporter", "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert shown.stdout.split()[-1] == installed
