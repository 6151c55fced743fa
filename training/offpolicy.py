"""Off-policy evaluation: how a router would have done on traffic that another policy routed.

A decision log says how the one model the service chose did, never how the others would have.
When the service explores (routes a small, random share of requests to another eligible model)
each row also carries the **propensity** of the model it chose: the probability that the logging
policy picked that model. With it, the value of any other policy is estimable without bias.

Everything here goes through one matrix of *pseudo-outcomes* Γ (rows × models), one per
estimator, so that a policy's estimated value is simply the mean of Γ over its picks:

- inverse propensity (IPS): Γ[i, m] = 1[m = a_i] · r_i / p_i;
- doubly robust (DR): Γ[i, m] = r̂(x_i, m) + 1[m = a_i] · (r_i − r̂(x_i, m)) / p_i, where r̂ is a
  reward model (a router's quality head, trained on other data) — unbiased when either the
  propensities or r̂ are right, and far less variable than IPS when r̂ is close.

Rows of a labelled file with several outcomes need no estimate: Γ is the observed outcome there
(``direct`` cells); models such a row does not label get r̂ (the direct method), and are counted.
The same holds for cost (r = the call's cost, r̂ = the router's estimate).

Intervals are normal 95% intervals (mean ± 1.96 · sd / √n of the per-row terms; paired per row
when two routers are compared). Estimates are of a policy at one knob (mean quality and cost per
request). AIQ is not estimated off-policy: it takes the upper hull of a whole knob curve, and
the maximum over noisy estimated points is biased upward (in the loop simulation it came out
above 1).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from features.text import Prompt
from models.catalog import Catalog, estimate_tokens
from models.decision_rows import JoinReport, join_rows
from models.errors import DataError
from models.router import Router
from training.curves import choose
from training.labels import outcome_cost
from training.logs import parse_line
from training.records import Record

__all__ = [
    "LoggedDecision",
    "PseudoOutcomes",
    "compare_offpolicy",
    "evaluate_offpolicy",
    "has_propensities",
    "pseudo_outcomes",
    "read_decisions",
    "router_picks",
]

_Z95 = 1.959964


@dataclass(frozen=True)
class LoggedDecision:
    """One logged row: a single call with the propensity of its model, or a multi-outcome row.

    `model` and `propensity` are None for multi-outcome rows (their outcomes are observed).
    """

    record: Record
    model: str | None = None
    propensity: float | None = None
    # When the decision was made (the row's ``ts``, Unix seconds); None for labelled rows.
    ts: float | None = None


# ----------------------------------------------------------------------------- reading
def _lines(path: Path) -> Any:
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(str(path), None, "no such file") from None
    except OSError as e:
        raise DataError(str(path), None, f"cannot be read: {e.strerror or e}") from None
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return gzip.GzipFile(fileobj=raw, mode="rb")
    raw.seek(0)
    return raw


def _propensity(obj: dict[str, Any], where: str) -> float | None:
    value = obj.get("propensity")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(where, None, "propensity: must be a number in (0, 1]")
    if not (0.0 < float(value) <= 1.0):
        raise DataError(where, None, f"propensity: must be in (0, 1], got {value}")
    return float(value)


def _objects(paths: Sequence[str | Path]) -> Iterator[tuple[str, Any]]:
    for p in paths:
        path = Path(p)
        with _lines(path) as stream:
            for number, line in enumerate(stream, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as e:
                    raise DataError(str(path), number, f"not valid JSON: {e}") from None
                yield f"{path}:{number}", obj


def read_decisions(paths: Sequence[str | Path]) -> tuple[list[LoggedDecision], dict[str, int]]:
    """Read decision logs (and labelled multi-outcome files) for off-policy evaluation.

    Returns the usable rows and counts of what was set aside, by reason: ``no_feedback`` (a
    decision whose outcome never arrived), ``no_propensity`` (a single call logged without the
    propensity of its model: its policy is unknown, so it cannot be reweighted),
    ``label_only`` (a direct ``label`` row: no outcome to evaluate with) and ``no_decision`` (an
    outcome row whose decision row is in none of the files). Any other bad line
    raises `DataError` with its file and line.
    """
    out: list[LoggedDecision] = []
    skipped = {"no_feedback": 0, "no_propensity": 0, "label_only": 0, "no_decision": 0}
    report = JoinReport()
    # The service writes a decision's row and each outcome's row apart (possibly in different
    # processes' files): joined by request id first, across every file.
    for where, obj in join_rows(_objects(paths), report):
        if (
            isinstance(obj, dict)
            and obj.get("model") is not None
            and obj.get("quality") is None
            and obj.get("success") is None
        ):
            skipped["no_feedback"] += 1
            continue
        form, record = parse_line(obj, source=where)
        ts = _timestamp(obj)
        if form == "label":
            skipped["label_only"] += 1
        elif form == "outcomes":
            out.append(LoggedDecision(record, ts=ts))
        else:
            prop = _propensity(obj, where)
            if prop is None:
                skipped["no_propensity"] += 1
                continue
            (model,) = record.outcomes
            out.append(LoggedDecision(record, model, prop, ts=ts))
    skipped["no_decision"] = len(report.orphans)
    return out, skipped


def _timestamp(obj: Any) -> float | None:
    """The row's ``ts`` when it is a finite number (a decision row's), else None."""
    ts = obj.get("ts") if isinstance(obj, dict) else None
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return None
    return float(ts)


def has_propensities(paths: Sequence[str | Path], *, sample: int = 200) -> bool:
    """Whether the files look like decision logs: a row among the first `sample` lines of some
    file carries a ``propensity``."""
    for p in paths:
        try:
            stream = _lines(Path(p))
        except DataError:
            continue  # the loader that reads it next says what is wrong with it
        with stream:
            try:
                for i, line in enumerate(stream):
                    if i >= sample:
                        break
                    if b'"propensity"' in line:
                        return True
            except (OSError, EOFError, zlib.error):
                continue  # a broken gzip: the loader reports it with its line
    return False


# ----------------------------------------------------------------------------- Γ
@dataclass(frozen=True)
class PseudoOutcomes:
    """Γ matrices over `models` (rows × models); see the module docstring."""

    models: tuple[str, ...]
    prompts: list[Prompt]
    task_types: list[str | None]
    dr_quality: np.ndarray
    dr_cost: np.ndarray
    ips_quality: np.ndarray
    ips_cost: np.ndarray
    logged: np.ndarray  # (n,) index of the logged model, -1 on multi-outcome rows
    propensity: np.ndarray  # (n,) NaN on multi-outcome rows
    direct: np.ndarray  # (n, K) observed outcome cells of multi-outcome rows
    model_only: int  # cells of multi-outcome rows filled by the reward model alone


def _reward_model(
    decisions: Sequence[LoggedDecision],
    models: tuple[str, ...],
    catalog: Catalog,
    reward: Router | None,
) -> tuple[np.ndarray, np.ndarray]:
    """r̂ and ĉ (n, K): the reward router's calibrated quality and its cost estimate where it
    knows the model; elsewhere the model's mean logged quality and the catalog's estimate."""
    n, k = len(decisions), len(models)
    prompts = [d.record.prompt for d in decisions]
    qhat = np.full((n, k), np.nan)
    chat = np.full((n, k), np.nan)
    if reward is not None and "quality" in reward.heads:
        score, est = reward.score_batch(
            prompts, task_types=[d.record.task_type for d in decisions], strategy="quality"
        )
        for j, m in enumerate(models):
            i = reward.index.get(m)
            if i is not None:
                qhat[:, j], chat[:, j] = score[:, i], est[:, i]
    for j, m in enumerate(models):
        if np.isnan(qhat[:, j]).any():
            seen = [
                o.quality
                for d in decisions
                for mm, o in d.record.outcomes.items()
                if mm == m and o.quality is not None
            ]
            qhat[:, j] = float(np.mean(seen)) if seen else 0.5
        if np.isnan(chat[:, j]).any() and m in catalog:
            spec = catalog[m]
            chat[:, j] = [
                spec.cost_usd(estimate_tokens(len(p.text)), catalog.typical_output_tokens)
                for p in prompts
            ]
    return qhat, np.nan_to_num(chat)


def pseudo_outcomes(
    decisions: Sequence[LoggedDecision],
    models: Sequence[str],
    catalog: Catalog,
    reward: Router | None,
) -> PseudoOutcomes:
    """The Γ matrices of `decisions` over `models`. A logged model outside `models` makes the
    row's correction term vanish for every model in `models` (it is still a valid row)."""
    models = tuple(models)
    if not decisions:
        raise DataError("logs", None, "no usable decision to evaluate")
    index = {m: j for j, m in enumerate(models)}
    qhat, chat = _reward_model(decisions, models, catalog, reward)
    n, k = qhat.shape
    dr_q, dr_c = qhat.copy(), chat.copy()
    ips_q, ips_c = np.zeros((n, k)), np.zeros((n, k))
    logged = np.full(n, -1, dtype=np.int64)
    prop = np.full(n, np.nan)
    direct = np.zeros((n, k), dtype=bool)
    model_only = 0
    for i, d in enumerate(decisions):
        rec = d.record
        if d.model is None:  # multi-outcome: observed where labelled, r̂ elsewhere
            for m, o in rec.outcomes.items():
                j = index.get(m)
                if j is None or o.quality is None:
                    continue
                direct[i, j] = True
                dr_q[i, j] = ips_q[i, j] = o.quality
                dr_c[i, j] = ips_c[i, j] = outcome_cost(o, m, rec, catalog)
            missing = ~direct[i]
            ips_q[i, missing], ips_c[i, missing] = dr_q[i, missing], dr_c[i, missing]
            model_only += int(missing.sum())
            continue
        prop[i] = d.propensity
        j = index.get(d.model)
        if j is None:
            continue
        logged[i] = j
        o = rec.outcomes[d.model]
        r = float(o.quality)  # read_decisions keeps only labelled single calls
        c = outcome_cost(o, d.model, rec, catalog)
        w = 1.0 / float(d.propensity)
        dr_q[i, j] += w * (r - qhat[i, j])
        dr_c[i, j] += w * (c - chat[i, j])
        ips_q[i, j], ips_c[i, j] = w * r, w * c
    return PseudoOutcomes(
        models,
        [d.record.prompt for d in decisions],
        [d.record.task_type for d in decisions],
        dr_q,
        dr_c,
        ips_q,
        ips_c,
        logged,
        prop,
        direct,
        model_only,
    )


