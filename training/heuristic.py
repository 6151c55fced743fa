"""The hand-rule baseline: what teams write before they have a learned router.

In the spirit of the seed design's static rules: code or maths or an explicit request for
reasoning goes to the strongest (most expensive) model, a short simple question to the cheapest,
everything else to the middle one. "Strong" and "cheap" come from catalog prices, as a rule
author would pick them. `promptroute eval` reports it as `heuristic`; the learned router must
beat it at equal cost.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from features.text import Prompt
from models.catalog import Catalog

__all__ = ["HeuristicRouter", "heuristic_tier"]

_SCAN = 16384
_CODE = re.compile(
    r"```|\bdef \w+\(|\bclass \w+[:(]|\bimport \w+|#include\b|\bfunction\s*\w*\(|\bpublic static\b"
    r"|\bSELECT\b.+\bFROM\b|\bwrite a (?:python |java |c\+\+ |javascript )?(?:function|program|script)\b",
    re.IGNORECASE,
)
_MATH = re.compile(
    r"\\frac|\\int|\$[^$\n]{1,80}\$|\b\d+\s*[-+*/^]\s*\d+\b|\b(?:solve|equation|integral|derivative|"
    r"probability|prove|how many|how much)\b",
    re.IGNORECASE,
)
_REASONING = re.compile(
    r"\b(?:step by step|explain in detail|analy[sz]e|compare|derive|justify|reason)\b",
    re.IGNORECASE,
)
_SIMPLE = re.compile(
    r"^\s*(?:what is|what's|who is|who was|when did|where is|define|name)\b", re.IGNORECASE
)
_SHORT_CHARS = 300


def heuristic_tier(prompt: Prompt) -> str:
    """'strong', 'cheap' or 'mid' for one prompt, by the hand rules above."""
    text = prompt.last_user[:_SCAN]
    if _CODE.search(text) or _MATH.search(text) or _REASONING.search(text):
        return "strong"
    if len(text) <= _SHORT_CHARS and _SIMPLE.search(text):
        return "cheap"
    return "mid"


class HeuristicRouter:
    """Maps the tier of a prompt onto the models available for it, by catalog price."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def tiers(self, models: Sequence[str]) -> dict[str, str]:
        by_price = sorted(
            models,
            key=lambda m: (
                self.catalog[m].input_price_per_1m + self.catalog[m].output_price_per_1m,
                m,
            ),
        )
        return {
            "cheap": by_price[0],
            "mid": by_price[(len(by_price) - 1) // 2],
            "strong": by_price[-1],
        }

    def choose(self, prompt: Prompt, models: Sequence[str]) -> str:
        return self.tiers(models)[heuristic_tier(prompt)]
