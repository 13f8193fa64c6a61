"""Hypothesis helpers shared by the differential tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def mostly(common: st.SearchStrategy[Any], *others: st.SearchStrategy[Any], weight: int = 3) -> Any:
    """``common`` about ``weight`` times as often as all ``others`` together.

    Not ``one_of(*[common] * n, ...)``: ``one_of`` drops repeated strategies, so
    repeating one weights nothing.
    """
    branches = (common, *others)
    choices = [0] * (weight * len(others)) + list(range(1, len(branches)))
    return st.sampled_from(choices).flatmap(branches.__getitem__)
