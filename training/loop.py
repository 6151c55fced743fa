"""The learning loop's decisions: which models are routable yet, and whether a candidate ships.

`retrain` (the engine of ``promptroute retrain``) reads decision logs and labelled files, holds
out the newest slice of the decision rows, trains a candidate on everything older, compares it
with the serving artifact on that slice and promotes it only when it is not worse beyond a
stated margin:

- rows of the slice with several observed outcomes are compared directly (their outcomes);
- single calls are compared off-policy (`training.offpolicy`, doubly robust) when they carry a
  propensity. The reward model is the serving router's quality head: it never saw the slice
  and did not choose the candidate's picks. The candidate's own head, tried first, rates the
  models it picks too highly (it picked them for their high predictions): in the loop
  simulation its intervals of the candidate's quality covered the truth in 80% of RouterBench
  rounds against 93% with the serving router's;
- the rule: both routers are scored at their default knobs on the serving router's trade-off,
  utility = quality − λ · cost / c_ref (its knob λ and cost scale); the candidate is promoted
  only when the **lower end** of the paired 95% interval of its utility minus the serving
  router's is at least ``−margin``: the data must show it is not worse beyond the margin, not
  merely fail to show that it is worse. (A rule on the point estimate promoted, in the loop
  simulation, 7 routers of 9 that were worse on the test side: slices of ~100 decisions leave
  intervals ±0.02-0.04 wide.) The report keeps the interval, quality and cost separately, and
  the number of decisions that support each estimate.

A catalog model without learned scores (a new model) becomes routable once it has at least
``min_outcomes`` labelled outcomes in the training part (from ``promptroute label`` or from the
service's exploration); until then its outcomes are left out of training, so the candidate
never routes to a model it knows almost nothing about.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.artifact import load_router, save_router
from models.catalog import Catalog
from models.errors import DataError
from models.router import Router
from training.offpolicy import LoggedDecision, compare_offpolicy, read_decisions
from training.records import Record

__all__ = [
    "LoopOptions",
    "promotion_decision",
    "retrain",
    "routable_records",
    "write_report",
]


@dataclass
class LoopOptions:
    """Options of the loop; validated on construction and written into each report."""

    holdout_share: float = 0.2  # newest share of the decision rows kept for the comparison
    margin: float = 0.005  # the candidate may trail the serving router's utility by this much
    min_outcomes: int = 30  # labelled outcomes a model needs before the loop routes to it

    def __post_init__(self) -> None:
        if not (0.0 < self.holdout_share < 1.0):
            raise ValueError("holdout_share: must be between 0 and 1 (exclusive)")
        if not (0.0 <= self.margin <= 1.0 and math.isfinite(self.margin)):
            raise ValueError("margin: must be between 0 and 1")
        value = self.min_outcomes
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"min_outcomes: must be a whole number >= 0, got {value!r}")


def routable_records(
    records: Sequence[Record], min_outcomes: int
) -> tuple[list[Record], dict[str, int], list[str]]:
    """`records` without the outcomes of models that have fewer than `min_outcomes` labelled
    outcomes; also the count per model and the models held back (sorted)."""
    counts: dict[str, int] = {}
    for r in records:
        for m in r.labelled_models:
            counts[m] = counts.get(m, 0) + 1
    held = sorted(m for m, c in counts.items() if c < min_outcomes)
    if not held:
        return list(records), counts, held
    out = []
    for r in records:
        kept = {m: o for m, o in r.outcomes.items() if m not in held}
        if kept or r.label is not None:
            out.append(
                Record(
                    prompt=r.prompt,
                    outcomes=kept,
                    label=r.label if r.label not in held else None,
                    id=r.id,
                    task=r.task,
                    task_type=r.task_type,
                    source=r.source,
                    domain=r.domain,
                )
            )
    return out, counts, held


def promotion_decision(comparison: dict[str, Any], margin: float) -> tuple[bool, str]:
    """(promote?, why) from a `compare_offpolicy` report and the margin."""
    diff = comparison["difference"]["utility"]
    est, (lo, hi) = diff["estimate"], diff["ci95"]
    shown = f"{est:+.4f} (95% interval {lo:+.4f} to {hi:+.4f})"
    if lo >= -margin:
        return True, (
            f"candidate utility minus serving utility is {shown}; its lower end is not below"
            f" −{margin:g}"
        )
    return False, (
        f"candidate utility minus serving utility is {shown}; its lower end is below −{margin:g},"
        " so the candidate may be worse"
    )


def _newest_slice(
    decisions: list[LoggedDecision], share: float
) -> tuple[list[LoggedDecision], list[LoggedDecision]]:
    """(older, newest): the rows ordered by when their decision was made (``ts``), with the
    rows that have no time (labelled files) oldest, and file order breaking ties — several
    processes' logs interleave in time, so the order the files are read in says little."""
    k = max(1, int(round(len(decisions) * share)))
    if k >= len(decisions):
        raise DataError("logs", None, f"{len(decisions)} decision row(s): too few to hold any out")
    order = sorted(
        range(len(decisions)),
        key=lambda i: (decisions[i].ts is not None, decisions[i].ts or 0.0, i),
    )
    ordered = [decisions[i] for i in order]
    return ordered[:-k], ordered[-k:]


