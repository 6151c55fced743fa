"""Recent activity for the dashboard: decisions, estimated spend and decision time per time bucket.

Prometheus counters only grow; an operator asks "where did the last fifteen minutes of traffic
go?". `Activity` keeps the last `window_seconds` of decisions in fixed buckets (per model: count,
estimated spend, count by stage; per bucket: a decision-time histogram with the same bounds as
``promptroute_decision_seconds``), running totals that equal the Prometheus counters, and the
latest breaker transitions. Memory is bounded by window ÷ bucket × models, whatever the load.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Activity", "histogram_quantile"]


@dataclass
class _Bucket:
    start: float
    decisions: dict[str, int] = field(default_factory=dict)
    spend: dict[str, float] = field(default_factory=dict)
    stages: dict[tuple[str, str], int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=list)
    latency_sum: float = 0.0


def histogram_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket as Prometheus does.

    `counts[i]` counts observations ≤ `bounds[i]` (not cumulative); the last count is the
    overflow bucket (> bounds[-1]), answered with the largest bound. None for no observations.

    >>> histogram_quantile(0.5, [1.0, 2.0], [0, 4, 0])
    1.5
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i >= len(bounds):
                return float(bounds[-1])
            lower = bounds[i - 1] if i > 0 else 0.0
            return float(lower + (bounds[i] - lower) * (rank - seen) / count)
        seen += count
    return float(bounds[-1])


class Activity:
    """Decisions and breaker transitions of the last `window_seconds`, in buckets.

    Parameters
    ----------
    latency_bounds : the decision-time histogram's upper bounds in seconds
    clock : unix seconds (transitions are shown with their time of day)
    bucket_seconds, window_seconds : bucket width and how much history is kept
    max_transitions : the most recent breaker transitions kept
    """

    def __init__(
        self,
        latency_bounds: Sequence[float],
        *,
        clock: Callable[[], float] = time.time,
        bucket_seconds: float = 10.0,
        window_seconds: float = 900.0,
        max_transitions: int = 100,
    ) -> None:
        self.bounds = tuple(latency_bounds)
        self.clock = clock
        self.bucket_seconds = bucket_seconds
        self.window_seconds = window_seconds
        self._buckets: deque[_Bucket] = deque()
        self._transitions: deque[dict[str, Any]] = deque(maxlen=max_transitions)
        self._total_decisions: dict[str, int] = {}
        self._total_spend: dict[str, float] = {}
        self._lock = threading.Lock()

    def _bucket(self, now: float) -> _Bucket:
        start = now - now % self.bucket_seconds
        buckets = self._buckets
        if not buckets or buckets[-1].start < start:
            buckets.append(_Bucket(start, latency_counts=[0] * (len(self.bounds) + 1)))
            cutoff = now - self.window_seconds
            while buckets[0].start + self.bucket_seconds <= cutoff:
                buckets.popleft()
        return buckets[-1]

    def decision(self, model: str, stage: str, seconds: float, cost_usd: float) -> None:
        """Count one committed decision (the hot path: a few dict updates under a lock)."""
        with self._lock:
            b = self._bucket(self.clock())
            b.decisions[model] = b.decisions.get(model, 0) + 1
            b.spend[model] = b.spend.get(model, 0.0) + cost_usd
            b.stages[(model, stage)] = b.stages.get((model, stage), 0) + 1
            b.latency_counts[bisect.bisect_left(self.bounds, seconds)] += 1
            b.latency_sum += seconds
            self._total_decisions[model] = self._total_decisions.get(model, 0) + 1
            self._total_spend[model] = self._total_spend.get(model, 0.0) + cost_usd

    def transition(self, model: str, old: str, new: str, reason: str) -> None:
        """Remember a breaker state change (newest last)."""
        with self._lock:
            self._transitions.append(
                {"ts": self.clock(), "model": model, "from": old, "to": new, "reason": reason}
            )

    def summary(self, minutes: float) -> dict[str, Any]:
        """JSON-ready view of the last `minutes` (at most the kept window) and the totals."""
        with self._lock:
            now = self.clock()
            span = min(minutes * 60.0, self.window_seconds)
            cutoff = now - span
            buckets = [b for b in self._buckets if b.start + self.bucket_seconds > cutoff]
            totals = {
                m: {"decisions": n, "estimated_spend_usd": self._total_spend[m]}
                for m, n in self._total_decisions.items()
            }
            transitions = list(self._transitions)
        per_model: dict[str, dict[str, Any]] = {}
        counts = [0] * (len(self.bounds) + 1)
        latency_sum = 0.0
        timeline = []
        for b in buckets:
            for m, n in b.decisions.items():
                entry = per_model.setdefault(
                    m, {"decisions": 0, "estimated_spend_usd": 0.0, "by_stage": {}}
                )
                entry["decisions"] += n
                entry["estimated_spend_usd"] += b.spend[m]
            for (m, stage), n in b.stages.items():
                by_stage = per_model[m]["by_stage"]
                by_stage[stage] = by_stage.get(stage, 0) + n
            counts = [a + c for a, c in zip(counts, b.latency_counts, strict=True)]
            latency_sum += b.latency_sum
            timeline.append(
                {"start": b.start, "decisions": dict(b.decisions), "spend": dict(b.spend)}
            )
        n = sum(e["decisions"] for e in per_model.values())
        for entry in per_model.values():
            entry["share"] = entry["decisions"] / n
        return {
            "now": now,
            "window_seconds": span,
            "bucket_seconds": self.bucket_seconds,
            "decisions": n,
            "estimated_spend_usd": sum(e["estimated_spend_usd"] for e in per_model.values()),
            "models": dict(sorted(per_model.items(), key=lambda kv: -kv[1]["decisions"])),
            "decision_seconds": {
                "count": n,
                "mean": latency_sum / n if n else None,
                **{f"p{q}": histogram_quantile(q / 100, self.bounds, counts) for q in (50, 90, 99)},
                "bounds": list(self.bounds),
                "counts": counts,
            },
            "timeline": timeline,
            "totals": totals,
            "breaker_transitions": transitions[::-1],
        }
