"""The learning loop, simulated on bundled data: does retraining from bandit feedback pay off?

The bundled datasets record every model's outcome on every prompt, so the loop can be replayed
with the truth at hand: RouterBench (the issue's choice, `--data routerbench`) and
LLMRouter-DCRouter (`--data llmrouter_dcrouter`). Only their train sides are read: the
simulation splits the bundled file once more, by a hash rule of its own:
``int(sha256(prompt)[56:64], 16) % 100 < 25`` is the simulation's **test set** (bytes that
neither the 80/20 split, the CV folds, the CV sample nor `cross_val_evaluate` read). Test rows
are used only for the final AIQ figures, never for a choice.

The rest (the pool) is ordered by ``sha256(prompt)[32:40]`` (a fixed shuffle):

1. the first `start_share` (10%) of the pool, with every model's outcome, trains the starting
   router; the whole pool with every outcome trains the full-data router (the ceiling);
2. the remainder arrives as traffic in `rounds` equal rounds. The serving router picks a model
   at its default knob; with probability `explore` the pick is replaced by a uniformly chosen
   other model. Only the chosen model's outcome is revealed, logged with its propensity;
3. after each round, as `promptroute retrain` would: a candidate is trained on the start data
   plus every decision logged so far except the newest `holdout_share` (20%), compared with the
   serving router on that newest slice off-policy (doubly robust estimates of the utility
   difference), and promoted by `training.loop.promotion_decision`: only when the lower end of
   the difference's 95% interval is above −margin;
4. because the simulation knows every outcome, it also measures what the loop cannot see: the
   true AIQ of both routers on the slice (did the 95% intervals cover it?) and on the test set
   (did a promotion ever ship a worse router?).

Every router is trained as `promptroute train` trains one (`TrainOptions()`: C chosen by
cross-validation), unless `train_options` says otherwise. The start → full-data AIQ gap comes
with a paired bootstrap standard error over the test prompts, so a gap smaller than its noise
is reported as such.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench._common import Target
from models.catalog import load_catalog
from models.router import Router
from training.curves import KNOB_GRID, choose, curve_aiq
from training.evaluate import evaluate
from training.labels import build_targets
from training.logs import load_records
from training.loop import LoopOptions, promotion_decision
from training.offpolicy import LoggedDecision, compare_offpolicy
from training.paths import bundled_data
from training.records import Record
from training.trainer import TrainOptions, train

__all__ = ["DATASETS", "run", "sim_test"]

SIM_TEST_PERCENT = 25
DATASETS = ("routerbench", "llmrouter_dcrouter")
_BOOTSTRAP = 400


def _h(text: str, lo: int, hi: int) -> int:
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[lo:hi], 16)


def sim_test(text: str) -> bool:
    """Whether a prompt is on the simulation's test side (see the module docstring)."""
    return _h(text, 56, 64) % 100 < SIM_TEST_PERCENT


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] loop: {msg}", flush=True)


def _route(
    router: Router, records: list[Record], explore: float, rng: np.random.Generator
) -> tuple[list[LoggedDecision], int]:
    """The service's decisions on `records`, with exploration; returns (logged rows, explored)."""
    score, est = router.score_batch(
        [r.prompt for r in records], task_types=[r.task_type for r in records]
    )
    mask = np.ones_like(score, dtype=bool)
    greedy = choose(score, est / router.cost_ref, 1.0, router.default_knob, mask)
    k = len(router.models)
    out, explored = [], 0
    for rec, g in zip(records, greedy, strict=True):
        if rng.random() < explore:
            others = [j for j in range(k) if j != g]
            pick, prop = int(rng.choice(others)), explore / (k - 1)
            explored += 1
        else:
            pick, prop = int(g), 1.0 - explore
        model = router.models[pick]
        seen = Record(
            prompt=rec.prompt,
            outcomes={model: rec.outcomes[model]},
            id=rec.id,
            task=rec.task,
            task_type=rec.task_type,
            source=rec.source,
        )
        out.append(LoggedDecision(seen, model, prop))
    return out, explored


def _aiq(router: Router, records: list[Record], catalog: Any) -> float:
    return float(evaluate(router, records, catalog)["router"]["aiq"])


def _picks(router: Router, records: list[Record], catalog: Any) -> tuple[np.ndarray, Any]:
    """(the router's pick per knob of `KNOB_GRID` and test prompt, the prompts' targets)."""
    t = build_targets(records, router.models, catalog)
    score, est = router.score_batch([r.prompt for r in records], masks=t.labelled)
    s = np.where(t.labelled, np.nan_to_num(score, nan=-1.0), -np.inf)
    rel = est / router.cost_ref
    return np.stack([choose(s, rel, 1.0, k, t.labelled) for k in KNOB_GRID]), t


def _aiq_of(picks: np.ndarray, q: np.ndarray, c: np.ndarray, mask: np.ndarray) -> float:
    """AIQ of the curve `picks` (knobs × rows) makes on rows with outcomes `q`, `c` — the
    computation of `training.evaluate` (hull anchored at the cheapest single model)."""
    rows = np.arange(q.shape[0])
    present = np.flatnonzero(mask.any(axis=0))
    sq = np.array([q[mask[:, j], j].mean() for j in present])
    sc = np.array([c[mask[:, j], j].mean() for j in present])
    return curve_aiq(
        c[rows[None, :], picks].mean(axis=1), q[rows[None, :], picks].mean(axis=1), sq, sc
    )


