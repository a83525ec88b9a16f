"""Wording shared by messages across the subpackages.

Not data generation: a shared utility, kept here because imports flow one way (infer
and train use models and data_gen; those two import neither), so data_gen is where
train, infer and data_gen itself can all reach it."""

from __future__ import annotations

from collections.abc import Sequence


def first_few(items: Sequence[str], k: int = 3, sep: str = ", ") -> str:
    """The first ``k`` items joined by ``sep``, then how many more there are.

    Long lists of problems are cut so a message stays readable, but never silently:

    >>> first_few(["a", "b", "c", "d", "e"])
    'a, b, c, and 2 more'
    >>> first_few(["x: bad", "y: worse"], sep="; ")
    'x: bad; y: worse'
    """
    items = [str(s) for s in items]
    more = f"{sep}and {len(items) - k} more" if len(items) > k else ""
    return sep.join(items[:k]) + more
