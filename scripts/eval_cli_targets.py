#!/usr/bin/env python3
"""The first targets table (issue 13's, with the verify-and-escalate cascade rows), through the
CLI only; issue 14's table is `scripts/eval_targets.py`.

    nice -n 10 python scripts/eval_cli_targets.py [--out DIR]

1. trains on the train side of all bundled data (timed), as the default model is trained;
2. evaluates it on the test side of RouteLLM and LLMRouter-DCRouter;
3. evaluates RouterBench 5-fold out of fold (its test side is held out of this repository);
4. times training on all bundled data (both sides), the "≈24k prompts in under 2 minutes" figure;
and prints a Markdown table with the targets. Every number comes from `promptroute` itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "promptroute", *args], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default="/tmp/promptroute-eval", help="folder for artifacts and JSON reports"
    )
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [
        str(DATA / f)
        for f in ("routellm.jsonl.gz", "routerbench.jsonl.gz", "llmrouter_dcrouter.jsonl.gz")
    ]
    answers = str(DATA / "gsm8k_responses.jsonl.gz")  # trains the answer verifiers only
    art = out / "train-side"
    t_train = run(
        [
            "train",
            "--logs",
            *files,
            "--verifier-logs",
            answers,
            "--split",
            "train",
            "--out",
            str(art),
        ]
    )
    run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            answers,
            "--split",
            "test",
            "--json",
            str(out / "gsm8k_cascade.json"),
        ]
    )
    run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            files[0],
            "--split",
            "test",
            "--json",
            str(out / "routellm.json"),
            "--plot",
            str(out / "routellm.png"),
        ]
    )
    run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            files[2],
            "--split",
            "test",
            "--json",
            str(out / "dcrouter.json"),
            "--plot",
            str(out / "dcrouter.png"),
        ]
    )
    run(
        [
            "eval",
            "--cv",
            "5",
            "--logs",
            files[1],
            "--json",
            str(out / "routerbench.json"),
            "--plot",
            str(out / "routerbench.png"),
        ]
    )
    t_all = run(["train", "--logs", *files, "--split", "all", "--out", str(out / "all")])

    rl = json.loads((out / "routellm.json").read_text())
    dc = json.loads((out / "dcrouter.json").read_text())
    rb = json.loads((out / "routerbench.json").read_text())
    gc = json.loads((out / "gsm8k_cascade.json").read_text())["cascade"]
    mc = rl["by_task"]["mmlu"]["cascade"]

    def beats(r: dict) -> str:
        q, h = r["router"]["quality_at_heuristic_cost"], r["heuristic"]["quality"]
        return f"{q:.3f} vs {h:.3f} at ≤ ${r['heuristic']['cost']:.2e}" + (
            " ✓" if r["router"]["beats_heuristic"] else " ✗"
        )

    def ok(flag: bool) -> str:
        return "✓" if flag else "✗ (missed)"

    mm, gs = rl["by_task"]["mmlu"]["two_model"]["apgr"], rl["by_task"]["gsm8k"]["two_model"]["apgr"]
    rb_m, dc_m = rb["router"]["cost_to_match_best"], dc["router"]["cost_to_match_best"]
    rows = [
        (
            f"RouteLLM MMLU (test side, n={rl['by_task']['mmlu']['n']}): APGR",
            "≥ 0.66",
            f"{mm:.3f}",
            ok(mm >= 0.66),
        ),
        (
            f"RouteLLM GSM8K (test side, n={rl['by_task']['gsm8k']['n']}): APGR",
            "≥ 0.66",
            f"{gs:.3f}",
            ok(gs >= 0.66),
        ),
        (
            f"RouteLLM all (test side, n={rl['n']}): APGR / CPT50 / CPT80",
            "—",
            f"{rl['two_model']['apgr']:.3f} / {rl['two_model']['cpt50']:.3f} / {rl['two_model']['cpt80']:.3f}",
            "",
        ),
        (
            f"RouterBench (5-fold OOF, n={rb['n']}): cost_to_match_best",
            "≤ 0.6",
            str(rb_m),
            ok(rb_m is not None and rb_m <= 0.6),
        ),
        ("RouterBench: cost_to_95pct_best", "—", str(rb["router"]["cost_to_95pct_best"]), ""),
        (
            "RouterBench: AIQ vs Zero router",
            "above",
            f"{rb['router']['aiq']:.4f} vs {rb['zero_router']['aiq']:.4f}",
            ok(rb["router"]["aiq"] > rb["zero_router"]["aiq"]),
        ),
        (
            f"DCRouter (test side, n={dc['n']}): cost_to_match_best",
            "≤ 0.5",
            str(dc_m),
            ok(dc_m is not None and dc_m <= 0.5),
        ),
        (
            "DCRouter: AIQ vs Zero router",
            "—",
            f"{dc['router']['aiq']:.4f} vs {dc['zero_router']['aiq']:.4f}",
            "",
        ),
        (
            f"GSM8K cascade (test side, n={gc['n']}): APGR (pre-call router)",
            "≥ 0.75",
            f"{gc['cascade']['apgr']:.3f} ({gc['precall']['apgr']:.3f})",
            ok(gc["cascade"]["apgr"] >= 0.75),
        ),
        (
            "GSM8K cascade: cost to 95% of GPT-4 (pre-call router)",
            "≤ 0.55",
            f"{gc['cascade']['cost_to_95pct_strong']} ({gc['precall']['cost_to_95pct_strong']})",
            ok((gc["cascade"]["cost_to_95pct_strong"] or 9.0) <= 0.55),
        ),
        (
            f"MMLU cascade (test side, n={mc['n']}): cost to 95% of GPT-4 (pre-call router)",
            "not worth it",
            f"{mc['cascade']['cost_to_95pct_strong']} ({mc['precall']['cost_to_95pct_strong']})",
            ok(not mc["pays"]),
        ),
        ("RouteLLM: quality at the heuristic's cost", "> heuristic", beats(rl), ""),
        ("RouterBench: quality at the heuristic's cost", "> heuristic", beats(rb), ""),
        ("DCRouter: quality at the heuristic's cost", "> heuristic", beats(dc), ""),
        (
            f"Training on all bundled data ({len(files)} files, both sides)",
            "< 120 s",
            f"{t_all:.0f} s",
            ok(t_all < 120),
        ),
        ("Training on the train side (default model)", "—", f"{t_train:.0f} s", ""),
    ]
    print("| figure | target | measured | |\n|---|---|---|---|")
    for name, target, value, flag in rows:
        print(f"| {name} | {target} | {value} | {flag} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
