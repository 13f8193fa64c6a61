"""The package on the Python versions it supports (3.10 and later), beyond CI's 3.11.

Each test ran on 3.10.13, 3.11.7, 3.12.1 and 3.13.0, and failed on the version its
docstring names before the fix; none is skipped on any version.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from otel_json_exporter import MetricsManager
from otel_json_exporter._marks import NEWER_WORD_RANGES, UNICODE_VERSION
from otel_json_exporter.cli import main
from otel_json_exporter.pii import REDACTED, contains_pii_text, mask_text
from tests.conftest import load_records


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


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def test_the_newer_word_characters_are_unicodes() -> None:
    """Each is a word character here, or not yet assigned (an older Unicode); all are,
    from the table's version on; none was in Unicode 13.0 (Python 3.10's)."""
    codes = [code for first, last in NEWER_WORD_RANGES for code in range(first, last + 1)]
    assert codes == sorted(set(codes))
    assert all(chr(code).isalnum() or unicodedata.category(chr(code)) == "Cn" for code in codes)
    if _version(unicodedata.unidata_version) >= _version(UNICODE_VERSION):
        assert all(chr(code).isalnum() for code in codes)
    if unicodedata.unidata_version == "13.0.0":
        assert all(unicodedata.category(chr(code)) == "Cn" for code in codes)


# Letters of Unicode 14.0 (Python 3.11), 15.0 (3.12) and 15.1 (3.13): a CJK ideograph of
# the main block, an Arabic letter for African languages, a Nag Mundari letter, CJK
# Extensions H and I.
NEWER_LETTERS = ["\u9fff", "\u0870", "\U0001e4d0", "\U00031350", "\U0002ebf0"]


@pytest.mark.parametrize("letter", NEWER_LETTERS, ids=lambda letter: f"U+{ord(letter):04X}")
@pytest.mark.parametrize("where", ["inside", "last", "first", "domain"])
def test_an_address_with_a_letter_of_a_newer_unicode_is_masked_whole(
    letter: str, where: str
) -> None:
    """Python 3.10 to 3.12: a letter that the running Python's Unicode had not assigned
    yet is no ``\\w`` there. Inside a local part, what came before it was left unmasked;
    last before the "@", the address was not found at all (``contains_pii_text`` False,
    the text written as it was). U+9FFF on 3.10; U+2EBF0 (CJK Extension I) on 3.12."""
    address = {
        "inside": f"li{letter}na@example.com",
        "last": f"li{letter}@example.com",
        "first": f"{letter}na@example.com",
        "domain": f"lina@ex{letter}ample.com",
    }[where]
    # The texts are compared, never shown: a failure says only how much is left.
    found = contains_pii_text(address)
    assert found, "the address was not found"
    masked, count = mask_text(f"send failed for {address}; retry")
    left = len(masked) - len(f"send failed for {REDACTED}; retry")
    whole = masked == f"send failed for {REDACTED}; retry"
    assert whole, f"{left} characters of the address left unmasked"
    assert count == 1


async def test_a_failed_operations_message_is_written_without_any_of_such_an_address(
    tmp_path: Path,
) -> None:
    """The same through the manager: the record's error message on disk."""
    manager = MetricsManager(tmp_path / "m", flush_interval_seconds=60)
    await manager.start()
    for index, letter in enumerate(NEWER_LETTERS):
        await manager.record_operation(
            "job",
            f"send {index}",
            1.0,
            success=False,
            error_message=f"no mailbox li{letter}@example.com",
        )
    await manager.stop()
    messages = [record.error_message for record in load_records(tmp_path / "m")]
    masked = [message == f"no mailbox {REDACTED}" for message in messages]
    assert masked == [True] * len(NEWER_LETTERS)
    assert manager.stats().pii_redacted == len(NEWER_LETTERS)
