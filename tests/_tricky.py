"""Inputs that try to fool the checks: shared by the manager and exporter tests."""

from __future__ import annotations


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
