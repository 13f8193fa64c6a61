"""A security trial on the disk and operator side: what others can do to the files.

Hostile batch files read by the command line (control characters in their keys, a
name swapped for a symbolic link, a FIFO or a device after the directory was
listed), a temporary file swapped for a symbolic link before it is linked, symbolic
links at temporary names, and the modes files and directories get. Everything runs
for real; the swaps another user would make are made at the ``os`` call they race with.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from otel_json_exporter.records import OperationRecord
from otel_json_exporter.writer import BatchWriter, remove_stale_temp_files

ADDRESS = "mallory.secret@example.org"  # must never be printed
# C0 and C1 controls a terminal acts on: escape (CSI, OSC), bell, carriage return,
# backspace, and the one-byte CSI of C1; a bidirectional override and isolate, which make
# the terminal show text in another order, and the line separator.
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\x08", "\x9b", "\x00", "\u202e", "\u2066", "\u2028")
HOSTILE_KEY = (
    f"\x1b]0;owned\x07\x1b[2J\r\x08\x9b31m\x00\u202e\u2066\u2028\nforged.json: all good {ADDRESS}"
)


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_json_exporter", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def record(name: str = "GET /api/users") -> OperationRecord:
    return OperationRecord(
        operation_type="api_request",
        operation_name=name,
        duration_ms=12.5,
        success=True,
        timestamp=datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc),
    )


def write_batch(directory: Path, moment: datetime) -> Path:
    written = BatchWriter(directory).write([record()], now=moment)
    assert written.path is not None
    return written.path


# -- control characters in what the command line prints ------------------------


def hostile_directory(directory: Path) -> list[Path]:
    """Two batch files made invalid by a key holding escape sequences and a newline:
    one in a record, one at the top level."""
    in_record = write_batch(directory, datetime(2026, 3, 1, 8, 0, 1, tzinfo=timezone.utc))
    document = json.loads(in_record.read_bytes())
    document["records"][0][HOSTILE_KEY] = 1
    in_record.write_text(json.dumps(document), encoding="utf-8")
    top_level = write_batch(directory, datetime(2026, 3, 1, 8, 0, 2, tzinfo=timezone.utc))
    document = json.loads(top_level.read_bytes())
    document[HOSTILE_KEY] = 1
    top_level.write_text(json.dumps(document), encoding="utf-8")
    return [in_record, top_level]


def assert_plain_lines(output: str, expected_lines: int) -> None:
    for control in RAW_CONTROLS:
        assert control not in output, repr(control)
    assert ADDRESS not in output
    # A newline in a key must not start a line of its own (a forged report line).
    assert len(output.splitlines()) == expected_lines, output


def test_validate_prints_no_control_character_of_a_hostile_key(tmp_path: Path) -> None:
    bad = hostile_directory(tmp_path)
    result = run_cli("validate", tmp_path)
    assert result.returncode == 1
    assert_plain_lines(result.stdout, expected_lines=3)  # one per bad file, then the count
    for path, line in zip(bad, result.stdout.splitlines(), strict=False):
        assert line.startswith(f"{path}: ")
        assert "\\x1b]0;owned\\x07" in line  # shown escaped: the place is still named
        assert "Extra inputs are not permitted" in line


def test_summarize_warnings_print_no_control_character_of_a_hostile_key(tmp_path: Path) -> None:
    hostile_directory(tmp_path)
    write_batch(tmp_path, datetime(2026, 3, 1, 8, 0, 3, tzinfo=timezone.utc))
    result = run_cli("summarize", tmp_path)
    assert result.returncode == 1
    assert_plain_lines(result.stderr, expected_lines=2)  # one warning per bad file
    assert "GET /api/users" in result.stdout
    as_json = run_cli("summarize", tmp_path, "--json")
    reasons = [bad["reason"] for bad in json.loads(as_json.stdout)["invalid_files"]]
    assert len(reasons) == 2
    for reason in reasons:
        assert not any(control in reason for control in RAW_CONTROLS)
        assert "\n" not in reason
        assert ADDRESS not in reason


def test_summarize_shows_a_name_with_a_bidirectional_override_escaped(tmp_path: Path) -> None:
    """A name holding U+202E read backwards in the table ("Trojan Source"): the
    override reached the terminal, as did an isolate and the line separator."""
    written = BatchWriter(tmp_path).write(
        [record("invoice\u202efdp.exe"), record("GET \u2066/x\u2069 \u2028next")],
        now=datetime(2026, 3, 1, 8, 0, 1, tzinfo=timezone.utc),
    )
    assert written.path is not None
    table = run_cli("summarize", tmp_path)
    assert table.returncode == 0, table.stderr
    assert not any(control in table.stdout for control in RAW_CONTROLS)
    assert not any(mark in table.stdout for mark in ("\u2069", "\u2029", "\u202a"))
    assert "invoice\\u202efdp.exe" in table.stdout
    assert "GET \\u2066/x\\u2069 \\u2028next" in table.stdout


# -- a batch name swapped after the listing -------------------------------------

# Runs the command with os.scandir taken at its word: the listing is made, then
# another user swaps the named batch files (as they may, in a shared directory)
# before they are read. The address space is capped so that reading a device
# without end fails quickly instead of taking the machine's memory.
_SWAP_AFTER_LISTING = """
import os, resource, sys
from otel_json_exporter.cli import main

resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
directory, swaps = sys.argv[1], [pair.split("=", 1) for pair in sys.argv[2:]]
real_scandir = os.scandir
swapped = False


class Listing:
    def __init__(self, path):
        global swapped
        with real_scandir(path) as entries:
            self.entries = list(entries)  # each entry's type is the listing's
        if not swapped:
            swapped = True
            for name, target in swaps:
                spare = os.path.join(directory, ".spare")
                if target == "FIFO":
                    os.mkfifo(spare)
                else:
                    os.symlink(target, spare)
                os.replace(spare, os.path.join(directory, name))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __iter__(self):
        return iter(self.entries)


os.scandir = Listing
sys.exit(main(["validate", directory]))
"""


def test_validate_reads_no_symlink_fifo_or_device_swapped_in_after_the_listing(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "shared"
    storage.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moments = [datetime(2026, 3, 1, 8, 0, second, tzinfo=timezone.utc) for second in (1, 2, 3)]
    names = [write_batch(storage, moment).name for moment in moments]
    # A valid batch of the same name, in a directory the command was not asked about.
    outside = write_batch(elsewhere, moments[2])
    assert outside.name == names[2]
    swaps = [f"{names[0]}=/dev/zero", f"{names[1]}=FIFO", f"{names[2]}={outside}"]
    result = subprocess.run(
        [sys.executable, "-c", _SWAP_AFTER_LISTING, str(storage), *swaps],
        capture_output=True,
        text=True,
        timeout=120,  # a FIFO opened for reading would wait for a writer for ever
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 4, result.stdout
    for name, line in zip(names, lines, strict=False):
        assert line.startswith(f"{storage / name}: "), line
        assert "not a regular file" in line
    assert lines[-1].startswith("3 batch files checked in")
    assert "0 valid (0 records), 3 invalid" in lines[-1]


# -- a temporary file swapped for a symbolic link -------------------------------


def test_writer_never_hard_links_a_file_its_temporary_file_was_swapped_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a directory another user can write (one they created first, in /tmp), the
    temporary file may be replaced by a symbolic link between its fsync and its link:
    the writer must not then hard-link the file it points to into the directory.
    Linux's link() does not follow a symbolic link (linkat with AT_SYMLINK_FOLLOW
    would); this pins it."""
    storage = tmp_path / "shared"
    storage.mkdir()
    victim = tmp_path / "private.txt"
    victim.write_text("someone else's file\n", encoding="utf-8")
    real_link = os.link

    def swap_then_link(src: str | Path, dst: str | Path, **kwargs: bool) -> None:
        os.unlink(src)
        os.symlink(victim, src)
        real_link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", swap_then_link)
    BatchWriter(storage).write([record()])
    monkeypatch.undo()
    assert victim.stat().st_nlink == 1
    victim_inode = victim.stat().st_ino
    assert all(os.lstat(path).st_ino != victim_inode for path in storage.iterdir())


def test_removing_stale_temporary_files_never_reaches_past_a_symbolic_link(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "shared"
    storage.mkdir()
    victim = tmp_path / "private.txt"
    victim.write_text("someone else's file\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("kept\n", encoding="utf-8")
    to_file = storage / ".metrics_1_ab12.tmp"  # named before spaces were: judged by age
    to_file.symlink_to(victim)
    to_directory = storage / ".metrics_2_ab34.tmp"
    to_directory.symlink_to(elsewhere)
    a_directory = storage / ".metrics_3_ab56.tmp"
    a_directory.mkdir()
    for path in (to_file, to_directory, a_directory):
        os.utime(path, (0, 0), follow_symlinks=False)  # long stale
    removed = remove_stale_temp_files(storage)
    assert sorted(removed) == sorted([to_file, to_directory])
    assert victim.read_text(encoding="utf-8") == "someone else's file\n"
    assert (elsewhere / "keep").read_text(encoding="utf-8") == "kept\n"
    assert a_directory.is_dir()


# -- modes -------------------------------------------------------------------------

_WRITE_WITH_UMASK = """
import asyncio, os, sys
from otel_json_exporter import MetricsManager

os.umask(int(sys.argv[2], 8))


async def main():
    manager = MetricsManager(storage_path=sys.argv[1], flush_interval_seconds=60)
    await manager.start()
    await manager.record_operation(
        operation_type="api_request", operation_name="GET /x", duration_ms=1.0, success=True
    )
    await manager.stop()


asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("umask", "directory_mode", "file_mode"),
    [("022", 0o755, 0o644), ("027", 0o750, 0o640), ("077", 0o700, 0o600)],
)
def test_modes_follow_the_umask_as_documented(
    tmp_path: Path, umask: str, directory_mode: int, file_mode: int
) -> None:
    storage = tmp_path / "made" / "metrics"
    subprocess.run(
        [sys.executable, "-c", _WRITE_WITH_UMASK, str(storage), umask], check=True, timeout=60
    )
    assert stat.S_IMODE(storage.stat().st_mode) == directory_mode
    assert stat.S_IMODE(storage.parent.stat().st_mode) == directory_mode
    (batch,) = storage.iterdir()
    assert stat.S_IMODE(batch.stat().st_mode) == file_mode
