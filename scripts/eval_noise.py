#!/usr/bin/env python3
"""How much of issue 14's unmet rows is sampling noise, and what RouterBench's row would need.

    nice -n 5 python scripts/eval_noise.py --part test     # ~3 min
    nice -n 5 python scripts/eval_noise.py --part rb       # ~9 min (two 5-fold runs)

Measurement only: nothing here chooses anything, and nothing in the product reads it.

`--part test`: the default (combined) model, trained as `scripts/eval_targets.py` trains it,
on the test sides of RouteLLM and DCRouter; the bootstrap over test prompts of its MMLU and
GSM8K APGR, DCRouter's AIQ and cost_to_match_best and the number of DCRouter tasks where it is
at least the Zero router (standard error, 95% interval, and how often a resample reaches the
issue's target).

`--part rb`: RouterBench 5-fold out of fold, alone and combined (the other train sides added
to every fold), as `scripts/eval_targets.py` runs them; then
1. a paired bootstrap over RouterBench's prompts of the combined − single AIQ difference;
2. the out-of-fold quality scores' AUC inside each task, per (task, model): how well they tell
   which prompts of a task a model gets right;
3. what within-task skill cost_to_match_best ≤ 0.6 would take: synthetic predictors of every
   (prompt, model) outcome, perfectly calibrated per task and model, with a given AUC inside
   each task and independent noise (z = a(2y − 1) + N(0, 1), AUC = Φ(a√2), scored by the
   exact posterior given the task's mean), routed over the same knob grid on the real costs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from eval_targets import FILES, say  # noqa: E402

import training.evaluate as ev  # noqa: E402
from models.catalog import load_catalog  # noqa: E402
from training import metrics  # noqa: E402
from training.curves import KNOB_GRID, curve_aiq, sweep  # noqa: E402
from training.logs import load_records  # noqa: E402
from training.split import split_records  # noqa: E402
from training.trainer import TrainOptions, train  # noqa: E402

RESAMPLES = 400
AUCS = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


class _KeepScored:
    """Wraps `training.evaluate._report` to keep the per-record scores behind each report
    (the reports hold only summaries)."""

    def __init__(self) -> None:
        self.kept: list[Any] = []
        self._real = ev._report

    def __call__(self, sc: Any, *a: Any, **k: Any) -> dict[str, Any]:
        self.kept.append(sc)
        return self._real(sc, *a, **k)


def _interval(x: np.ndarray) -> dict[str, float]:
    return {
        "se": round(float(x.std(ddof=1)), 5),
        "lo95": round(float(np.percentile(x, 2.5)), 5),
        "hi95": round(float(np.percentile(x, 97.5)), 5),
    }


def part_test(train_side: dict, test_side: dict, catalog: Any, rng: np.random.Generator) -> dict:
    say("combined model: train side of all bundled data")
    combined = train([r for v in train_side.values() for r in v], catalog, TrainOptions())
    keep = _KeepScored()
    ev._report = keep
    try:
        ev.evaluate(combined.router, test_side["routellm"], catalog)
        ev.evaluate(combined.router, test_side["dcrouter"], catalog)
    finally:
        ev._report = keep._real
    sc, dc = keep.kept
    q = np.nan_to_num(sc.targets.quality)
    s = sc.scores["quality"]
    present = np.flatnonzero(sc.targets.labelled.any(axis=0))
    out = {}
    for task, target in (("mmlu", 0.70), ("gsm8k", 0.72)):
        rows = np.flatnonzero(sc.tasks == task)

        def apgr(r: np.ndarray) -> float:
            single = {sc.models[j]: {"quality": q[r, j].mean()} for j in present}
            return ev._two_model(sc.models, present, q[r], s[r], single)["apgr"]

        boot = np.array([apgr(rng.choice(rows, rows.size)) for _ in range(RESAMPLES)])
        out[task] = {
            "n": int(rows.size),
            "apgr": apgr(rows),
            "target": target,
            **_interval(boot),
            "share_of_resamples_at_target": round(float((boot >= target).mean()), 3),
        }
        say(f"{task}: {out[task]}")

    tasks = [t for t in np.unique(dc.tasks) if (dc.tasks == t).sum() >= 20]
    rows = np.arange(len(dc.prompts))

    def dc_figures(r: np.ndarray) -> tuple[float, float, int]:
        aiq, ctm = _curve_figures(dc, r)
        at_zero = 0
        for t in tasks:
            tr = r[dc.tasks[r] == t]
            have = dc.targets.labelled[tr].any(axis=0)
            q = np.nan_to_num(dc.targets.quality[tr][:, have])
            c = np.nan_to_num(dc.targets.cost[tr][:, have])
            zero = metrics.zero_router_aiq(c.mean(axis=0), q.mean(axis=0))
            at_zero += _curve_figures(dc, tr)[0] >= zero
        return aiq, np.nan if ctm is None else ctm, at_zero

    base = dc_figures(rows)
    boot = np.array([dc_figures(rng.choice(rows, rows.size)) for _ in range(RESAMPLES)])
    out["dcrouter"] = {
        "n": int(rows.size),
        "aiq": round(base[0], 5),
        "aiq_interval": _interval(boot[:, 0]),
        "aiq_share_at_target": round(float((boot[:, 0] >= 0.635).mean()), 3),
        "cost_to_match_best": round(base[1], 4),
        "cost_to_match_best_interval": _interval(boot[:, 1]),
        "cost_to_match_best_share_at_target": round(float((boot[:, 1] <= 0.14).mean()), 3),
        "tasks_at_least_zero": int(base[2]),
        "tasks_at_least_zero_of": len(tasks),
        "tasks_at_least_zero_interval": _interval(boot[:, 2]),
        "tasks_share_at_target": round(float((boot[:, 2] >= 11).mean()), 3),
    }
    say(f"dcrouter: {out['dcrouter']}")
    return out


def _curve_figures(sc: Any, rows: np.ndarray) -> tuple[float, float | None]:
    """(AIQ, cost_to_match_best) of the router's curve on these records (one model set)."""
    t = sc.targets
    mask = t.labelled[rows]
    present = np.flatnonzero(mask.any(axis=0))
    q, c = np.nan_to_num(t.quality[rows]), np.nan_to_num(t.cost[rows])
    s = np.where(mask, np.nan_to_num(sc.scores["quality"][rows], nan=-1.0), -np.inf)
    curve = sweep(s, sc.rel_cost[rows], 1.0, q, c, mask, KNOB_GRID)
    costs = np.array([p.cost for p in curve])
    quals = np.array([p.quality for p in curve])
    sq, scost = q[:, present].mean(axis=0), c[:, present].mean(axis=0)
    best = int(np.lexsort((scost, -sq))[0])
    hit = metrics.cost_to_reach(costs, quals, float(sq[best]))
    return curve_aiq(costs, quals, sq, scost), None if hit is None else hit / float(scost[best])


