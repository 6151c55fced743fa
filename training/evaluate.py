"""Offline evaluation: how a trained router trades quality against cost on labelled records.

The report's field names are a stable interface (scripts and dashboards read them):

    n, models, single_models{MODEL: {quality, cost}}, oracle{quality, cost},
    heuristic{quality, cost}, router{curve[{knob, quality, cost, calls}], aiq, max_quality,
    cost_to_match_best, cost_to_95pct_best, accuracy, macro_f1}, zero_router{aiq},
    two_model{strong, weak, apgr, cpt50, cpt80} | null, cascade{...} | null, by_task{TASK: {...}}

`cascade` (see `_cascade`) compares escalation after the call (call the cheap model, score its
answer with the artifact's verifier, call the strong model below a threshold; the cheap call is
always paid) with the pre-call router on the same records: both curves, APGR, cost to reach
95% of the strong model, added latency where the logs have it, and whether the cascade pays.

`cost` is mean USD per request. The router sees only the prompt (and `task_type` when a log row
carries that request field); `task` only groups the report. Curves come from a sweep of the
decision knob (training/curves.py); `two_model` thresholds the strong-vs-weak score difference,
as RouteLLM thresholds its win rate, so the strong-call share spans 0..1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

from features.text import Prompt
from models.catalog import Catalog
from models.router import Router, mixture_draw
from models.verifier import Verifier
from training import metrics
from training.cascade import escalation_curve
from training.curves import KNOB_GRID, choose_mixed, curve_aiq, sweep
from training.heuristic import HeuristicRouter
from training.labels import Targets, build_targets
from training.progress import featurise
from training.records import Record
from training.trainer import TrainOptions

__all__ = ["cross_val_evaluate", "evaluate"]


def _r(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


@dataclass
class _Scored:
    """Everything the summaries need, detached from any one router (CV stitches several)."""

    models: tuple[str, ...]
    targets: Targets
    prompts: list[Prompt]
    tasks: np.ndarray
    scores: dict[str, np.ndarray]  # strategy -> (n, K)
    rel_cost: np.ndarray  # estimated cost / c_ref, (n, K): what the knob multiplies
    default_knob: float
    # the default policy's choice per prompt (a knob mix applied with each prompt's draw)
    default_pick: np.ndarray
    records: Sequence[Record] = ()
    verifiers: dict[str, Verifier] | None = None
    catalog: Catalog | None = None


def _kept(records: Sequence[Record], known: set[str]) -> list[Record]:
    return [r for r in records if sum(1 for m in r.labelled_models if m in known) >= 2]


def skip_reasons(records: Sequence[Record], known: set[str]) -> dict[str, int]:
    """Why records are left out of an evaluation, counted: a router is measured only where at
    least two models it knows have an outcome (otherwise there is no choice to score)."""
    reasons: dict[str, int] = {}
    for r in records:
        labelled = [m for m in r.labelled_models if m in known]
        if len(labelled) >= 2:
            continue
        if r.label is not None and not r.labelled_models:
            why = "directly labelled (a best-model label, no outcomes to measure)"
        elif not r.labelled_models:
            why = "no outcome with a quality"
        elif len(r.labelled_models) > len(labelled):
            why = "fewer than 2 labelled models that the router knows"
        else:
            why = "only 1 labelled model (no choice to score)"
        reasons[why] = reasons.get(why, 0) + 1
    return dict(sorted(reasons.items(), key=lambda kv: -kv[1]))


def evaluate(
    router: Router,
    records: Sequence[Record],
    catalog: Catalog,
    *,
    tolerance: float = 0.0,
    strategy: str | None = None,
    knobs: Sequence[float] = KNOB_GRID,
    min_task_size: int = 20,
) -> dict[str, Any]:
    """Evaluate `router` on `records` (those with ≥ 2 labelled models the router knows)."""
    kept = _kept(records, set(router.models))
    if not kept:
        raise ValueError("no record has two or more labelled models that the router knows")
    t = build_targets(kept, router.models, catalog, tolerance=tolerance)
    prompts = [r.prompt for r in kept]
    X = featurise(router.featurizer, kept)
    scores, est = {}, None
    for s in router.heads:
        scores[s], est = router.score_batch(prompts, X=X, strategy=s, masks=t.labelled)
    strategy = strategy or router.default_strategy
    rel = est / router.cost_ref
    sc = _Scored(
        router.models,
        t,
        prompts,
        np.array([r.task or "" for r in kept]),
        scores,
        rel,
        router.default_knob,
        _policy_pick(router, prompts, scores[strategy], rel, t.labelled),
        kept,
        router.verifiers,
        catalog,
    )
    report = _report(sc, catalog, strategy, knobs, min_task_size)
    report["default_policy_knobs"] = _mix_of(router)
    report["n_skipped"] = len(records) - len(kept)
    report["skipped_by_reason"] = skip_reasons(records, set(router.models))
    return report


def cross_val_evaluate(
    records: Sequence[Record],
    catalog: Catalog,
    options: TrainOptions,
    *,
    folds: int = 5,
    knobs: Sequence[float] = KNOB_GRID,
    min_task_size: int = 20,
    progress=None,
    extra_train: Sequence[Record] = (),
    targets: Sequence[dict[str, float]] = (),
) -> dict[str, Any]:
    """Evaluate out of fold: train on k−1 folds, score the held-out one, report on all of them.

    For data whose test side is held out elsewhere (routerbench), this is the honest figure.
    `extra_train` records join every fold's training set (never its test fold): a combined
    model's figure on this data. Each of `targets` (``{"target_budget": 0.3}`` or
    ``{"target_strong_share": 0.2}``) re-applies that knob target to each fold's router and
    reports what its default policy achieves on the held-out folds (`targets` in the report).
    """
    from training.policy import retarget
    from training.trainer import train

    say = progress or (lambda _m: None)
    models = tuple(sorted({m for r in records for m in r.labelled_models}))
    kept = _kept(records, set(models))
    t = build_targets(kept, models, catalog, tolerance=options.tolerance)
    prompts = [r.prompt for r in kept]
    # Different hash bytes than the inner CV folds, so the two never line up.
    fid = np.array(
        [
            int(hashlib.sha256(p.text.encode("utf-8")).hexdigest()[16:24], 16) % folds
            for p in prompts
        ]
    )
    n, k = t.quality.shape
    scores: dict[str, np.ndarray] = {}
    rel = np.zeros((n, k))
    knob_sum = 0.0
    pick = np.zeros(n, dtype=np.int64)
    mixes = []
    target_picks = [np.zeros(n, dtype=np.int64) for _ in targets]
    for f in range(folds):
        tr = [kept[i] for i in np.flatnonzero(fid != f)]
        te = np.flatnonzero(fid == f)
        say(f"fold {f + 1}/{folds}: training on {len(tr)} records")
        result = train([*tr, *extra_train], catalog, options)
        router = result.router
        knob_sum += router.default_knob
        cols = [router.index.get(m) for m in models]
        te_prompts = [prompts[i] for i in te]
        X = router.featurizer.transform(
            te_prompts, task_types=[kept[i].task_type for i in te]
        ).tocsr()
        for s in router.heads:
            sf, est = router.score_batch(te_prompts, X=X, strategy=s, masks=None)
            out = scores.setdefault(s, np.full((n, k), np.nan))
            for j, cj in enumerate(cols):
                if cj is not None:
                    out[te, j] = sf[:, cj]
                    rel[te, j] = est[:, cj] / router.cost_ref
        if "classifier" in router.heads:  # renormalise the softmax over each prompt's models
            cs = scores["classifier"][te]
            m = t.labelled[te]
            cs = np.where(m, np.nan_to_num(cs), 0.0)
            scores["classifier"][te] = cs / np.maximum(cs.sum(axis=1, keepdims=True), 1e-12)
        s_def = scores[router.default_strategy][te]
        pick[te] = _policy_pick(
            router,
            te_prompts,
            np.where(t.labelled[te], np.nan_to_num(s_def, nan=-1.0), -np.inf),
            rel[te],
            t.labelled[te],
        )
        mixes.append(_mix_of(router))
        masked = np.where(t.labelled[te], np.nan_to_num(s_def, nan=-1.0), -np.inf)
        for want, tp in zip(targets, target_picks, strict=True):
            if "cv_policy_curve" not in result.report:
                continue
            retarget(router, result.report["cv_policy_curve"], **want)  # after the default pick
            tp[te] = _policy_pick(router, te_prompts, masked, rel[te], t.labelled[te])
    strategy = options.strategy if options.strategy != "auto" else "quality"
    sc = _Scored(
        models,
        t,
        prompts,
        np.array([r.task or "" for r in kept]),
        scores,
        rel,
        knob_sum / folds,
        pick,
    )
    report = _report(
        sc, catalog, strategy if strategy in scores else next(iter(scores)), knobs, min_task_size
    )
    report["n_skipped"] = len(records) - len(kept)
    report["skipped_by_reason"] = skip_reasons(records, set(models))
    report["cv_folds"] = folds
    report["default_policy_knobs"] = mixes
    report["targets"] = [
        {**want, **_policy_point(t, pick_t)}
        for want, pick_t in zip(targets, target_picks, strict=True)
    ]
    return report


def _policy_point(t: Targets, pick: np.ndarray) -> dict[str, Any]:
    """Quality, budget share and strong-call share of one pick per record, per model set
    (shares relative to the set's best single model), pooled by records."""
    labelled = t.labelled
    groups: dict[bytes, list[int]] = {}
    for i in range(len(pick)):
        groups.setdefault(labelled[i].tobytes(), []).append(i)
    sums = np.zeros(4)
    for members in groups.values():
        g = np.array(members)
        mask = labelled[g]
        cols = np.flatnonzero(mask[0])
        q = np.nan_to_num(t.quality[g])
        c = np.nan_to_num(t.cost[g])
        sq, sc_ = q[:, cols].mean(axis=0), c[:, cols].mean(axis=0)
        best = int(cols[int(np.lexsort((sc_, -sq))[0])])
        rr = np.arange(len(g))
        sums += (
            q[rr, pick[g]].sum(),
            c[rr, pick[g]].sum(),
            c[:, best].sum(),
            (pick[g] == best).sum(),
        )
    n = max(len(pick), 1)
    return {
        "quality": _r(sums[0] / n),
        "budget_share": _r(sums[1] / sums[2], 4) if sums[2] else None,
        "strong_share": _r(sums[3] / n, 4),
    }


def _mix_of(router: Router) -> dict[str, Any]:
    mix = router.knob_mix
    if mix is None:
        return {"knob": router.default_knob}
    return {"knob": mix.low, "knob_high": mix.high, "p_high": round(mix.p_high, 4)}


def _policy_pick(
    router: Router,
    prompts: Sequence[Prompt],
    score: np.ndarray,
    rel: np.ndarray,
    masks: np.ndarray,
) -> np.ndarray:
    """The model the router's default policy picks per prompt, with the service's draws."""
    s = np.where(masks, np.nan_to_num(score, nan=-1.0), -np.inf)
    mix = router.knob_mix
    draws = None if mix is None else np.array([mixture_draw(p) for p in prompts])
    return choose_mixed(s, rel, 1.0, router.default_knob, mix, draws, masks)


def _report(
    sc: _Scored, catalog: Catalog, strategy: str, knobs: Sequence[float], min_task_size: int
) -> dict[str, Any]:
    t = sc.targets
    masks = t.labelled
    index = {m: i for i, m in enumerate(sc.models)}
    heuristic = HeuristicRouter(catalog)
    h_pick = np.array(
        [
            index[heuristic.choose(p, [sc.models[j] for j in np.flatnonzero(m)])]
            for p, m in zip(sc.prompts, masks, strict=True)
        ]
    )

    def summary(rows: np.ndarray, s: str) -> dict[str, Any]:
        return _summary(sc, rows, s, h_pick, knobs)

    all_rows = np.arange(len(sc.prompts))
    report: dict[str, Any] = {
        "n": len(sc.prompts),
        "strategy": strategy,
        "knob_default": sc.default_knob,
    }
    report.update(summary(all_rows, strategy))
    report["router_alternatives"] = {
        s: {k: v for k, v in summary(all_rows, s)["router"].items() if k != "curve"}
        for s in sc.scores
        if s != strategy
    }
    by_task: dict[str, Any] = {}
    for task in sorted(set(sc.tasks.tolist()) - {""}):
        rows = np.flatnonzero(sc.tasks == task)
        if rows.size >= min_task_size:
            by_task[task] = summary(rows, strategy)
    report["by_task"] = by_task
    return report


def _summary(
    sc: _Scored, rows: np.ndarray, strategy: str, h_pick: np.ndarray, knobs: Sequence[float]
) -> dict[str, Any]:
    t = sc.targets
    mask = t.labelled[rows]
    present = np.flatnonzero(mask.any(axis=0))
    q = np.nan_to_num(t.quality[rows])
    c = np.nan_to_num(t.cost[rows])
    models = [sc.models[j] for j in present]
    single = {}
    for j in present:
        have = mask[:, j]
        single[sc.models[j]] = {"quality": _r(q[have, j].mean()), "cost": _r(c[have, j].mean(), 9)}
    # The oracle: per prompt the best quality, at the cheapest model reaching it.
    qm = np.where(mask, q, -np.inf)
    best = qm.max(axis=1, keepdims=True)
    oracle_pick = np.argmin(np.where(qm >= best - 1e-12, c, np.inf), axis=1)
    idx = np.arange(len(rows))
    oracle = {"quality": _r(q[idx, oracle_pick].mean()), "cost": _r(c[idx, oracle_pick].mean(), 9)}
    hp = h_pick[rows]
    heur = {"quality": _r(q[idx, hp].mean()), "cost": _r(c[idx, hp].mean(), 9)}

    score = sc.scores[strategy][rows]
    s = np.where(mask, np.nan_to_num(score, nan=-1.0), -np.inf)
    rel = sc.rel_cost[rows]
    curve = sweep(s, rel, 1.0, q, c, mask, knobs)
    costs = np.array([p.cost for p in curve])
    quals = np.array([p.quality for p in curve])
    # Unrounded means: a router that exactly reaches the best model must count as matching it.
    sq = np.array([q[mask[:, j], j].mean() for j in present])
    scost = np.array([c[mask[:, j], j].mean() for j in present])
    best_j = int(np.lexsort((scost, -sq))[0])  # best single model: highest quality, then cheapest
    best_q, best_c = float(sq[best_j]), float(scost[best_j])

    def frac(target: float) -> float | None:
        hit = metrics.cost_to_reach(costs, quals, target)
        return None if hit is None or best_c <= 0 else _r(hit / best_c, 4)

    spread = scost.max() > scost.min()
    aiq = curve_aiq(costs, quals, sq, scost) if spread else None
    zero = metrics.zero_router_aiq(scost, sq) if spread else None

    # Accuracy of the decision at the default policy against the derived best-model label.
    pick = sc.default_pick[rows]
    lab = t.label[rows]
    has = lab >= 0
    acc = f1 = None
    if has.any():
        acc = float(np.mean(pick[has] == lab[has]))
        f1 = float(
            f1_score(
                lab[has], pick[has], average="macro", labels=np.unique(lab[has]), zero_division=0
            )
        )

    # The best pure curve point that costs no more than the heuristic.
    under = costs <= heur["cost"] + 1e-15
    at_h_cost = float(quals[under].max()) if under.any() else None

    out = {
        "n": int(len(rows)),
        "models": models,
        "single_models": single,
        "oracle": oracle,
        "heuristic": heur,
        "router": {
            "curve": [
                {
                    "knob": p.knob,
                    "quality": _r(p.quality),
                    "cost": _r(p.cost, 9),
                    "calls": {sc.models[j]: _r(p.calls[j], 4) for j in present},
                }
                for p in curve
            ],
            "aiq": _r(aiq),
            "max_quality": _r(quals.max()),
            "cost_to_match_best": frac(best_q),
            "cost_to_95pct_best": frac(0.95 * best_q),
            "accuracy": _r(acc, 4),
            "macro_f1": _r(f1, 4),
            "quality_at_heuristic_cost": _r(at_h_cost),
            "beats_heuristic": bool(at_h_cost is not None and at_h_cost > heur["quality"]),
        },
        "default_policy": {
            "quality": _r(q[idx, pick].mean()),
            "cost": _r(c[idx, pick].mean(), 9),
            "budget_share": _r(c[idx, pick].mean() / best_c, 4) if best_c > 0 else None,
            "strong_share": _r(float(np.mean(pick == present[best_j])), 4),
        },
        "zero_router": {"aiq": _r(zero)},
        "best_single": {"model": models[best_j], "quality": _r(best_q), "cost": _r(best_c, 9)},
        "two_model": None,
    }
    if len(present) == 2 and mask[:, present].all():
        out["two_model"] = _two_model(sc.models, present, q, score, single)
    out["cascade"] = _cascade(sc, rows, strategy, present, sq, scost)
    return out


def _auc(score: np.ndarray, correct: np.ndarray) -> float | None:
    hard = (correct == 0) | (correct == 1)
    if len(set(correct[hard].tolist())) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return _r(roc_auc_score(correct[hard], score[hard]), 4)


def _break_even(pre: dict[str, Any], cas: dict[str, Any]) -> float | None:
    """The cheap/strong price ratio below which the cascade reaches 95% of the strong model
    for less than the pre-call router: 1 − s_cascade / s_precall, from the strong-call shares
    each needs (costs per request taken as proportional to the mean; None if one never gets
    there). Cascade r + s_c < pre-call (1 − s_p)·r + s_p ⇔ r < 1 − s_c / s_p."""
    s_c, s_p = cas["strong_share_at_95pct"], pre["strong_share_at_95pct"]
    if s_c is None or s_p is None or s_p <= 0:
        return None
    return _r(max(1.0 - s_c / s_p, 0.0), 4)


def _latency(records: Sequence[Record], model: str) -> np.ndarray | None:
    lat = [r.outcomes[model].latency_ms for r in records]
    return None if any(v is None for v in lat) else np.array(lat, dtype=np.float64)


def _cascade(
    sc: _Scored,
    rows: np.ndarray,
    strategy: str,
    present: np.ndarray,
    sq: np.ndarray,
    scost: np.ndarray,
) -> dict[str, Any] | None:
    """Escalation after the call vs routing before it, on the same records (cheap → best).

    The cheap model is the cheapest single model, the strong one the best; records where both
    are labelled take part. The cascade's score is the verifier's P(right) of the cheap model's
    logged answer. Where the logs carry no answer text (or the artifact has no verifier), a
    cascade can only order requests by the prompt, as the pre-call router does, and pays the
    cheap call on top: that is the curve reported, with ``score_source`` saying so.
    """
    if not sc.records or sc.catalog is None or len(present) < 2:
        return None
    weak_j, strong_j = int(present[int(np.argmin(scost))]), int(present[int(np.argmax(sq))])
    if weak_j == strong_j:
        return None
    t = sc.targets
    both = rows[t.labelled[rows, weak_j] & t.labelled[rows, strong_j]]
    weak, strong = sc.models[weak_j], sc.models[strong_j]
    verifier = (sc.verifiers or {}).get(weak)
    answered = [i for i in both if sc.records[i].outcomes[weak].response is not None]
    use_answers = verifier is not None and len(answered) >= 20
    sel = np.array(answered if use_answers else both, dtype=np.int64)
    if sel.size < 20:
        return None
    recs = [sc.records[i] for i in sel]
    qw, qs = t.quality[sel, weak_j], t.quality[sel, strong_j]
    cw, cs = t.cost[sel, weak_j], t.cost[sel, strong_j]
    lw, ls = _latency(recs, weak), _latency(recs, strong)
    # Pre-call: escalate where the router prefers the strong model most (RouteLLM's ordering).
    score = sc.scores[strategy]
    pref = np.nan_to_num(score[sel, weak_j]) - np.nan_to_num(score[sel, strong_j])
    pre = escalation_curve(
        pref, qw, qs, cw, cs, cheap_always_paid=False, lat_weak=lw, lat_strong=ls
    )
    if use_answers:
        assert verifier is not None
        vs = verifier.score_many(
            [r.prompt.text for r in recs], [r.outcomes[weak].response or "" for r in recs]
        )
        source = f"verifier on {weak}'s logged answer"
    else:
        vs = pref
        source = (
            "prompt only: "
            + ("the logs have no answer text" if verifier is not None else "no verifier")
            + f" for {weak}, so the cascade orders requests as the pre-call router does"
        )
    cas = escalation_curve(vs, qw, qs, cw, cs, cheap_always_paid=True, lat_weak=lw, lat_strong=ls)
    pre_s, cas_s = pre.summary(), cas.summary()

    def reach(summary: dict[str, Any]) -> float:
        v = summary["cost_to_95pct_strong"]
        return float("inf") if v is None else float(v)

    out: dict[str, Any] = {
        "weak": weak,
        "strong": strong,
        "n": int(sel.size),
        "score_source": source,
        "weak_cost_share": _r(float(cw.mean() / cs.mean()), 4) if cs.mean() > 0 else None,
        "auc_weak_right": {"cascade": _auc(vs, qw), "precall": _auc(pref, qw)},
        "precall": pre_s,
        "cascade": cas_s,
        "pays": bool(reach(cas_s) < reach(pre_s)),
        "break_even_weak_cost_share": _break_even(pre_s, cas_s),
    }
    if use_answers and verifier is not None:
        th = verifier.threshold
        esc = vs < th
        out["at_default_threshold"] = {
            "threshold": _r(th, 4),
            "strong_share": _r(float(esc.mean()), 4),
            "quality": _r(float(np.where(esc, qs, qw).mean())),
            "cost_vs_strong": _r(float((cw + np.where(esc, cs, 0.0)).mean() / cs.mean()), 4),
        }
    if lw is not None and ls is not None:
        out["latency"] = {
            "weak_ms": _r(float(lw.mean()), 1),
            "strong_ms": _r(float(ls.mean()), 1),
            "added_ms_at_95pct": (
                None
                if cas_s["latency_ms_at_95pct"] is None or pre_s["latency_ms_at_95pct"] is None
                else _r(cas_s["latency_ms_at_95pct"] - pre_s["latency_ms_at_95pct"], 1)
            ),
        }
    else:
        out["latency"] = None  # the logs have no latency for one of the two models
    return out


def _two_model(
    models: Sequence[str],
    present: np.ndarray,
    q: np.ndarray,
    score: np.ndarray,
    single: dict[str, Any],
) -> dict[str, Any]:
    a, b = (int(j) for j in present)
    if single[models[a]]["quality"] < single[models[b]]["quality"]:
        a, b = b, a
    strong, weak = a, b
    pref = score[:, strong] - score[:, weak]
    order = np.argsort(-pref, kind="stable")
    n = len(order)
    # k prompts (highest preference first) go to the strong model, k = 0..n.
    gain = np.concatenate([[0.0], np.cumsum(q[order, strong] - q[order, weak])])
    quality = q[:, weak].mean() + gain / n
    share = np.arange(n + 1) / n
    qs, qw = float(q[:, strong].mean()), float(q[:, weak].mean())
    return {
        "strong": models[strong],
        "weak": models[weak],
        "apgr": _r(metrics.apgr(share, quality, qw, qs), 4),
        "cpt50": _r(metrics.cpt(share, quality, qw, qs, 0.5), 4),
        "cpt80": _r(metrics.cpt(share, quality, qw, qs, 0.8), 4),
    }
