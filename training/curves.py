"""Cost–quality curves of a router over a knob sweep: the shared core of evaluation and training.

Decisions use the router's *estimated* costs (what it knows at request time); the points are
measured with the records' *true* quality and cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.router import KnobMix
from training import metrics

__all__ = ["KNOB_GRID", "CurvePoint", "choose", "choose_mixed", "curve_aiq", "sweep"]

# λ = 0 routes on quality alone; the largest value routes (almost) purely on cost. The grid is
# geometric because the flip point of a prompt is Δscore / Δ(relative cost), spread over decades.
KNOB_GRID: tuple[float, ...] = (0.0, *np.round(np.geomspace(1e-3, 1e3, 97), 6).tolist())


@dataclass(frozen=True)
class CurvePoint:
    knob: float
    quality: float
    cost: float
    calls: np.ndarray  # share of requests per model (in the router's model order)


def choose(
    score: np.ndarray, est_cost: np.ndarray, cost_ref: float, knob: float, masks: np.ndarray
) -> np.ndarray:
    """Index of the chosen model per row: argmax score − knob·cost/c_ref over eligible models.

    Exact ties go to the cheaper model (as the live router does).
    """
    u = score - knob * (est_cost / cost_ref) if knob else score
    u = np.where(masks, u, -np.inf)
    best = u.max(axis=1, keepdims=True)
    tied = (u >= best) & masks
    return np.argmin(np.where(tied, est_cost, np.inf), axis=1)


def choose_mixed(
    score: np.ndarray,
    est_cost: np.ndarray,
    cost_ref: float,
    knob: float,
    mix: KnobMix | None,
    draws: np.ndarray | None,
    masks: np.ndarray,
) -> np.ndarray:
    """`choose` under a default policy: at `knob`, or with a knob mix, at its high knob for the
    rows whose `mixture_draw` (`draws`) falls below its share, as `Router.rank` does."""
    low = choose(score, est_cost, cost_ref, knob, masks)
    if mix is None or draws is None:
        return low
    return np.where(draws < mix.p_high, choose(score, est_cost, cost_ref, mix.high, masks), low)


def sweep(
    score: np.ndarray,
    est_cost: np.ndarray,
    cost_ref: float,
    true_quality: np.ndarray,
    true_cost: np.ndarray,
    masks: np.ndarray,
    knobs: tuple[float, ...] | list[float] = KNOB_GRID,
) -> list[CurvePoint]:
    """One curve point per knob. All arrays are (n, K); `masks` marks the labelled models."""
    rows = np.arange(score.shape[0])
    k = score.shape[1]
    out: list[CurvePoint] = []
    for knob in knobs:
        pick = choose(score, est_cost, cost_ref, knob, masks)
        calls = np.bincount(pick, minlength=k) / len(pick)
        out.append(
            CurvePoint(
                knob=float(knob),
                quality=float(true_quality[rows, pick].mean()),
                cost=float(true_cost[rows, pick].mean()),
                calls=calls,
            )
        )
    return out


def curve_aiq(
    costs: np.ndarray, qualities: np.ndarray, single_quality: np.ndarray, single_cost: np.ndarray
) -> float:
    """A router curve's AIQ as `evaluate` reports it: over the single models' cost range, the
    hull anchored at the cheapest single model (which a router can always be mixed with)."""
    cheapest = int(np.argmin(single_cost))
    return metrics.aiq(
        costs,
        qualities,
        float(single_cost.min()),
        float(single_cost.max()),
        anchor=(float(single_cost[cheapest]), float(single_quality[cheapest])),
    )
