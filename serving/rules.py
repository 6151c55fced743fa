"""Static routing rules from the config, as one pipeline stage that runs before the classifier.

A rule either pins a model or narrows the candidate set; the first rule whose conditions all
hold wins. Everything that can be prepared (regexes, sets of allowed values) is prepared once in
`RuleSet.compile`, so matching a request does no parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.config import RuleConfig

__all__ = ["REGEX_WINDOW_CHARS", "RuleOutcome", "RuleSet"]

# `prompt_regex` only sees this many leading characters, so the work per rule is bounded by the
# pattern, not by the prompt length (a 400k-character prompt costs the same as a 16k one).
REGEX_WINDOW_CHARS = 16_384


@dataclass(frozen=True)
class RuleOutcome:
    """What a matching rule decided: a fixed `model`, or a `candidates` subset (never both)."""

    rule: str
    model: str | None
    candidates: tuple[str, ...] | None


@dataclass(frozen=True)
class _Rule:
    task_types: frozenset[str] | None
    metadata: tuple[tuple[str, frozenset[str]], ...] | None
    min_tokens: int | None
    max_tokens: int | None
    regex: re.Pattern[str] | None
    outcome: RuleOutcome

    def holds(
        self, text: str, task_type: str | None, metadata: Mapping[str, Any] | None, tokens: int
    ) -> bool:
        # Cheapest conditions first; the regex runs only when everything else already holds.
        if self.task_types is not None and task_type not in self.task_types:
            return False
        if self.min_tokens is not None and tokens < self.min_tokens:
            return False
        if self.max_tokens is not None and tokens > self.max_tokens:
            return False
        if self.metadata is not None:
            if metadata is None:
                return False
            for key, allowed in self.metadata:
                value = metadata.get(key)
                # Only real strings compare: a request's 1 or True never equals the config's "1".
                if not isinstance(value, str) or value not in allowed:
                    return False
        return self.regex is None or self.regex.search(text, 0, REGEX_WINDOW_CHARS) is not None


def _compile(rule: RuleConfig) -> _Rule:
    match = rule.match
    metadata = None
    if match.metadata is not None:
        metadata = tuple(
            (key, frozenset([value] if isinstance(value, str) else value))
            for key, value in match.metadata.items()
        )
    candidates = tuple(rule.candidates) if rule.candidates is not None else None
    return _Rule(
        task_types=frozenset(match.task_types) if match.task_types is not None else None,
        metadata=metadata,
        min_tokens=match.min_input_tokens,
        max_tokens=match.max_input_tokens,
        regex=re.compile(match.prompt_regex) if match.prompt_regex is not None else None,
        outcome=RuleOutcome(rule=rule.name, model=rule.model, candidates=candidates),
    )


class RuleSet:
    """The configured rules, in order, ready to match requests; build with `compile`.

    >>> from serving.config import RuleConfig
    >>> rule = RuleConfig(name="sql", match={"prompt_regex": r"(?i)\\bselect\\b"}, model="m")
    >>> RuleSet.compile([rule]).match(
    ...     text="SELECT 1", task_type=None, metadata=None, input_tokens=3
    ... ).model
    'm'
    """

    def __init__(self, rules: Sequence[_Rule] = ()) -> None:
        self._rules = tuple(rules)

    @classmethod
    def compile(cls, rules: Sequence[RuleConfig]) -> RuleSet:
        """Prepare `rules` (already validated by the config) for matching."""
        return cls([_compile(rule) for rule in rules])

    def match(
        self,
        *,
        text: str,
        task_type: str | None,
        metadata: Mapping[str, Any] | None,
        input_tokens: int,
    ) -> RuleOutcome | None:
        """The outcome of the first rule whose conditions all hold, or None.

        `metadata` keys named by a rule must be present with a string value equal to the rule's
        value (or one of its listed values). `prompt_regex` is searched (``re.search``, so
        unanchored; use inline flags such as ``(?i)``) over the first `REGEX_WINDOW_CHARS`
        characters of `text` only; ``$`` matches at the end of that window.
        """
        for rule in self._rules:
            if rule.holds(text, task_type, metadata, input_tokens):
                return rule.outcome
        return None

    def __len__(self) -> int:
        return len(self._rules)

    def __repr__(self) -> str:
        return f"RuleSet({[rule.outcome.rule for rule in self._rules]!r})"
