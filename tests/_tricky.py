"""Inputs that try to fool the checks: shared by the manager and exporter tests."""

from __future__ import annotations

import enum


class Status500(enum.IntEnum):
    """An int enum: written as the number it holds."""

    BAD_GATEWAY = 502


class Region(str, enum.Enum):
    """A str enum: written as the text it holds."""

    CA = "ca-central-1"


def disguised(equal_to: str) -> type[str]:
    """A ``str`` subclass that hides its text from every check that asks it.

    ``in`` finds nothing, ``isascii()`` says yes, and it hashes and compares
    equal to ``equal_to``; only its text, which is what a batch file would hold,
    tells the truth.
    """

    class Disguised(str):
        def __contains__(self, part: object) -> bool:
            return False

        def isascii(self) -> bool:
            return True

        def __hash__(self) -> int:
            return hash(equal_to)

        def __eq__(self, other: object) -> bool:
            return other == equal_to

    return Disguised


class LyingInt(int, enum.Enum):
    """An int whose enum value is text: JSON encoders write the value, not the number."""

    def __new__(cls, number: int, text: str) -> LyingInt:
        member = int.__new__(cls, number)
        member._value_ = text
        return member

    OK = (200, "bob@example.com")

    def __repr__(self) -> str:  # the enum's own repr fails on a text value
        return f"<{type(self).__name__}.{self.name}>"


class LyingFloat(float, enum.Enum):
    """A float whose enum value is text, as :class:`LyingInt`."""

    def __new__(cls, number: float, text: str) -> LyingFloat:
        member = float.__new__(cls, number)
        member._value_ = text
        return member

    HALF = (0.5, "password=hunter2")
    NAN = (float("nan"), "password=hunter2 ann@example.com")

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}>"
