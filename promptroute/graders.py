"""Graders for `promptroute label`: turn one prompt's answers into qualities in [0, 1].

Three kinds, chosen in the loop config (`promptroute.loopconfig`):

- `ReferenceGrader`: the input row carries a reference answer; ``exact`` (whitespace-trimmed,
  case-folded unless ``case_sensitive``), ``regex`` (the reference is a pattern searched in the
  answer) or ``numeric`` (the last number in the answer within ``tolerance`` of the reference);
- `CallableGrader`: ``package.module:function`` called as ``f(prompt, answer, row)``, returning a
  number in [0, 1] or a bool;
- `JudgeGrader`: a judge model called through an upstream. All answers to one prompt are shown
  together, labelled A, B, … in an order shuffled per prompt (a seeded RNG), so that position
  bias does not favour one model; the reply must be exactly one ``<label>: <score>`` line per
  answer with 0 ≤ score ≤ scale — anything else is a `GradeError`, never a guess.

Each grader has an `identity` (a JSON-ready dict) that `label` writes into every record.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from promptroute.loopconfig import (
    CallableGraderConfig,
    JudgeGraderConfig,
    ReferenceGraderConfig,
)

__all__ = [
    "CallableGrader",
    "GradeError",
    "JudgeGrader",
    "ReferenceGrader",
    "parse_judge_scores",
]

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_SCORE_LINE = re.compile(r"^\s*([A-Z])\s*:\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*$")


class GradeError(Exception):
    """An answer could not be graded (bad judge reply, missing reference, bad callable).

    `cost_usd` is what grading spent before it failed (a judge call is paid for either way).
    """

    def __init__(self, message: str, *, cost_usd: float = 0.0) -> None:
        super().__init__(message)
        self.cost_usd = cost_usd


class ReferenceGrader:
    """Compare each answer with the row's reference answer."""

    def __init__(self, config: ReferenceGraderConfig) -> None:
        self.config = config
        self.identity = {"kind": "reference", "match": config.match, "field": config.field}

    def grade_one(self, answer: str, row: Mapping[str, Any]) -> float:
        ref = row.get(self.config.field)
        if ref is None:
            raise GradeError(f"the input row has no {self.config.field!r} (the reference answer)")
        ref = str(ref)
        match self.config.match:
            case "exact":
                a, b = answer.strip(), ref.strip()
                if not self.config.case_sensitive:
                    a, b = a.casefold(), b.casefold()
                return 1.0 if a == b else 0.0
            case "regex":
                try:
                    return 1.0 if re.search(ref, answer) else 0.0
                except re.error as e:
                    raise GradeError(f"{self.config.field}: not a valid regex: {e}") from None
            case _:
                want = _NUMBER.fullmatch(ref.strip())
                if want is None:
                    raise GradeError(f"{self.config.field}: {ref!r} is not a number")
                found = _NUMBER.findall(answer.replace(",", ""))
                if not found:
                    return 0.0
                ok = abs(float(found[-1]) - float(ref)) <= self.config.tolerance
                return 1.0 if ok else 0.0

    async def grade(
        self, prompt: str, answers: Mapping[str, str], row: Mapping[str, Any]
    ) -> tuple[dict[str, float], float]:
        """(quality per model, grading cost in USD: 0)."""
        return {m: self.grade_one(a, row) for m, a in answers.items()}, 0.0


class CallableGrader:
    """A Python function the user names: ``f(prompt, answer, row) -> 0..1``."""

    def __init__(self, config: CallableGraderConfig) -> None:
        module, _, name = config.target.partition(":")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise GradeError(f"label.grader.target: cannot import {config.target!r}: {e}") from None
        if not callable(fn):
            raise GradeError(f"label.grader.target: {config.target!r} is not callable")
        self.fn: Callable[..., Any] = fn
        self.identity = {"kind": "callable", "target": config.target}

    def grade_one(self, prompt: str, answer: str, row: Mapping[str, Any]) -> float:
        value = self.fn(prompt, answer, dict(row))
        if isinstance(value, bool):
            return 1.0 if value else 0.0
        if not isinstance(value, int | float) or not (0.0 <= float(value) <= 1.0):
            raise GradeError(
                f"{self.identity['target']} returned {value!r}; it must return a number in [0, 1]"
            )
        return float(value)

    async def grade(
        self, prompt: str, answers: Mapping[str, str], row: Mapping[str, Any]
    ) -> tuple[dict[str, float], float]:
        return {m: self.grade_one(prompt, a, row) for m, a in answers.items()}, 0.0


