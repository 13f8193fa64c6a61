"""The package on the Python versions it supports (3.10 and later), beyond CI's 3.11.

Each test ran on 3.10.13, 3.11.7, 3.12.1 and 3.13.0, and failed on the version its
docstring names before the fix; none is skipped on any version.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otel_json_exporter.cli import main


@pytest.mark.parametrize(
    ("given", "since"),
    [
        # RFC 3339 with nanoseconds, as Go, kubectl --timestamps and collectors write it.
        ("2025-12-16T08:00:00.123456789Z", "2025-12-16T08:00:00.123456+00:00"),
        # .NET's round-trip format ("o"), seven digits, as PowerShell's Get-Date -Format o.
        ("2025-12-16T09:00:00.1234567+01:00", "2025-12-16T08:00:00.123456+00:00"),
        # date +%Y-%m-%dT%H:%M:%S%z, strftime's %z.
        ("2025-12-16T10:00:00+0200", "2025-12-16T08:00:00.000000+00:00"),
        ("2025-12-16T10:00:00.5+02", "2025-12-16T08:00:00.500000+00:00"),
        ("2025-12-16 08:00:00,25", "2025-12-16T08:00:00.250000+00:00"),
        # What fromisoformat read on every version before, read as it was.
        ("2025-12-16T08:00:00.123Z", "2025-12-16T08:00:00.123000+00:00"),
        ("2025-12-16T09:00+01:00", "2025-12-16T08:00:00.000000+00:00"),
        ("2025-12-16", "2025-12-16T00:00:00.000000+00:00"),
    ],
)
def test_since_takes_the_iso_times_other_tools_write_on_every_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str, since: str
) -> None:
    """Python 3.10: ``--since`` / ``--until`` went to ``datetime.fromisoformat``, which
    there reads only 3 or 6 fractional digits and offsets as +HH:MM; 3.11 reads any
    ISO-8601 time. So on 3.10 a timestamp copied from a Go program's or kubectl's log
    (nanoseconds), PowerShell's (seven digits) or ``date +%z`` (+0200) was "not an
    ISO-8601 time", exit 2; on 3.11 the same command worked."""
    assert main(["summarize", str(tmp_path), "--json", "--since", given]) == 0
    assert json.loads(capsys.readouterr().out)["since"] == since


@pytest.mark.parametrize(
    "given",
    ["2025-12-16T08:00:00+2", "2025-12-16T08:00:00+24:00", "2025-12-16T08:00:00.5.5", "noon"],
)
def test_times_that_are_not_iso_are_still_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["summarize", str(tmp_path), "--json", "--since", given])
    assert exited.value.code == 2
    assert "is not an ISO-8601 time" in capsys.readouterr().err
