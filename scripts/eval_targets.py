#!/usr/bin/env python3
"""Measure issue 14's targets ("Routing quality, round two") in one run and print its table.

    nice -n 10 python scripts/eval_targets.py [--out DIR]

Everything is tuned on train sides only; test sides are read once, here:

1. the combined model (train side of all bundled data, as the default model is trained; timed)
   on the test sides of RouteLLM and LLMRouter-DCRouter, overall and per task;
2. single-source models (one dataset's train side) on the same test sides: the combined model
   must not route worse than them;
3. RouterBench, whose test side is held out of this repository, 5-fold out of fold on its train
   side: RouterBench alone, and combined (every fold's training set plus the other datasets'
   train sides);
4. the knob targets (budget 0.3, strong share 0.2) re-applied to each single-source model's
   cross-validated curve (`training.policy.retarget`: what training with the target chooses),
   and the share its default policy achieves on the test side (RouterBench: held-out folds).

Reports (JSON) go to --out; the Markdown table goes to stdout. `--part main` (steps 1, 2, 4
and RouterBench alone) and `--part rb-combined` (the five combined RouterBench folds, the
longest step) can run as two processes; `--part table` then prints the table from their JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.catalog import load_catalog  # noqa: E402
from training.evaluate import cross_val_evaluate, evaluate  # noqa: E402
from training.logs import load_records  # noqa: E402
from training.policy import retarget  # noqa: E402
from training.split import split_records  # noqa: E402
from training.trainer import TrainOptions, train  # noqa: E402

DATA = ROOT / "data"
FILES = {
    "routellm": DATA / "routellm.jsonl.gz",
    "routerbench": DATA / "routerbench.jsonl.gz",
    "dcrouter": DATA / "llmrouter_dcrouter.jsonl.gz",
}
TARGETS = ({"target_budget": 0.3}, {"target_strong_share": 0.2})


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tasks_at_least_zero(report: dict[str, Any]) -> tuple[int, int, list[str]]:
    ok, missed = 0, []
    for task, r in report["by_task"].items():
        a, z = r["router"]["aiq"], r["zero_router"]["aiq"]
        if a is not None and z is not None and a >= z:
            ok += 1
        else:
            missed.append(f"{task} {a} vs {z}")
    return ok, len(report["by_task"]), missed


def target_shares(router: Any, report: dict[str, Any], test: list, catalog: Any) -> list[dict]:
    out = []
    for want in TARGETS:
        retarget(router, report["cv_policy_curve"], **want)
        rep = evaluate(router, test, catalog, min_task_size=10**9)
        out.append({**want, **rep["default_policy"]})
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/promptroute-eval", help="folder for JSON reports")
    p.add_argument("--part", choices=("all", "main", "rb-combined", "table"), default="all")
    p.add_argument(
        "--calibrate-per-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train every model with TrainOptions(calibrate_per_model=...) (default: the "
        "trainer's default, on)",
    )
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.part in ("all", "main", "rb-combined"):
        flag = a.calibrate_per_model
        run(out, a.part, TrainOptions() if flag is None else TrainOptions(calibrate_per_model=flag))
    if a.part in ("all", "table"):
        results = json.loads((out / "issue14-main.json").read_text())
        results.update(json.loads((out / "issue14-rb-combined.json").read_text()))
        print_table(results)
    return 0


def run(out: Path, part: str, opts: TrainOptions) -> None:
    catalog = load_catalog(None)
    recs = {name: load_records([str(f)]).records for name, f in FILES.items()}
    train_side = {name: split_records(r, "train") for name, r in recs.items()}
    test_side = {name: split_records(r, "test") for name, r in recs.items()}
    results: dict[str, Any] = {}
    if part in ("all", "rb-combined"):
        say("RouterBench combined, 5-fold OOF (+ the other datasets' train sides)")
        results["combined/routerbench"] = cross_val_evaluate(
            train_side["routerbench"],
            catalog,
            opts,
            folds=5,
            progress=say,
            extra_train=[*train_side["routellm"], *train_side["dcrouter"]],
        )
        (out / "issue14-rb-combined.json").write_text(json.dumps(results, default=str) + "\n")
        if part == "rb-combined":
            return
        results = {}

    say("combined model: train side of all bundled data")
    t0 = time.perf_counter()
    combined = train([r for v in train_side.values() for r in v], catalog, opts, progress=say)
    t_train = time.perf_counter() - t0
    for name in ("routellm", "dcrouter"):
        results[f"combined/{name}"] = evaluate(combined.router, test_side[name], catalog)

    singles = {}
    for name in ("routellm", "dcrouter"):
        say(f"single-source model: {name}")
        singles[name] = train(train_side[name], catalog, opts, progress=say)
        results[f"single/{name}"] = evaluate(singles[name].router, test_side[name], catalog)
        results[f"targets/{name}"] = target_shares(
            singles[name].router, singles[name].report, test_side[name], catalog
        )

    say("RouterBench alone, 5-fold OOF (with knob targets)")
    results["single/routerbench"] = cross_val_evaluate(
        train_side["routerbench"], catalog, opts, folds=5, progress=say, targets=TARGETS
    )
    results["train_seconds_default_model"] = t_train
    results["train_report_default_model"] = {
        k: v
        for k, v in combined.report.items()
        if k not in ("cv_curve", "cv_policy_curve", "cv_loss")
    }
    (out / "issue14-main.json").write_text(json.dumps(results, default=str) + "\n")


def print_table(results: dict[str, Any]) -> None:
    t_train = results["train_seconds_default_model"]
    rl, dc = results["combined/routellm"], results["combined/dcrouter"]
    rb = results["single/routerbench"]
    mm = rl["by_task"]["mmlu"]["two_model"]["apgr"]
    gs = rl["by_task"]["gsm8k"]["two_model"]["apgr"]
    dc_ctm, dc_aiq = dc["router"]["cost_to_match_best"], dc["router"]["aiq"]
    n_ok, n_tasks, missed = tasks_at_least_zero(dc)
    rb_ctm = rb["router"]["cost_to_match_best"]
    rb_reach = rb["router"]["max_quality"] >= rb["best_single"]["quality"]

    def mark(flag: bool) -> str:
        return "✓" if flag else "✗"

    def fmt(x: Any, nd: int = 3) -> str:
        return "—" if x is None else f"{x:.{nd}f}"

    rows = []
    rows.append(
        (
            "RouteLLM MMLU APGR / GSM8K APGR (combined model, test side)",
            "0.681 / 0.704",
            "≥ 0.70 / ≥ 0.72",
            f"{mm:.3f} / {gs:.3f}",
            f"{mark(mm >= 0.70)} / {mark(gs >= 0.72)}",
        )
    )
    rows.append(
        (
            "DCRouter cost_to_match_best / AIQ (combined model, test side)",
            "0.170 / 0.6185",
            "≤ 0.14 / ≥ 0.635",
            f"{fmt(dc_ctm)} / {dc_aiq:.4f}",
            f"{mark(dc_ctm is not None and dc_ctm <= 0.14)} / {mark(dc_aiq >= 0.635)}",
        )
    )
    rows.append(
        (
            "DCRouter tasks with router AIQ ≥ Zero router's",
            "6 of 14",
            "≥ 11 of 14",
            f"{n_ok} of {n_tasks}",
            mark(n_ok >= 11),
        )
    )
    rows.append(
        (
            "RouterBench (5-fold OOF): reaches the best single model / cost_to_match_best",
            "no / –",
            "yes / ≤ 0.6",
            f"{'yes' if rb_reach else 'no'} ({rb['router']['max_quality']:.4f} vs "
            f"{rb['best_single']['quality']:.4f}) / {fmt(rb_ctm)}",
            f"{mark(rb_reach)} / {mark(rb_ctm is not None and rb_ctm <= 0.6)}",
        )
    )
    knob_cells = []
    knob_ok = True
    for name, shares in (
        ("RouterBench", rb["targets"]),
        ("RouteLLM", results["targets/routellm"]),
        ("DCRouter", results["targets/dcrouter"]),
    ):
        b = next(s for s in shares if "target_budget" in s)["budget_share"]
        s = next(s for s in shares if "target_strong_share" in s)["strong_share"]
        knob_ok &= b is not None and abs(b - 0.3) <= 0.03 and abs(s - 0.2) <= 0.03
        knob_cells.append(f"{name} {fmt(b)} / {fmt(s)}")
    rows.append(
        (
            "knob targets (budget 0.3, strong share 0.2) achieved on test sides",
            "RouterBench 0.20 / 0.10",
            "within ±0.03",
            "; ".join(knob_cells),
            mark(knob_ok),
        )
    )
    diffs = {}
    for name in ("routellm", "routerbench", "dcrouter"):
        diffs[name] = (
            results[f"combined/{name}"]["router"]["aiq"]
            - results[f"single/{name}"]["router"]["aiq"]
        )
    rows.append(
        (
            "combined default model vs single-source model, AIQ per source",
            "−0.004 on RouterBench",
            "≥ −0.001 everywhere",
            "; ".join(f"{k} {v:+.4f}" for k, v in diffs.items()),
            mark(all(v >= -0.001 for v in diffs.values())),
        )
    )
    print("| figure | before | target | measured | met |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(
        f"Also: DCRouter tasks below the Zero router: {', '.join(missed) or 'none'}. "
        f"RouteLLM all (test side): APGR {rl['two_model']['apgr']:.3f}. "
        f"RouterBench OOF AIQ {rb['router']['aiq']:.4f} vs Zero {rb['zero_router']['aiq']:.4f}. "
        f"DCRouter AIQ vs Zero {dc_aiq:.4f} vs {dc['zero_router']['aiq']:.4f}. "
        f"Default model trained in {t_train:.0f} s."
    )


if __name__ == "__main__":
    sys.exit(main())
