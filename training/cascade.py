"""Two-model escalation curves: what a cascade (or a pre-call router) buys at each threshold.

A **cascade** always calls the cheap model, scores its answer and calls the strong model when the
score is below a threshold; it pays the cheap call on every request. A **pre-call** router sends
each request to one model from the prompt alone. Both are curves over how many requests go to
the strong model, ordered by a score (lowest escalated first), so the same code measures both:

- quality(k) = mean over requests of the strong model's quality where escalated, else the weak's;
- cost(k) = mean of (weak cost + strong cost where escalated) for a cascade, or of the one model
  called for a pre-call router;
- latency(k) likewise, where the logs have both models' latency.

APGR and the cost to reach 95% of the strong model follow `training/metrics.py` (RouteLLM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from training import metrics

__all__ = ["EscalationCurve", "escalation_curve", "threshold_for"]


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


@dataclass(frozen=True)
class EscalationCurve:
    """One point per number of escalated requests k = 0..n (lowest scores escalated first)."""

    share: np.ndarray  # k / n
    quality: np.ndarray
    cost: np.ndarray
    latency: np.ndarray | None  # mean latency in ms, None when the logs lack it
    thresholds: np.ndarray  # escalate when score < thresholds[k] (k = 0: −inf, k = n: +inf)
    q_weak: float
    q_strong: float
    c_strong: float

    def apgr(self) -> float:
        return metrics.apgr(self.share, self.quality, self.q_weak, self.q_strong)

    def cost_to_reach(self, fraction: float) -> float | None:
        """Cheapest cost reaching `fraction` × the strong model's quality, ÷ the strong cost."""
        hit = metrics.cost_to_reach(self.cost, self.quality, fraction * self.q_strong)
        return None if hit is None or self.c_strong <= 0 else hit / self.c_strong

    def index_to_reach(self, fraction: float) -> int | None:
        """The curve point that `cost_to_reach` picks, or None."""
        ok = np.flatnonzero(self.quality >= fraction * self.q_strong - 1e-12)
        return None if ok.size == 0 else int(ok[np.argmin(self.cost[ok])])

    def summary(self, *, points: int = 21) -> dict[str, Any]:
        """JSON-ready: APGR, cost to 95% of strong, and about `points` evenly spread points."""
        at95 = self.index_to_reach(0.95)
        n = len(self.share) - 1
        pick = sorted(set(np.linspace(0, n, points).round().astype(int).tolist()))
        return {
            "apgr": _r(self.apgr(), 4),
            "cost_to_95pct_strong": _r(self.cost_to_reach(0.95), 4),
            "strong_share_at_95pct": None if at95 is None else _r(self.share[at95], 4),
            "latency_ms_at_95pct": (
                None if at95 is None or self.latency is None else _r(self.latency[at95], 1)
            ),
            "curve": [
                {
                    "threshold": _r(self.thresholds[k], 4),
                    "strong_share": _r(self.share[k], 4),
                    "quality": _r(self.quality[k]),
                    "cost": _r(self.cost[k], 9),
                    "latency_ms": None if self.latency is None else _r(self.latency[k], 1),
                }
                for k in pick
            ],
        }


def escalation_curve(
    score: np.ndarray,
    q_weak: np.ndarray,
    q_strong: np.ndarray,
    c_weak: np.ndarray,
    c_strong: np.ndarray,
    *,
    cheap_always_paid: bool,
    lat_weak: np.ndarray | None = None,
    lat_strong: np.ndarray | None = None,
) -> EscalationCurve:
    """The curve of escalating the k lowest-`score` requests, k = 0..n (all arrays (n,))."""
    score = np.asarray(score, dtype=np.float64)
    n = score.size
    if n == 0:
        raise ValueError("escalation_curve needs at least one request")
    order = np.argsort(score, kind="stable")

    def cum(x: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(np.asarray(x, dtype=np.float64)[order])])

    quality = (float(np.sum(q_weak)) + cum(q_strong - q_weak)) / n
    base_cost = float(np.sum(c_weak))
    cost = (base_cost + cum(c_strong if cheap_always_paid else c_strong - c_weak)) / n
    latency = None
    if lat_weak is not None and lat_strong is not None:
        extra = lat_strong if cheap_always_paid else lat_strong - lat_weak
        latency = (float(np.sum(lat_weak)) + cum(extra)) / n
    s = score[order]
    mids = (s[:-1] + s[1:]) / 2.0
    thresholds = np.concatenate([[-np.inf], mids, [np.inf]])
    return EscalationCurve(
        share=np.arange(n + 1) / n,
        quality=quality,
        cost=cost,
        latency=latency,
        thresholds=thresholds,
        q_weak=float(np.mean(q_weak)),
        q_strong=float(np.mean(q_strong)),
        c_strong=float(np.mean(c_strong)),
    )


def threshold_for(curve: EscalationCurve, fraction: float = 0.95) -> float | None:
    """The score threshold of the cheapest point reaching `fraction` of the strong model."""
    k = curve.index_to_reach(fraction)
    if k is None:
        return None
    t = float(curve.thresholds[k])
    return t if np.isfinite(t) else (0.0 if t < 0 else 1.0)
