"""Invisible characters in what the command line prints, run as real subprocesses.

The table, ``validate``'s lines and ``summarize``'s warnings showed C0 and C1 controls,
DEL and the bidirectional controls escaped, but printed every other character that
shows nothing as it was: zero-width spaces and joiners, the soft hyphen, tag
characters, variation selectors, the Hangul fillers, the spaces that are not U+0020.
Two names that differ only by one printed alike, and a payload in tag characters did
not show at all. Each is now written as an escape (``\\u200b``, ``\\U000e0041``);
``--json`` keeps the exact text (JSON escapes it its own way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from otel_json_exporter.pii import escape_controls
from otel_json_exporter.records import OperationRecord
from otel_json_exporter.writer import BatchWriter

MOMENT = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)

# Characters that print as nothing, or as a blank no one can tell from a space, with
# the escape each is shown as.
INVISIBLE = {
    "\u200b": "\\u200b",  # zero width space
    "\u200c": "\\u200c",  # zero width non-joiner
    "\u200d": "\\u200d",  # zero width joiner
    "\u2060": "\\u2060",  # word joiner
    "\ufeff": "\\ufeff",  # zero width no-break space (byte order mark)
    "\u00ad": "\\xad",  # soft hyphen
    "\u180e": "\\u180e",  # Mongolian vowel separator
    "\u2061": "\\u2061",  # function application
    "\u2064": "\\u2064",  # invisible plus
    "\u206a": "\\u206a",  # inhibit symmetric swapping
    "\u206f": "\\u206f",  # nominal digit shapes
    "\U000e0001": "\\U000e0001",  # language tag
    "\U000e0041": "\\U000e0041",  # tag latin capital letter a
    "\U000e007f": "\\U000e007f",  # cancel tag
    "\ufe00": "\\ufe00",  # variation selector-1
    "\ufe0f": "\\ufe0f",  # variation selector-16
    "\U000e0100": "\\U000e0100",  # variation selector-17
    "\U000e01ef": "\\U000e01ef",  # variation selector-256
    "\u034f": "\\u034f",  # combining grapheme joiner
    "\u115f": "\\u115f",  # Hangul choseong filler
    "\u1160": "\\u1160",  # Hangul jungseong filler
    "\u3164": "\\u3164",  # Hangul filler
    "\uffa0": "\\uffa0",  # halfwidth Hangul filler
    "\u2800": "\\u2800",  # Braille pattern blank
    "\u00a0": "\\xa0",  # no-break space
    "\u2007": "\\u2007",  # figure space
    "\u202f": "\\u202f",  # narrow no-break space
    "\u3000": "\\u3000",  # ideographic space
    "\ue000": "\\ue000",  # private use
    "\U000f0000": "\\U000f0000",  # supplementary private use
    "\ufff9": "\\ufff9",  # interlinear annotation anchor
}


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "otel_json_exporter", *map(str, args)],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        timeout=60,
        check=False,
    )


def record(name: str, kind: str = "api_request") -> OperationRecord:
    return OperationRecord(
        operation_type=kind,
        operation_name=name,
        duration_ms=12.5,
        success=True,
        timestamp=MOMENT,
    )


def write(directory: Path, records: list[OperationRecord], second: int = 0) -> Path:
    written = BatchWriter(directory).write(records, now=MOMENT + timedelta(seconds=second))
    assert written.path is not None
    return written.path


def table_rows(stdout: str) -> list[str]:
    """The group rows of the table: between the header and the rule."""
    lines = stdout.splitlines()
    rule = next(index for index, line in enumerate(lines) if set(line) == {"-"})
    return lines[1:rule]


def assert_nothing_invisible(text: str) -> None:
    for character in INVISIBLE:
        assert character not in text, f"U+{ord(character):04X} printed as it is"


# -- the table -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("character", "escape"), INVISIBLE.items(), ids=[f"U+{ord(c):04X}" for c in INVISIBLE]
)
def test_a_name_that_differs_by_an_invisible_character_prints_differently(
    tmp_path: Path, character: str, escape: str
) -> None:
    write(tmp_path, [record("GET /api/users"), record(f"GET /api/{character}users")])
    result = run_cli("summarize", tmp_path)
    assert result.returncode == 0, result.stderr
    assert_nothing_invisible(result.stdout)
    rows = table_rows(result.stdout)
    assert len(rows) == 2
    names = sorted(row.split("  ")[1].strip() for row in [rows[0], rows[1]])
    assert names == sorted(["GET /api/users", f"GET /api/{escape}users"])
    # The type column too, grouped by type alone.
    write(tmp_path, [record("x", kind=f"api{character}request")], second=1)
    by_type = run_cli("summarize", tmp_path, "--by", "type")
    assert by_type.returncode == 0, by_type.stderr
    assert_nothing_invisible(by_type.stdout)
    assert f"api{escape}request" in by_type.stdout


def test_a_payload_in_tag_characters_shows(tmp_path: Path) -> None:
    """Tag characters are an invisible copy of ASCII: a name can carry a whole hidden
    sentence that a terminal does not show."""
    hidden = "".join(chr(0xE0000 + ord(letter)) for letter in "run rm -rf")
    write(tmp_path, [record(f"GET /health{hidden}")])
    result = run_cli("summarize", tmp_path)
    assert result.returncode == 0, result.stderr
    (row,) = table_rows(result.stdout)
    assert not any(0xE0000 <= ord(character) <= 0xE007F for character in result.stdout)
    assert "GET /health\\U000e0072\\U000e0075\\U000e006e..." in row


def test_a_long_name_is_never_cut_inside_an_escape(tmp_path: Path) -> None:
    name = "GET /" + "\U000e0041" * 30
    write(tmp_path, [record(name)])
    result = run_cli("summarize", tmp_path, "--by", "name")
    assert result.returncode == 0, result.stderr
    (row,) = table_rows(result.stdout)
    cell = row.split("  ")[0]
    # 48 characters at most: "GET /", four whole escapes of ten, "...".
    assert cell == "GET /" + "\\U000e0041" * 4 + "..."


def test_ordinary_text_in_any_script_is_shown_as_it_is(tmp_path: Path) -> None:
    names = ["GET /café/naïve", "SELECT 東京の店舗", "POST /заказы", "GET /😀/ünïcode"]
    names.append("e\u0301t\u00e9")  # a combining accent is a mark: shown
    write(tmp_path, [record(name) for name in names])
    result = run_cli("summarize", tmp_path)
    assert result.returncode == 0, result.stderr
    for name in names:
        assert name in result.stdout
    assert "\\" not in result.stdout


def test_an_emoji_sequence_shows_its_joiners_and_selectors_escaped(tmp_path: Path) -> None:
    """A family emoji (three emoji joined by U+200D) and a red heart (U+2764 with
    VS16) print with the joiner and the selector escaped: ugly, but exact (the joiner
    alone between two emoji hides nothing, the same joiner elsewhere does)."""
    family = "react \U0001f468\u200d\U0001f469\u200d\U0001f467"
    write(tmp_path, [record(family), record("\u2764\ufe0f")])
    result = run_cli("summarize", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "react \U0001f468\\u200d\U0001f469\\u200d\U0001f467" in result.stdout
    assert "\u2764\\ufe0f" in result.stdout


def test_json_keeps_the_exact_names(tmp_path: Path) -> None:
    names = [f"GET /{character}x" for character in INVISIBLE] + ["\u2764\ufe0f", "GET /x"]
    write(tmp_path, [record(name) for name in names])
    result = run_cli("summarize", tmp_path, "--by", "name", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()  # JSON's own escapes, no character a terminal acts on
    shown = [group["operation_name"] for group in json.loads(result.stdout)["groups"]]
    assert sorted(shown) == sorted(names)


# -- PII: escaping never shows what the mask hid ---------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "bob\u200b@example.com",
        "bo\u00adb@exam\u200dple.com",
        "bob\U000e0020@example.com",
        "bob@exa\ufe0fmple.com",
        "b\u3164ob@example.com",
        "bob\u2060.smith@example.com",
    ],
)
def test_an_address_with_invisible_characters_is_masked_in_the_table_and_the_reasons(
    tmp_path: Path, address: str
) -> None:
    write(tmp_path, [record(f"mail {address} now")])
    bad = write(tmp_path, [record("GET /x")], second=1)
    document = json.loads(bad.read_bytes())
    document["records"][0][f"note {address}"] = 1
    document[address] = 2
    bad.write_text(json.dumps(document), encoding="utf-8")
    table = run_cli("summarize", tmp_path)
    validate = run_cli("validate", tmp_path)
    as_json = run_cli("summarize", tmp_path, "--json")
    assert (table.returncode, validate.returncode, as_json.returncode) == (1, 1, 1)
    for output in (table.stdout, table.stderr, validate.stdout, as_json.stdout):
        for part in ("bob", "b\\u3164ob", "example", "exa\\ufe0fmple"):
            assert part not in output
    # Masked in place, or the whole name when the address is found only once the
    # invisible characters are left out (the positions do not map back).
    assert "mail [REDACTED] now" in table.stdout or "  [REDACTED]  " in table.stdout


# -- validate and summarize's warnings ---------------------------------------------


def test_validate_and_the_warnings_show_a_keys_invisible_characters_escaped(
    tmp_path: Path,
) -> None:
    bad = write(tmp_path, [record("GET /x")])
    document = json.loads(bad.read_bytes())
    document["records"][0]["dura\u200btion_ms"] = 1
    document["\U000e0068\U000e0069"] = 2
    bad.write_text(json.dumps(document), encoding="utf-8")
    validate = run_cli("validate", tmp_path)
    assert validate.returncode == 1
    assert_nothing_invisible(validate.stdout)
    assert "records.0.dura\\u200btion_ms: Extra inputs are not permitted" in validate.stdout
    assert "\\U000e0068\\U000e0069: Extra inputs are not permitted" in validate.stdout
    summary = run_cli("summarize", tmp_path)
    assert summary.returncode == 1
    assert_nothing_invisible(summary.stderr)
    assert "records.0.dura\\u200btion_ms" in summary.stderr


def test_file_names_are_shown_escaped_everywhere(tmp_path: Path) -> None:
    """The batch names are ASCII, but the directory is whatever it is called (a loop
    over directories other users made): validate, summarize's warnings and cleanup
    print it escaped, and --json has it whole."""
    directory = tmp_path / "store\u200b\u202e\u3164"
    shown = str(tmp_path / "store\\u200b\\u202e\\u3164")
    directory.mkdir()
    bad = write(directory, [record("GET /x")], second=-(10**8))  # three years before
    bad.write_text("{", encoding="utf-8")
    validate = run_cli("validate", directory)
    summary = run_cli("summarize", directory)
    as_json = run_cli("summarize", directory, "--json")
    dry_run = run_cli("cleanup", directory, "--older-than", "1s", "--dry-run")
    cleanup = run_cli("cleanup", directory, "--older-than", "1s")
    missing = run_cli("validate", directory / "gone\u200b")
    for result in (validate, summary, dry_run, cleanup, missing):
        assert "\u200b" not in result.stdout + result.stderr
        assert "\u202e" not in result.stdout + result.stderr
        assert "\u3164" not in result.stdout + result.stderr
    assert validate.stdout.startswith(f"{shown}/{bad.name}: Invalid JSON")
    assert f"checked in {shown}: 0 valid" in validate.stdout
    assert f"skipped {shown}/{bad.name}: Invalid JSON" in summary.stderr
    assert json.loads(as_json.stdout)["invalid_files"][0]["file"] == str(bad)
    assert dry_run.stdout.startswith(f"would delete {shown}/{bad.name}\n")
    assert cleanup.stdout.startswith(f"deleted {shown}/{bad.name}\n")
    assert missing.returncode == 2
    assert f"{shown}/gone\\u200b does not exist" in missing.stderr


# -- the function itself -----------------------------------------------------------


def test_escape_controls_writes_each_escape_as_repr_would() -> None:
    for code in [*range(0x20), *range(0x7F, 0xA1), 0xAD, 0x2028, 0x202E, 0xD800, 0xE000]:
        character = chr(code)
        assert escape_controls(f"a{character}b") == f"a{repr(character)[1:-1]}b"
    for character, escape in INVISIBLE.items():
        assert escape_controls(f"a{character}b") == f"a{escape}b"
    text = "plain ASCII, café, 東京, 😀, \\n as typed"
    assert escape_controls(text) == text
