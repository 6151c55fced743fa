"""The learned answer verifier: P(the answer is right | prompt, answer), scored after the call.

A router decides from the prompt alone; once a model has answered, the answer itself says a lot
about whether it is right. The verifier is a logistic regression over two blocks:

- **structure** (named, dense): does the answer end on a final-answer marker (``####``,
  "the answer is", ``\\boxed{}``), is that final answer a whole number, does it repeat a number
  of the prompt, do the inline calculations (``12 * 3 = 36``) check out, how long is it, does it
  refuse, hedge or look cut off, … — all of `STRUCTURE_NAMES`;
- **text** (hashed): signed word 1–2-grams of the answer, `n_hash` columns.

Scoring one answer is one regex pass and a dot product: microseconds, cheap next to the call it
judges. The weights are plain arrays (`Verifier.to_payload`), trained by `training/verifier.py`;
Platt calibration is folded into them. An answer is escalated when its score is below a
threshold (`Verifier.threshold` by default, chosen out of fold on the training side).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["STRUCTURE_NAMES", "Verifier", "structure", "text_features"]

# Bump when any feature's computation changes: weights fit one computation only.
VERIFIER_FEATURE_VERSION = 1

_NUM = r"-?\$?\d[\d,]*(?:\.\d+)?(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
_HASH_MARK = re.compile(r"####\s*(.*)")
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.{0,80})", re.IGNORECASE
)
_BOXED = re.compile(r"\\boxed\{([^{}]{0,80})\}")
_CALC = re.compile(
    r"(?<![\d.])(-?\d+(?:\.\d+)?)\s*([-+*/x×÷])\s*(-?\d+(?:\.\d+)?)\s*=\s*\$?(-?\d[\d,]*(?:\.\d+)?)"
)
_REFUSAL = re.compile(
    r"\b(?:i(?:'m| am) sorry|i cannot|i can't|i can not|i am unable|i'm unable|as an ai|"
    r"i do not have|i don't have enough)\b",
    re.IGNORECASE,
)
_HEDGE = re.compile(
    r"\b(?:however|assum(?:e|ing|ption)|approximately|round(?:ed|ing)?|not possible|"
    r"cannot be determined|not enough information|it seems|actually|but since|wait)\b",
    re.IGNORECASE,
)
_ENDS_CLEANLY = re.compile(r"[.!?)\]}\"'`*\d%$]\s*$")
_TOKEN = re.compile(r"[a-z]+|\d+|[^\sa-z\d]")

STRUCTURE_NAMES: tuple[str, ...] = (
    "empty",
    "len_chars_log",
    "len_lines_log",
    "len_ratio_log",
    "marker_hash",
    "marker_answer_is",
    "marker_boxed",
    "marker_count_gt1",
    "final_present",
    "final_integer",
    "final_decimal",
    "final_fraction",
    "final_negative",
    "final_magnitude_log",
    "final_in_prompt",
    "final_is_last_number",
    "numbers_log",
    "distinct_numbers_share",
    "calc_count_log",
    "calc_wrong_share",
    "calc_any_wrong",
    "refusal",
    "hedge_log",
    "ends_cleanly",
    "repeated_lines_share",
)
_INDEX = {name: i for i, name in enumerate(STRUCTURE_NAMES)}


def _number(text: str) -> float | None:
    text = text.replace(",", "").replace("$", "")
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            value = float(a) / float(b) if float(b) else math.nan
        else:
            value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None  # "1" * 400 overflows to inf


def _final_answer(answer: str) -> tuple[str | None, int, str]:
    """(the final answer's number as written, or None; how many markers; which marker)."""
    for kind, pattern in (("hash", _HASH_MARK), ("boxed", _BOXED), ("answer_is", _ANSWER_IS)):
        found = pattern.findall(answer)
        if found:
            nums = _NUM_RE.findall(found[-1])
            return (nums[0] if nums else None), len(found), kind
    nums = _NUM_RE.findall(answer)
    return (nums[-1] if nums else None), 0, ""


def _calc_errors(answer: str) -> tuple[int, int]:
    """(inline calculations `a op b = c` found, how many of them are wrong)."""
    total = wrong = 0
    for a, op, b, c in _CALC.findall(answer):
        x, y, z = float(a), float(b), _number(c)
        if z is None:
            continue
        if op in "*x×":
            v = x * y
        elif op in "/÷":
            if y == 0:
                continue
            v = x / y
        elif op == "+":
            v = x + y
        else:
            v = x - y
        total += 1
        # Rounded results (2 decimals) count as right: the answer may round money.
        if abs(v - z) > max(0.01, 0.005 * abs(v)):
            wrong += 1
    return total, wrong


def structure(prompt: str, answer: str) -> np.ndarray:
    """The named structural features of one answer, in `STRUCTURE_NAMES` order.

    >>> f = structure("Tom has 3 apples and buys 4. How many?", "3 + 4 = 7\\n#### 7")
    >>> [float(f[STRUCTURE_NAMES.index(n)]) for n in ("marker_hash", "final_integer", "calc_wrong_share")]
    [1.0, 1.0, 0.0]
    """
    x = np.zeros(len(STRUCTURE_NAMES))
    text = answer.strip()
    if not text:
        x[_INDEX["empty"]] = 1.0
        return x
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    x[_INDEX["len_chars_log"]] = math.log1p(len(text))
    x[_INDEX["len_lines_log"]] = math.log1p(len(lines))
    x[_INDEX["len_ratio_log"]] = math.log1p(len(text) / max(len(prompt), 1))
    final, markers, kind = _final_answer(text)
    if kind:
        x[_INDEX[f"marker_{kind}"]] = 1.0
    x[_INDEX["marker_count_gt1"]] = float(markers > 1)
    numbers = _NUM_RE.findall(text)
    if final is not None:
        value = _number(final)
        x[_INDEX["final_present"]] = 1.0
        if value is not None:
            x[_INDEX["final_integer"]] = float(value == int(value) and "/" not in final)
            x[_INDEX["final_decimal"]] = float("." in final)
            x[_INDEX["final_fraction"]] = float("/" in final)
            x[_INDEX["final_negative"]] = float(value < 0)
            x[_INDEX["final_magnitude_log"]] = math.log1p(min(abs(value), 1e12))
            prompt_values = {_number(n) for n in _NUM_RE.findall(prompt)}
            x[_INDEX["final_in_prompt"]] = float(value in prompt_values)
        x[_INDEX["final_is_last_number"]] = float(bool(numbers) and numbers[-1] == final)
    if numbers:
        x[_INDEX["numbers_log"]] = math.log1p(len(numbers))
        x[_INDEX["distinct_numbers_share"]] = len(set(numbers)) / len(numbers)
    calcs, wrong = _calc_errors(text)
    x[_INDEX["calc_count_log"]] = math.log1p(calcs)
    if calcs:
        x[_INDEX["calc_wrong_share"]] = wrong / calcs
        x[_INDEX["calc_any_wrong"]] = float(wrong > 0)
    x[_INDEX["refusal"]] = float(_REFUSAL.search(text[:400]) is not None)
    x[_INDEX["hedge_log"]] = math.log1p(len(_HEDGE.findall(text)))
    x[_INDEX["ends_cleanly"]] = float(_ENDS_CLEANLY.search(text) is not None)
    if len(lines) > 1:
        x[_INDEX["repeated_lines_share"]] = 1.0 - len(set(lines)) / len(lines)
    return x


def text_features(answer: str, n_hash: int) -> tuple[np.ndarray, np.ndarray]:
    """(column indices, values) of the answer's signed hashed word 1–2-grams, L2-normalised.

    Numbers become one token class ("0"), so the weights learn wording, not particular values.
    """
    tokens = ["0" if t.isdigit() else t for t in _TOKEN.findall(answer.lower()[:8192])]
    if not tokens:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
    counts: dict[int, float] = {}
    for g in grams:
        h = zlib.crc32(g.encode("utf-8"))
        col = h % n_hash
        counts[col] = counts.get(col, 0.0) + (1.0 if (h >> 31) & 1 else -1.0)
    idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    vals = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
    vals = np.sign(vals) * np.log1p(np.abs(vals))
    norm = float(np.sqrt(vals @ vals))
    return idx, (vals / norm if norm > 0 else vals)


@dataclass
class Verifier:
    """A trained verifier: weights over `STRUCTURE_NAMES` and `n_hash` hashed columns.

    `dense_w` already includes the feature scaling and `bias` the calibration, so the score is
    sigmoid(structure · dense_w + text · hashed_w + bias). `threshold` is the default below
    which an answer fails; `report` holds how it was trained and how well it did (JSON values).
    """

    dense_w: np.ndarray
    hashed_w: np.ndarray
    bias: float
    threshold: float = 0.5
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def n_hash(self) -> int:
        return int(self.hashed_w.shape[0])

    def logit(self, prompt: str, answer: str) -> float:
        idx, vals = text_features(answer, self.n_hash)
        z = float(structure(prompt, answer) @ self.dense_w) + self.bias
        if idx.size:
            z += float(vals @ self.hashed_w.take(idx))
        return z

    def score(self, prompt: str, answer: str) -> float:
        """P(answer is right), in (0, 1)."""
        z = self.logit(prompt, answer)
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def score_many(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        return np.array([self.score(p, a) for p, a in zip(prompts, answers, strict=True)])

    def to_payload(self) -> dict[str, Any]:
        """Arrays and plain JSON values only (the artifact stores no pickled objects)."""
        return {
            "feature_version": VERIFIER_FEATURE_VERSION,
            "structure_names": list(STRUCTURE_NAMES),
            "dense_w": self.dense_w,
            "hashed_w": self.hashed_w,
            "bias": float(self.bias),
            "threshold": float(self.threshold),
            "report": self.report,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> Verifier:
        """Rebuild from `to_payload`; ValueError when it was fitted to other features."""
        if data.get("feature_version") != VERIFIER_FEATURE_VERSION or list(
            data.get("structure_names", [])
        ) != list(STRUCTURE_NAMES):
            raise ValueError(
                f"verifier features version {data.get('feature_version')!r} differ from this "
                f"promptroute's ({VERIFIER_FEATURE_VERSION}); retrain it"
            )
        dense_w = np.asarray(data["dense_w"], dtype=np.float64)
        if dense_w.shape != (len(STRUCTURE_NAMES),):
            raise ValueError(f"verifier dense_w has shape {dense_w.shape}")
        return cls(
            dense_w=dense_w,
            hashed_w=np.asarray(data["hashed_w"], dtype=np.float32),
            bias=float(data["bias"]),
            threshold=float(data["threshold"]),
            report=dict(data.get("report") or {}),
        )