def gap_with_error(
    better: Router, worse: Router, records: list[Record], catalog: Any, *, seed: int = 0
) -> dict[str, float]:
    """AIQ(better) − AIQ(worse) on `records`, and its paired bootstrap standard error and 95%
    interval (the same resampled prompts for both routers)."""
    (pa, t), (pb, _) = _picks(better, records, catalog), _picks(worse, records, catalog)
    q, c, mask = np.nan_to_num(t.quality), np.nan_to_num(t.cost), t.labelled
    point = _aiq_of(pa, q, c, mask) - _aiq_of(pb, q, c, mask)
    rng = np.random.default_rng(seed)
    n = len(records)
    draws = []
    for _ in range(_BOOTSTRAP):
        i = rng.integers(0, n, size=n)
        draws.append(
            _aiq_of(pa[:, i], q[i], c[i], mask[i]) - _aiq_of(pb[:, i], q[i], c[i], mask[i])
        )
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return {
        "gap": round(point, 4),
        "se": round(float(np.std(draws, ddof=1)), 4),
        "ci95": [round(float(lo), 4), round(float(hi), 4)],
    }


def _covers(ci: list[float] | None, truth: float) -> bool:
    return ci is not None and ci[0] <= truth <= ci[1]


def run(
    *,
    data: str = "routerbench",
    rounds: int = 5,
    start_share: float = 0.1,
    explore: float = 0.1,
    holdout_share: float = LoopOptions.holdout_share,
    margin: float = LoopOptions.margin,
    seed: int = 0,
    seeds: int = 3,
    limit: int | None = None,
    train_options: TrainOptions | None = None,
    reward: str = "serving",  # the DR reward model: "serving" (as `retrain`) or "candidate"
    say: Callable[[str], None] = _say,
) -> dict[str, Any]:
    """Run the simulation; returns a JSON-ready result with per-round figures and targets.

    The traffic is replayed once per seed in ``seed .. seed + seeds − 1`` (the exploration
    draws differ; the start and full-data routers are shared), so coverage is counted over
    ``rounds × seeds`` rounds. `limit` keeps only the first records of the file (for smoke
    tests); `train_options` default to the product's (`TrainOptions()`).
    """
    if reward not in ("serving", "candidate"):
        raise ValueError(f"reward must be 'serving' or 'candidate', got {reward!r}")
    if data not in DATASETS:
        raise ValueError(f"data must be one of {', '.join(DATASETS)}, got {data!r}")
    opts = train_options or TrainOptions()
    loop = LoopOptions(holdout_share=holdout_share, margin=margin)
    catalog = load_catalog()
    path = next(p for p in bundled_data() if p.name.startswith(data + "."))
    records = load_records(path).records[: limit or None]
    test = [r for r in records if sim_test(r.prompt.text)]
    pool = sorted(
        (r for r in records if not sim_test(r.prompt.text)), key=lambda r: _h(r.prompt.text, 32, 40)
    )
    n_start = max(2, int(round(len(pool) * start_share)))
    start, stream = pool[:n_start], pool[n_start:]
    say(
        f"{len(records)} records: {len(test)} simulation-test, {len(start)} start, {len(stream)} traffic"
    )

    t0 = time.perf_counter()
    full = train(pool, catalog, opts).router
    start_router = train(start, catalog, opts).router
    aiq_full, aiq_start = _aiq(full, test, catalog), _aiq(start_router, test, catalog)
    gap = aiq_full - aiq_start
    gap_error = gap_with_error(full, start_router, test, catalog, seed=seed)
    # A gap within two standard errors of zero is noise: "half of it closed" would mean nothing.
    real_gap = gap > 2 * gap_error["se"]
    say(
        f"test AIQ: start {aiq_start:.4f}, full data {aiq_full:.4f} (gap {gap:+.4f}, "
        f"bootstrap s.e. {gap_error['se']:.4f})"
    )

    per_round: list[dict[str, Any]] = []
    chunks = np.array_split(np.arange(len(stream)), rounds)
    total_explored = total_decisions = 0
    for run_seed in range(seed, seed + seeds):
        rng = np.random.default_rng(run_seed)
        serving, aiq_serving = start_router, aiq_start
        logged_so_far: list[LoggedDecision] = []
        seen_so_far: list[Record] = []  # the same traffic with every outcome (the truth)
        for r, idx in enumerate(chunks, start=1):
            traffic = [stream[i] for i in idx]
            logged, explored = _route(serving, traffic, explore, rng)
            total_explored += explored
            total_decisions += len(logged)
            # As `promptroute retrain` does: every decision logged so far, the newest share held
            # out for the comparison, the candidate trained on the rest and the start data.
            logged_so_far += logged
            seen_so_far += traffic
            k = max(1, int(round(len(logged_so_far) * holdout_share)))
            older, newest = logged_so_far[:-k], logged_so_far[-k:]
            truth_rows = [LoggedDecision(rec) for rec in seen_so_far[-k:]]
            train_records = start + [d.record for d in older]
            candidate = train(train_records, catalog, opts).router
            est = compare_offpolicy(
                candidate, serving, newest, catalog, reward=serving if reward == "serving" else None
            )
            true = compare_offpolicy(candidate, serving, truth_rows, catalog)  # every outcome known
            on_test = compare_offpolicy(
                candidate, serving, [LoggedDecision(x) for x in test], catalog
            )
            promote, why = promotion_decision(est, loop.margin)
            aiq_candidate = _aiq(candidate, test, catalog)
            e_q, e_qi = est["candidate"]["quality"]["dr"], est["candidate"]["quality"]["ips"]
            t_q = true["candidate"]["quality"]["dr"]["estimate"]
            e_u = est["difference"]["utility"]
            t_u = true["difference"]["utility"]["estimate"]
            row = {
                "seed": run_seed,
                "round": r,
                "decisions": len(logged),
                "explored": explored,
                "train_records": len(train_records),
                "slice_rows": len(newest),
                "supporting_decisions": est["candidate"]["supporting_decisions"],
                "slice_candidate_quality": {"dr": e_q, "ips": e_qi, "true": t_q},
                "slice_utility_difference": {"dr": e_u, "true": t_u},
                "covered": {
                    "quality_dr": _covers(e_q["ci95"], t_q),
                    "quality_ips": _covers(e_qi["ci95"], t_q),
                    "utility_difference_dr": _covers(e_u["ci95"], t_u),
                },
                "promoted": promote,
                "reason": why,
                "test_aiq_candidate": round(aiq_candidate, 4),
                "test_aiq_serving_before": round(aiq_serving, 4),
                "test_utility_difference": round(on_test["difference"]["utility"]["estimate"], 5),
                "promoted_worse_on_test": bool(promote and aiq_candidate < aiq_serving),
            }
            if promote:
                serving, aiq_serving = candidate, aiq_candidate
            row["test_aiq_serving_after"] = round(aiq_serving, 4)
            row["gap_closed"] = round((aiq_serving - aiq_start) / gap, 3) if real_gap else None
            row["gap_closed_by_candidate"] = (
                round((aiq_candidate - aiq_start) / gap, 3) if real_gap else None
            )
            per_round.append(row)
            say(
                f"seed {run_seed} round {r}: {'promoted' if promote else 'kept'} (utility diff est "
                f"{e_u['estimate']:+.4f}, true {t_u:+.4f}); test AIQ serving {aiq_serving:.4f},"
                f" gap closed {row['gap_closed']}"
            )

    # Per traffic seed, the most of the gap the serving router had closed by round 3; the
    # figure is the worst seed.
    best3 = min(
        max((x["gap_closed"] or 0.0) for x in per_round if x["seed"] == sd and x["round"] <= 3)
        for sd in range(seed, seed + seeds)
    )
    cover = {
        key: float(np.mean([x["covered"][key] for x in per_round]))
        for key in ("quality_dr", "quality_ips", "utility_difference_dr")
    }
    worse = sum(x["promoted_worse_on_test"] for x in per_round)
    share = total_explored / max(total_decisions, 1)
    targets = [
        Target(
            "share of the start→full AIQ gap closed within 3 rounds",
            ">= 0.5",
            f"{best3:.2f}"
            if real_gap
            else f"no gap (full − start = {gap:+.4f}, s.e. {gap_error['se']:.4f})",
            best3 >= 0.5 if real_gap else None,
            ""
            if real_gap
            else "the full-data router is not better than the start router beyond noise on the "
            "simulation test side",
        ),
        Target(
            "rounds whose 95% interval (DR quality of the candidate) covers the truth",
            ">= 90%",
            f"{cover['quality_dr']:.0%}",
            cover["quality_dr"] >= 0.9,
        ),
        Target("rounds that promoted a router worse on the test side", "0", str(worse), worse == 0),
    ]
    return {
        "setup": {
            "data": path.name,
            "sim_test_rule": "int(sha256(prompt)[56:64], 16) % 100 < 25",
            "records": len(records),
            "test": len(test),
            "start": len(start),
            "traffic": len(stream),
            "rounds": rounds,
            "explore": explore,
            "holdout_share": holdout_share,
            "margin": margin,
            "seeds": list(range(seed, seed + seeds)),
            "train_options": {"c_grid": list(opts.c_grid), "strategy": opts.strategy},
            "bootstrap_draws": _BOOTSTRAP,
            "reward_model": reward,
        },
        "test_aiq": {
            "start": round(aiq_start, 4),
            "full_data": round(aiq_full, 4),
            "gap": round(gap, 4),
            "gap_bootstrap": gap_error,
            "gap_beyond_noise": bool(real_gap),
        },
        "rounds": per_round,
        "exploration_share_spent": round(share, 4),
        "coverage": cover,
        "loop_seconds": round(time.perf_counter() - t0, 1),
        "targets": [t.to_dict() for t in targets],
    }
