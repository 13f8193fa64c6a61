"""A manager started in a PID namespace of its own, as a second container sharing a volume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

needs_unshare = pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="needs unshare and root (a new PID namespace, as a second container has)",
)


def start_in_another_pid_namespace(directory: Path) -> None:
    """``start_sync()`` then ``stop_sync()`` on ``directory``, in a new PID namespace."""
    code = textwrap.dedent(
        f"""
        from otel_json_exporter import MetricsManager
        m = MetricsManager({str(directory)!r}); m.start_sync(); m.stop_sync()
        """
    )
    subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        check=True,
        timeout=60,
    )
