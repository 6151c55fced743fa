"""The default knob: calibrated on out-of-fold curves so that what it promises holds.

Three rules (`TrainOptions` picks one):

- an explicit knob;
- a target (a budget share of the strongest model's cost, or a share of calls to it): the knob
  curve is a staircase, so the target usually falls between two neighbouring knob points. A
  random mix of two routers is a router whose cost and call shares are the same mix of theirs,
  so the default is a *mixture* of two knobs around the target (the nearest whose shares are
  stable, see `_mix`), with the weight that puts the expected share exactly on the target (per
  prompt, `models.router.mixture_draw` decides which knob applies);
- by default, "match the best single model": the largest knob whose out-of-fold quality beats
  the best single model's by at least one standard error of the difference across CV folds, so
  that the match also holds on prompts the router has not seen.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from models.router import KnobMix, Router

__all__ = ["choose_policy", "retarget"]


# How far a knob point's share may differ from its neighbours' and still count as stable.
STABLE_SHARE = 0.03


def _stable(curve: list[dict[str, Any]], key: str, i: int) -> bool:
    """Whether both neighbouring knob points have about the same share as point i."""
    v = curve[i][key]
    return all(
        curve[j][key] is not None and abs(curve[j][key] - v) <= STABLE_SHARE
        for j in (i - 1, i + 1)
        if 0 <= j < len(curve)
    )


def _mix(curve: list[dict[str, Any]], key: str, target: float) -> dict[str, Any]:
    """A mix of two knobs whose expected share lands on `target`.

    The two knobs are the nearest points on either side of the target whose share is stable
    (within `STABLE_SHARE` of both neighbours'), falling back to the immediate neighbours of the
    target where a side has none. Where the curve is a cliff (a whole task's prompts flip to the
    strong model within a few grid steps, as on RouterBench) the out-of-fold share of a point on
    the cliff does not transfer to the final model: its scores shift a little and the share at
    that knob moves by tenths. The shares of points on flat stretches move by hundredths, and a
    mix of them lands where it promised.
    """
    ok = [i for i, p in enumerate(curve) if p[key] is not None and p[key] <= target + 1e-12]
    if not ok:
        last = curve[-1]
        return {"knob": float(last["knob"]), "mix": None, "met": False, "expected": last[key]}
    i = ok[0]
    hi = curve[i]
    if i == 0 or hi[key] >= target - 1e-12:
        return {"knob": float(hi["knob"]), "mix": None, "met": True, "expected": hi[key]}
    j = i - 1
    i = next((x for x in ok if x >= i and _stable(curve, key, x)), i)
    below = [x for x in range(i) if curve[x][key] is not None and curve[x][key] > target]
    j = next((x for x in reversed(below) if _stable(curve, key, x)), j)
    hi, lo = curve[i], curve[j]
    span = float(lo[key] - hi[key])
    p_high = 1.0 if span <= 0 else float(np.clip((lo[key] - target) / span, 0.0, 1.0))
    expected = (1 - p_high) * lo[key] + p_high * hi[key]
    return {
        "knob": float(lo["knob"]),
        "mix": KnobMix(float(lo["knob"]), float(hi["knob"]), p_high),
        "met": True,
        "expected": expected,
        "expected_quality": (1 - p_high) * lo["quality"] + p_high * hi["quality"],
    }


def _match_best(routing: dict[str, Any]) -> dict[str, Any]:
    """The largest knob whose OOF quality minus one standard error (across folds) of its
    difference to the best single model is still ≥ 0; knob 0 when none is."""
    curve = routing["curve"]
    folds = routing.get("fold_curves") or []
    chosen, margin = 0.0, None
    for i, p in enumerate(curve):
        if folds:
            d = np.array([f["quality"][i] - f["best_single"] for f in folds])
            se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
            diff = p["quality"] - routing["best_single_quality"]
            if diff - se >= -1e-12:
                chosen, margin = float(p["knob"]), se
        elif p["quality"] >= routing["best_single_quality"] - 1e-12:
            chosen = float(p["knob"])
    return {"knob": chosen, "mix": None, "met": True, "margin": margin}


def choose_policy(
    routing: dict[str, Any] | None,
    *,
    knob: float | None = None,
    target_budget: float | None = None,
    target_strong_share: float | None = None,
) -> dict[str, Any]:
    """{knob, mix (KnobMix | None), met, target?, expected?}: the default policy."""
    if knob is not None:
        return {"knob": float(knob), "mix": None, "met": True}
    if routing is None or not routing["curve"]:
        return {"knob": 0.0, "mix": None, "met": True}
    curve = routing["curve"]
    if target_budget is not None:
        out = _mix(curve, "budget_share", target_budget)
        out["target"] = {"budget_share": target_budget}
        return out
    if target_strong_share is not None:
        out = _mix(curve, "strong_share", target_strong_share)
        out["target"] = {"strong_share": target_strong_share}
        return out
    return _match_best(routing)


def retarget(
    router: Router,
    cv_curve: dict[str, Any],
    *,
    target_budget: float | None = None,
    target_strong_share: float | None = None,
) -> dict[str, Any]:
    """Set `router`'s default policy for a new target from its training report's `cv_curve`
    (what training with that target would choose: the heads do not depend on it)."""
    policy = choose_policy(
        cv_curve, target_budget=target_budget, target_strong_share=target_strong_share
    )
    router.knob_mix = policy["mix"]
    router.default_knob = policy["knob"]
    return policy