def parse_judge_scores(reply: str, labels: list[str], scale: float) -> dict[str, float]:
    """Scores by label from a judge's reply, strictly: one ``L: score`` line per label, nothing
    else but blank lines, every score in [0, scale].

    >>> parse_judge_scores("A: 7\\nB: 10", ["A", "B"], 10)
    {'A': 7.0, 'B': 10.0}
    """
    scores: dict[str, float] = {}
    for line in reply.strip().splitlines():
        if not line.strip():
            continue
        m = _SCORE_LINE.match(line)
        if m is None:
            raise GradeError(f"judge reply line {line.strip()[:80]!r} is not '<label>: <score>'")
        label, value = m.group(1), float(m.group(2))
        if label not in labels:
            raise GradeError(f"judge scored unknown label {label!r}; labels: {', '.join(labels)}")
        if label in scores:
            raise GradeError(f"judge scored label {label!r} twice")
        if not (0.0 <= value <= scale) or not math.isfinite(value):
            raise GradeError(f"judge score {value:g} for {label!r} is outside 0..{scale:g}")
        scores[label] = value
    missing = [lab for lab in labels if lab not in scores]
    if missing:
        raise GradeError(f"judge reply has no score for {', '.join(missing)}")
    return scores


# (messages) -> (reply text, cost in USD)
JudgeCall = Callable[[list[dict[str, str]]], Awaitable[tuple[str, float]]]


class JudgeGrader:
    """A judge model, called through `call`, grading all answers to a prompt at once."""

    def __init__(self, config: JudgeGraderConfig, call: JudgeCall, *, seed: int = 0) -> None:
        self.config = config
        self.call = call
        self.seed = seed
        template_sha = hashlib.sha256(config.template.encode("utf-8")).hexdigest()[:12]
        self.identity = {
            "kind": "judge",
            "model": config.model,
            "template_sha256": template_sha,
            "scale": config.scale,
        }

    def order(self, prompt: str, models: list[str]) -> list[str]:
        """The order the answers are shown in: shuffled per prompt, reproducibly."""
        key = hashlib.sha256(f"{self.seed}:{prompt}".encode()).hexdigest()
        shuffled = sorted(models)
        random.Random(key).shuffle(shuffled)
        return shuffled

    def render(self, prompt: str, answers: Mapping[str, str]) -> tuple[str, dict[str, str]]:
        """(the judge's prompt, label → model)."""
        shown = self.order(prompt, list(answers))
        labels = {chr(ord("A") + i): m for i, m in enumerate(shown)}
        block = "\n\n".join(f"[{lab}]\n{answers[m]}" for lab, m in labels.items())
        text = self.config.template.format(
            prompt=prompt, answers=block, labels=", ".join(labels), scale=f"{self.config.scale:g}"
        )
        return text, labels

    async def grade(
        self, prompt: str, answers: Mapping[str, str], row: Mapping[str, Any]
    ) -> tuple[dict[str, float], float]:
        if len(answers) > 26:
            raise GradeError("the judge compares at most 26 answers at once")
        text, labels = self.render(prompt, answers)
        reply, cost = await self.call([{"role": "user", "content": text}])
        try:
            scores = parse_judge_scores(reply, list(labels), self.config.scale)
        except GradeError as e:
            raise GradeError(str(e), cost_usd=cost) from None
        return {labels[lab]: s / self.config.scale for lab, s in scores.items()}, cost