def _aiq(sc: Any, rows: np.ndarray) -> float:
    return _curve_figures(sc, rows)[0]


def _synthetic(sc: Any, auc: float, seed: int) -> tuple[float, float | None]:
    """(max quality, cost_to_match_best) of a calibrated predictor with this within-task AUC."""
    t = sc.targets
    q, c = np.nan_to_num(t.quality), np.nan_to_num(t.cost)
    a = norm.ppf(auc) / np.sqrt(2)
    rng = np.random.default_rng(seed)
    p = np.zeros_like(q)
    for task in np.unique(sc.tasks):
        r = sc.tasks == task
        prior = np.clip(q[r].mean(axis=0), 1e-3, 1 - 1e-3)
        z = a * (2 * q[r] - 1) + rng.standard_normal(q[r].shape)
        right, wrong = prior * norm.pdf(z - a), (1 - prior) * norm.pdf(z + a)
        p[r] = right / (right + wrong)
    sq, scost = q.mean(axis=0), c.mean(axis=0)
    best = int(np.lexsort((scost, -sq))[0])
    curve = sweep(p, c / scost.max(), 1.0, q, c, t.labelled, KNOB_GRID)
    costs = np.array([x.cost for x in curve])
    quals = np.array([x.quality for x in curve])
    hit = metrics.cost_to_reach(costs, quals, float(sq[best]))
    return float(quals.max()), None if hit is None else float(hit / scost[best])


