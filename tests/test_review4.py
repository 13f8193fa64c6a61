"""A review of ef15cbc (database errors' values): failing tests, by finding."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ._spans import export_spans, records_in
from .test_review3 import _direct, _disk_text, _span_error

# -- 1. Values the new patterns leave (partly) on disk --------------------------------------

LEAKS = {
    # MySQL 1366 with an apostrophe in the value: [^'\n]*+ stops at it, "Brien" stays.
    "mysql-incorrect-apostrophe": "(1366, \"Incorrect string value: 'Siobhan O'Brien' for "
    "column 'age' at row 1\")",
    # PostgreSQL does not escape '"' in the value: [^"\n]*+ stops at it.
    "pg-invalid-input-quote": 'invalid input syntax for type integer: "Siobhan "Shiv" O Brien"',
    # A value on two lines (an address column): [^\n]*? stops at the newline.
    "pg-failing-row-multiline": 'null value in column "email" of relation "people" violates '
    "not-null constraint\nDETAIL:  Failing row contains (4, 12 Main St\nSiobhan O Brien, null).",
    # A unique index on an expression (case-insensitive names): [^()\n]*+ refuses the
    # inner parentheses; the previous pattern ([^\n]*?) masked it.
    "pg-expression-index": 'duplicate key value violates unique constraint "people_lower_idx"\n'
    "DETAIL:  Key (lower(full_name::text))=(siobhan o brien) already exists.",
}


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_review4_row_values_never_reach_the_disk(tmp_path: Path, name: str) -> None:
    _direct(tmp_path / "m", LEAKS[name])
    assert "brien" not in _disk_text(tmp_path / "m").lower(), _disk_text(tmp_path / "m")


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_review4_row_values_never_reach_the_disk_from_spans(tmp_path: Path, name: str) -> None:
    (record,), _ = export_spans(tmp_path / "m", _span_error(LEAKS[name]), writer="thread")
    assert "brien" not in record["error_message"].lower(), record["error_message"]


# -- 2. Quadratic time: [\w ]++ runs over the next "invalid input ... for " ----------------


def test_review4_many_invalid_input_phrases_are_masked_in_linear_time(tmp_path: Path) -> None:
    """300,000 characters of 'invalid input value for ' took ~14 s (4x per doubling); this
    is four times as long, which quadratic time would take minutes over. A hang guard
    (the subprocess's timeout), not a timing."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        TEXT = "invalid input value for " * 50_000
        from otel_json_exporter import MetricsManager
        async def main():
            manager = MetricsManager(sys.argv[1]); await manager.start()
            await manager.record_operation("database_query", "q", 1.0, False, TEXT)
            await manager.stop()
        asyncio.run(main())
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert len(records_in(tmp_path / "m")) == 1


# -- 3. Idempotence: a value cut short (no closing mark) is counted again -------------------


@pytest.mark.parametrize(
    "text",
    [
        "DETAIL:  Key (email)=(jean.tremblay",
        "Failing row contains (4, Jean",
        "Duplicate entry 'Jean",
    ],
)
def test_review4_masking_twice_counts_nothing_the_second_time(text: str) -> None:
    from otel_json_exporter.pii import mask_database_values

    once, _ = mask_database_values(text)
    assert mask_database_values(once) == (once, 0)


# -- 4. Over-masking: a Key detail without a known ending takes the rest of the message -----


def test_review4_key_detail_with_another_ending_keeps_the_following_lines(tmp_path: Path) -> None:
    message = (
        'could not create unique index "people_email_key"\n'
        "DETAIL:  Key (email_hash)=(9f2c) is duplicated.\n"
        "HINT:  run scripts/dedupe_people.py before migration 0042"
    )
    _direct(tmp_path / "m", message)
    assert "dedupe_people.py" in _disk_text(tmp_path / "m"), _disk_text(tmp_path / "m")
