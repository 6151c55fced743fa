"""The seed design's `ContentRouter`, as a benchmark baseline for the decision's speed.

Static regex rules on the prompt text, written as issue 13 describes them:

- code when the code patterns (```` ```\\w*\\n ````, ``def \\w+\\(``, ``function \\w+\\(``,
  ``class \\w+``, ``import \\w+``) match at least twice in all;
- else math when the math patterns (arithmetic between numbers, equation words, "integral",
  LaTeX) match at least twice in all;
- else simple when the prompt has at most 500 characters and none of "explain in detail",
  "analyze", "compare and contrast", "step by step", "comprehensive" (any case);
- else complex.

Each category names one model, fixed when the router is built, so a decision is the rules and
one dict lookup. Matches are counted with `finditer` and counting stops at the second: the
category is the same as counting them all, and the baseline is as fast as these rules can be
written in Python, so the learned router is not flattered by a slow rival.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from features.text import Prompt

__all__ = ["CATEGORIES", "ContentRouter", "content_category"]

CATEGORIES = ("code", "math", "simple", "complex")
_MIN_MATCHES = 2
_SIMPLE_MAX_CHARS = 500

_CODE_PATTERNS = tuple(
    re.compile(p)
    for p in (r"```\w*\n", r"def \w+\(", r"function \w+\(", r"class \w+", r"import \w+")
)
# Read on the lower-cased text, so "Solve" counts as "solve" without (?i), which would keep
# `re` from skipping ahead to a pattern's first literal.
_MATH_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"\d\s*[-+*/^=×÷]\s*\d",  # arithmetic
        r"\b(?:solve|equations?|calculate|derivative|formula|theorem)\b",  # equation words
        r"integral",
        r"∫",
        r"\\(?:frac|sqrt|int|sum|begin)",  # LaTeX commands and inline maths
        r"\$[^$\n]+\$",
    )
)
_COMPLEX_MARKERS = (
    "explain in detail",
    "analyze",
    "compare and contrast",
    "step by step",
    "comprehensive",
)


def _at_least(patterns: Iterable[re.Pattern[str]], text: str, wanted: int) -> bool:
    """Whether the patterns match at least `wanted` times in all (each pattern scanned alone)."""
    found = 0
    for pattern in patterns:
        for _ in pattern.finditer(text):
            found += 1
            if found >= wanted:
                return True
    return False


def content_category(text: str) -> str:
    """'code', 'math', 'simple' or 'complex' for one prompt text, by the rules above.

    >>> content_category("import os\\nimport sys")
    'code'
    >>> content_category("What is 2 + 2 and 3 * 4?")
    'math'
    >>> content_category("What is the capital of France?")
    'simple'
    """
    if _at_least(_CODE_PATTERNS, text, _MIN_MATCHES):
        return "code"
    lower = text.lower()
    if _at_least(_MATH_PATTERNS, lower, _MIN_MATCHES):
        return "math"
    if len(text) <= _SIMPLE_MAX_CHARS:
        if not any(marker in lower for marker in _COMPLEX_MARKERS):
            return "simple"
    return "complex"


class ContentRouter:
    """Routes each category to the model named for it."""

    def __init__(self, models: Mapping[str, str]) -> None:
        missing = [c for c in CATEGORIES if c not in models]
        if missing:
            raise ValueError(f"models: no model for {missing}; categories: {list(CATEGORIES)}")
        self.models = dict(models)

    def choose(self, prompt: Prompt) -> str:
        return self.models[content_category(prompt.text)]
