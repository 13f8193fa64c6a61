"""README's claims about the package's layout and public names, held to the code.

A review of README found the module table missing a module and the "no OpenTelemetry
below mapping.py" claim untrue (the writer process imported the SDK through the
package's ``__init__``); these keep both true.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import otel_json_exporter

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_module_table_names_every_module() -> None:
    development = README.split("## Development", 1)[1]
    named = set(re.findall(r"`(\w+\.py)`", development))
    modules = {path.name for path in (ROOT / "otel_json_exporter").glob("*.py")}
    assert modules - {"__init__.py"} <= named


def test_every_public_name_is_in_the_readme() -> None:
    missing = [name for name in otel_json_exporter.__all__ if not re.search(rf"\b{name}\b", README)]
    assert missing == []


def test_every_public_name_resolves() -> None:
    for name in otel_json_exporter.__all__:
        assert getattr(otel_json_exporter, name) is not None
    assert set(otel_json_exporter.__all__) <= set(dir(otel_json_exporter))


def _imported_by(statement: str) -> list[str]:
    """The top-level packages a fresh, isolated interpreter has imported after ``statement``."""
    code = f"{statement}; import sys; print(sorted({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return eval(result.stdout)  # type: ignore[no-any-return]  # a list of names we printed


def test_the_writer_process_the_command_line_and_the_manager_import_no_opentelemetry() -> None:
    for statement in (
        "import otel_json_exporter._process_writer",  # what the writer process runs
        "import otel_json_exporter.cli",
        "from otel_json_exporter import MetricsManager",  # metrics without tracing
    ):
        assert "opentelemetry" not in _imported_by(statement), statement


def test_the_package_still_gives_every_name_at_once() -> None:
    assert "opentelemetry" in _imported_by("from otel_json_exporter import *")