# ----------------------------------------------------------------------------- policies
def router_picks(router: Router, po: PseudoOutcomes, knob: float) -> np.ndarray:
    """(n,) the model (index into `po.models`) `router` picks per row at `knob`.

    The router chooses among the models it knows that are in `po.models`, as it would live.
    """
    cols = [router.index.get(m) for m in po.models]
    have = np.array([c is not None for c in cols])
    if have.sum() == 0:
        raise DataError("logs", None, "the router knows none of the logged models")
    score, est = router.score_batch(po.prompts, task_types=po.task_types)
    n = len(po.prompts)
    s = np.zeros((n, len(po.models)))
    rel = np.ones((n, len(po.models)))
    for j, c in enumerate(cols):
        if c is not None:
            s[:, j], rel[:, j] = score[:, c], est[:, c] / router.cost_ref
    mask = np.broadcast_to(have, s.shape)
    return choose(s, rel, 1.0, float(knob), mask)


def _interval(terms: np.ndarray) -> dict[str, Any]:
    """Mean of per-row terms with its normal 95% interval."""
    n = terms.size
    mean = float(terms.mean())
    half = _Z95 * float(terms.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return {"estimate": mean, "ci95": [mean - half, mean + half]}


def _estimates(po: PseudoOutcomes, pick: np.ndarray) -> dict[str, Any]:
    """IPS and DR estimates of one policy's mean quality and cost, and its support."""
    rows = np.arange(len(pick))
    single = po.logged >= 0
    return {
        "quality": {
            "ips": _interval(po.ips_quality[rows, pick]),
            "dr": _interval(po.dr_quality[rows, pick]),
        },
        "cost_usd": {
            "ips": _interval(po.ips_cost[rows, pick]),
            "dr": _interval(po.dr_cost[rows, pick]),
        },
        "calls": {
            m: round(float(np.mean(pick == j)), 4)
            for j, m in enumerate(po.models)
            if np.any(pick == j)
        },
        # Single calls whose logged model is the one this policy picks: the rows whose
        # outcomes (rather than the reward model) carry the estimate.
        "supporting_decisions": int(np.sum(single & (po.logged == pick))),
    }


def _summary(po: PseudoOutcomes) -> dict[str, Any]:
    single = po.logged >= 0
    p = po.propensity[single]
    rows = np.flatnonzero(single)
    observed = po.ips_quality[rows, po.logged[rows]] * po.propensity[rows]
    return {
        "n": len(po.prompts),
        "single_calls": int(single.sum()),
        "multi_outcome_rows": int(np.isnan(po.propensity).sum()),
        "direct_cells": int(po.direct.sum()),
        "model_only_cells": po.model_only,
        "min_propensity": float(p.min()) if p.size else None,
        # What the logging policy itself achieved on these rows (on-policy, no estimate).
        "logged_quality": float(observed.mean()) if rows.size else None,
    }


def _logged_models(decisions: Sequence[LoggedDecision]) -> set[str]:
    return {m for d in decisions for m, o in d.record.outcomes.items() if o.quality is not None}


def evaluate_offpolicy(
    router: Router,
    decisions: Sequence[LoggedDecision],
    catalog: Catalog,
    *,
    reward: Router | None = None,
    knob: float | None = None,
) -> dict[str, Any]:
    """Estimate how `router`, at `knob` (default: its own), would have done on `decisions`.

    `reward` is the reward model of the doubly robust estimate (default: `router` itself,
    whose quality head was trained on other data than the logs it is evaluated on).

    Returns a JSON-ready report: counts (``n``, ``single_calls``, ``direct_cells``, ...), and
    IPS and DR estimates of mean quality and cost per request, each with a 95% interval, plus
    ``supporting_decisions``.
    """
    models = tuple(sorted(set(router.models) | _logged_models(decisions)))
    po = pseudo_outcomes(decisions, models, catalog, reward or router)
    knob = router.default_knob if knob is None else float(knob)
    report = _summary(po)
    report["router_version"] = router.version
    report["knob"] = knob
    report.update(_estimates(po, router_picks(router, po, knob)))
    return report


def compare_offpolicy(
    candidate: Router,
    incumbent: Router,
    decisions: Sequence[LoggedDecision],
    catalog: Catalog,
    *,
    reward: Router | None = None,
) -> dict[str, Any]:
    """Both routers at their default knobs on the same Γ, and their paired differences.

    The routers are compared on the incumbent's trade-off, utility = quality − λ · cost / c_ref
    with the incumbent's default knob λ and cost scale c_ref (the price of quality the service
    runs at now). ``difference`` holds candidate − incumbent for utility, quality and cost (DR),
    each with a 95% interval from the per-row paired differences.
    """
    models = tuple(
        sorted(set(candidate.models) | set(incumbent.models) | _logged_models(decisions))
    )
    po = pseudo_outcomes(decisions, models, catalog, reward or candidate)
    out: dict[str, Any] = _summary(po)
    rows = np.arange(len(po.prompts))
    lam, ref = incumbent.default_knob, incumbent.cost_ref
    terms = {}
    for name, r in (("candidate", candidate), ("incumbent", incumbent)):
        pick = router_picks(r, po, r.default_knob)
        est = _estimates(po, pick)
        est["router_version"] = r.version
        est["knob"] = r.default_knob
        q, c = po.dr_quality[rows, pick], po.dr_cost[rows, pick]
        u = q - lam * c / ref
        est["utility"] = {"dr": _interval(u)}
        out[name] = est
        terms[name] = (u, q, c)
    (uc, qc, cc), (ui, qi, ci) = terms["candidate"], terms["incumbent"]
    out["trade_off"] = {"knob": lam, "cost_ref": ref}
    out["difference"] = {
        "utility": _interval(uc - ui),
        "quality": _interval(qc - qi),
        "cost_usd": _interval(cc - ci),
    }
    return out