def part_rb(train_side: dict, catalog: Any, rng: np.random.Generator) -> dict:
    keep = _KeepScored()
    ev._report = keep
    try:
        say("RouterBench alone, 5-fold OOF")
        ev.cross_val_evaluate(train_side["routerbench"], catalog, TrainOptions(), folds=5)
        say("RouterBench combined, 5-fold OOF (+ the other datasets' train sides)")
        others = [*train_side["routellm"], *train_side["dcrouter"]]
        ev.cross_val_evaluate(
            train_side["routerbench"], catalog, TrainOptions(), folds=5, extra_train=others
        )
    finally:
        ev._report = keep._real
    single, comb = keep.kept
    assert [p.text for p in single.prompts] == [p.text for p in comb.prompts]
    n = len(single.prompts)
    every = np.arange(n)
    a0, b0 = _aiq(single, every), _aiq(comb, every)
    diffs = []
    for _ in range(RESAMPLES):
        rows = rng.choice(n, n)
        diffs.append(_aiq(comb, rows) - _aiq(single, rows))
    diffs = np.array(diffs)
    pooling = {
        "single_aiq": round(a0, 5),
        "combined_aiq": round(b0, 5),
        "difference": round(b0 - a0, 5),
        **_interval(diffs),
        "share_of_resamples_at_target": round(float((diffs >= -0.001).mean()), 3),
    }
    say(f"pooling: {pooling}")

    q = np.nan_to_num(single.targets.quality)
    s, mask = single.scores["quality"], single.targets.labelled
    cells = []
    for task in np.unique(single.tasks):
        r = single.tasks == task
        for j, m in enumerate(single.models):
            y = q[r, j]
            if mask[r, j].all() and 0 < y.mean() < 1:
                cells.append((str(task), m, float(roc_auc_score(y, s[r, j])), int(r.sum())))
    aucs = np.array([c[2] for c in cells])
    weights = np.array([c[3] for c in cells])
    within = {
        "mean_auc": round(float(np.average(aucs, weights=weights)), 4),
        "min_auc": round(float(aucs.min()), 4),
        "max_auc": round(float(aucs.max()), 4),
        "cells": len(cells),
    }
    say(f"within-task AUC of the out-of-fold scores: {within}")
    needed = {}
    for auc in AUCS:
        runs = [_synthetic(single, auc, seed) for seed in range(5)]
        needed[f"{auc:g}"] = {
            "max_quality": round(float(np.mean([r[0] for r in runs])), 4),
            "cost_to_match_best": [None if r[1] is None else round(r[1], 3) for r in runs],
        }
        say(f"synthetic AUC {auc:g}: {needed[f'{auc:g}']}")
    return {"pooling": pooling, "within_task_auc": within, "synthetic": needed}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/promptroute-eval", help="folder for the JSON report")
    p.add_argument("--part", choices=("test", "rb"), required=True)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    catalog = load_catalog(None)
    recs = {name: load_records([str(f)]).records for name, f in FILES.items()}
    train_side = {name: split_records(r, "train") for name, r in recs.items()}
    rng = np.random.default_rng(0)
    if a.part == "test":
        test_side = {name: split_records(r, "test") for name, r in recs.items()}
        result = part_test(train_side, test_side, catalog, rng)
    else:
        result = part_rb(train_side, catalog, rng)
    path = out / f"issue14-noise-{a.part}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    say(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
