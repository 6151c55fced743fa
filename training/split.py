"""The one deterministic train/test split, keyed on the prompt text.

A record is on the test side if ``int(sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100``
is below ``test_percent`` (20). Keying on the text rather than the id keeps identical prompts on
the same side, so a repeated question can never leak from train into test. For records built
from a ``prompt`` string, ``Prompt.text`` is that string exactly, so this is the rule the shared
data README states; records built from ``messages`` hash their joined text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import TypeVar

from features.text import Prompt
from training.records import Record

__all__ = ["SPLIT_SIDES", "is_test", "split_key", "split_records"]

SPLIT_SIDES = ("train", "test", "all")

_R = TypeVar("_R", Record, Prompt, str)


def split_key(record_or_prompt: Record | Prompt | str) -> str:
    """The text that decides the side: ``Record.prompt.text`` (a `Prompt` or a string as given)."""
    if isinstance(record_or_prompt, Record):
        return record_or_prompt.prompt.text
    if isinstance(record_or_prompt, Prompt):
        return record_or_prompt.text
    if isinstance(record_or_prompt, str):
        return record_or_prompt
    raise TypeError(f"expected a Record, Prompt or str, got {type(record_or_prompt).__name__}")


def _check_percent(test_percent: int) -> None:
    if isinstance(test_percent, bool) or not isinstance(test_percent, int):
        raise ValueError(f"test_percent must be an integer, got {test_percent!r}")
    if not 0 <= test_percent <= 100:
        raise ValueError(f"test_percent must be between 0 and 100, got {test_percent}")


def is_test(text: str, *, test_percent: int = 20) -> bool:
    """Whether `text` falls in the test bucket.

    >>> is_test("What is 2+2?"), is_test("test")
    (True, False)
    """
    _check_percent(test_percent)
    h = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
    return h % 100 < test_percent


def split_records(records: Iterable[_R], side: str, *, test_percent: int = 20) -> list[_R]:
    """The records on one side of the split, in their original order.

    Parameters
    ----------
    records : iterable of Record (or Prompt, or str)
    side : "train", "test" or "all"
    test_percent : share of hash buckets (0..100) that form the test side.
    """
    if side not in SPLIT_SIDES:
        raise ValueError(f"unknown split side {side!r}; valid: {', '.join(SPLIT_SIDES)}")
    _check_percent(test_percent)
    if side == "all":
        return list(records)
    want_test = side == "test"
    return [r for r in records if is_test(split_key(r), test_percent=test_percent) == want_test]