def retrain(
    decision_logs: Sequence[str | Path],
    labelled: Sequence[str | Path],
    serving_artifact: str | Path,
    out: str | Path,
    catalog: Catalog,
    options: LoopOptions,
    *,
    train_options: Any = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train a candidate, compare it with the serving artifact, save it when it is promoted.

    Returns the report (JSON-ready): what was trained on, what was compared on, both routers'
    estimates, the decision and why. The candidate is written to `out` only when promoted.
    """
    from training.logs import load_records
    from training.trainer import TrainOptions, train

    say = progress or (lambda _m: None)
    serving, serving_manifest = load_router(serving_artifact)
    decisions, skipped = read_decisions(list(decision_logs))
    if not decisions:
        raise DataError(
            ", ".join(map(str, decision_logs)), None, "no decision row with feedback to compare on"
        )
    older, newest = _newest_slice(decisions, options.holdout_share)
    train_records = [d.record for d in older]
    if labelled:
        train_records = load_records(list(labelled)).records + train_records
    records, counts, held = routable_records(train_records, options.min_outcomes)
    say(
        f"training a candidate on {len(records)} records ({len(older)} logged decisions"
        f" + labelled files); comparing on the newest {len(newest)}"
    )
    result = train(records, catalog, train_options or TrainOptions(), progress=say)
    candidate: Router = result.router
    comparison = compare_offpolicy(candidate, serving, newest, catalog, reward=serving)
    promote, why = promotion_decision(comparison, options.margin)
    report: dict[str, Any] = {
        "serving": {"artifact": str(serving_artifact), "router_version": serving.version},
        "training": {
            "decision_rows": len(older),
            "labelled_files": [str(p) for p in labelled],
            "records": len(records),
            "outcomes_per_model": dict(sorted(counts.items())),
            "held_back_models": held,
            "min_outcomes": options.min_outcomes,
        },
        "comparison": {"newest_rows": len(newest), "skipped_rows": skipped, **comparison},
        "options": asdict(options),
        "promoted": promote,
        "reason": why,
    }
    if promote:
        manifest = save_router(
            candidate,
            out,
            catalog=catalog.to_dict(),
            training={
                "method": "retrain",
                "decision_logs": [str(p) for p in decision_logs],
                "labelled": [str(p) for p in labelled],
                "records_used": result.report["n_records"],
                "previous_router_version": serving_manifest["router_version"],
                "options": result.report["options"],
            },
            metrics={k: v for k, v in result.report.items() if k != "options"},
        )
        report["artifact"] = {"path": str(out), "router_version": manifest["router_version"]}
    return report


def write_report(
    report: dict[str, Any], json_path: str | Path | None, md_path: str | Path | None
) -> None:
    """The retrain report as JSON and/or Markdown."""
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    if md_path:
        Path(md_path).write_text(markdown(report))


def _ci(x: dict[str, Any]) -> str:
    est, ci = x.get("estimate"), x.get("ci95")
    if est is None:
        return "n/a"
    return f"{est:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def markdown(report: dict[str, Any]) -> str:
    """A short human-readable version of a retrain report."""
    c = report["comparison"]
    t = report["training"]
    lines = [
        "# promptroute retrain",
        "",
        f"**{'Promoted' if report['promoted'] else 'Not promoted'}**: {report['reason']}.",
        "",
        f"- Serving router: `{report['serving']['router_version']}` ({report['serving']['artifact']})",
        f"- Candidate trained on {t['records']} records ({t['decision_rows']} logged decisions"
        f" and {len(t['labelled_files'])} labelled file(s)).",
        f"- Models held back (fewer than {t['min_outcomes']} outcomes): "
        + (", ".join(t["held_back_models"]) or "none"),
        f"- Compared on the newest {c['newest_rows']} rows: {c['single_calls']} single calls"
        f" (off-policy, smallest propensity {c['min_propensity']}), {c['multi_outcome_rows']}"
        f" multi-outcome rows ({c['direct_cells']} observed outcomes).",
        "",
        "| | candidate | serving |",
        "|---|---|---|",
    ]
    cand, inc = c["candidate"], c["incumbent"]
    for label, get in (
        ("default knob", lambda r: f"{r['knob']:g}"),
        ("utility (DR, 95% CI)", lambda r: _ci(r["utility"]["dr"])),
        ("quality (DR)", lambda r: _ci(r["quality"]["dr"])),
        ("quality (IPS)", lambda r: _ci(r["quality"]["ips"])),
        ("cost $/req (DR)", lambda r: _ci(r["cost_usd"]["dr"])),
        ("supporting decisions", lambda r: str(r["supporting_decisions"])),
    ):
        lines.append(f"| {label} | {get(cand)} | {get(inc)} |")
    d = c["difference"]
    lines += [
        "",
        f"Utility = quality − {c['trade_off']['knob']:g} · cost / {c['trade_off']['cost_ref']:.3g}"
        " (the serving router's trade-off).",
        f"Difference (candidate − serving): utility {_ci(d['utility'])}, quality"
        f" {_ci(d['quality'])}, cost {_ci(d['cost_usd'])}.",
        "",
    ]
    if "artifact" in report:
        lines.append(
            f"Written to `{report['artifact']['path']}` as router `{report['artifact']['router_version']}`."
        )
    return "\n".join(lines) + "\n"
