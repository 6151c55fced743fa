"""Human-readable views of an evaluation report: Markdown and a cost–quality plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.metrics import zero_router

__all__ = ["build_figure", "markdown_report", "plot_curve", "zero_router_curve"]


def markdown_report(report: dict[str, Any], *, title: str = "") -> str:
    r = report["router"]
    lines = [f"# promptroute evaluation{': ' + title if title else ''}", ""]
    lines.append(
        f"{report['n']} records, strategy `{report['strategy']}`, default knob {report.get('knob_default')}."
    )
    lines += ["", "| router | quality | cost $/request |", "|---|---:|---:|"]
    for m, v in sorted(report["single_models"].items(), key=lambda kv: -kv[1]["quality"]):
        lines.append(f"| always {m} | {v['quality']:.4f} | {v['cost']:.3e} |")
    for name in ("oracle", "heuristic"):
        v = report[name]
        lines.append(f"| {name} | {v['quality']:.4f} | {v['cost']:.3e} |")
    lines += [
        "",
        "| metric | value |",
        "|---|---:|",
        f"| AIQ (router) | {r['aiq']} |",
        f"| AIQ (Zero router) | {report['zero_router']['aiq']} |",
        f"| max quality | {r['max_quality']} |",
        f"| cost to match the best single model | {r['cost_to_match_best']} |",
        f"| cost to reach 95% of it | {r['cost_to_95pct_best']} |",
        f"| quality at the heuristic's cost | {r['quality_at_heuristic_cost']} |",
        f"| accuracy / macro-F1 at the default knob | {r['accuracy']} / {r['macro_f1']} |",
    ]
    t = report.get("two_model")
    if t:
        lines.append(f"| APGR ({t['strong']} vs {t['weak']}) | {t['apgr']} |")
        lines.append(f"| CPT(50%) / CPT(80%) | {t['cpt50']} / {t['cpt80']} |")
    c = report.get("cascade")
    if c:
        lines += [
            "",
            f"Cascade: call {c['weak']}, score its answer, escalate to {c['strong']} below a "
            f"threshold ({c['n']} records; {c['score_source']}). The cheap call costs "
            f"{c['weak_cost_share']} of the strong one and is paid on every request.",
            "",
            "| | AUC (cheap model right) | APGR | cost to reach 95% of the strong model |",
            "|---|---:|---:|---:|",
            f"| pre-call router | {c['auc_weak_right']['precall']} | {c['precall']['apgr']} | "
            f"{c['precall']['cost_to_95pct_strong']} |",
            f"| cascade | {c['auc_weak_right']['cascade']} | {c['cascade']['apgr']} | "
            f"{c['cascade']['cost_to_95pct_strong']} |",
            "",
            f"The cascade {'pays' if c['pays'] else 'does not pay'} here.",
        ]
    if report.get("by_task"):
        lines += [
            "",
            "| task | AIQ | Zero AIQ | cost to match best | APGR |",
            "|---|---:|---:|---:|---:|",
        ]
        for task, v in report["by_task"].items():
            apgr = v["two_model"]["apgr"] if v.get("two_model") else ""
            lines.append(
                f"| {task} | {v['router']['aiq']} | {v['zero_router']['aiq']} | "
                f"{v['router']['cost_to_match_best']} | {apgr} |"
            )
    return "\n".join(lines) + "\n"


def zero_router_curve(
    single_costs: Sequence[float], single_quals: Sequence[float], samples: int = 400
) -> tuple[np.ndarray, np.ndarray]:
    """The Zero router as it is: dense samples of its cost-linear mixes, for a log cost axis.

    Between two hull vertices the random mix's quality is linear in *cost*; on a log axis that
    is a curve, so straight segments between the vertices would overstate it (on RouteLLM by
    0.056 at $3e-4). Samples are spaced evenly on the log axis, vertices included.
    """
    hx, hy = zero_router(single_costs, single_quals)
    if len(hx) == 1 or hx[0] <= 0:
        return hx, hy
    x = np.union1d(np.geomspace(hx[0], hx[-1], samples), hx)
    return x, np.interp(x, hx, hy)


def build_figure(report: dict[str, Any], *, dataset: str = "") -> Any:
    """The cost–quality figure: router curve, every single model (full names), Zero router,
    oracle and hand rules; the title names `dataset` and the number of records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 6))
    curve = sorted(report["router"]["curve"], key=lambda p: p["cost"])
    ax.plot(
        [p["cost"] for p in curve],
        [p["quality"] for p in curve],
        "-o",
        ms=3,
        lw=2,
        c="tab:blue",
        label="promptroute (knob sweep)",
        zorder=5,
    )
    names = sorted(report["single_models"], key=lambda m: report["single_models"][m]["cost"])
    sc = [report["single_models"][m]["cost"] for m in names]
    sq = [report["single_models"][m]["quality"] for m in names]
    zx, zy = zero_router_curve(sc, sq)
    ax.plot(zx, zy, "--", c="grey", lw=1.5, label="Zero router (random mix, linear in cost)")
    colors = plt.get_cmap("tab20")  # from its third colour: the first two are the router's blue
    markers = "os^Dv<>pPhX"
    for i, (m, x, y) in enumerate(zip(names, sc, sq, strict=True)):
        ax.scatter(
            [x],
            [y],
            color=colors((i + 2) % 20),
            marker=markers[i % len(markers)],
            s=36,
            zorder=4,
            edgecolors="k",
            linewidths=0.4,
            label=m,
        )
    ax.scatter(
        [report["oracle"]["cost"]],
        [report["oracle"]["quality"]],
        marker="*",
        s=160,
        c="gold",
        edgecolors="k",
        zorder=6,
        label="oracle (best model per prompt)",
    )
    ax.scatter(
        [report["heuristic"]["cost"]],
        [report["heuristic"]["quality"]],
        marker="s",
        s=50,
        c="red",
        edgecolors="k",
        zorder=6,
        label="hand rules",
    )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (USD, log scale)")
    ax.set_ylabel("mean quality")
    router_aiq, zero_aiq = report["router"]["aiq"], report["zero_router"]["aiq"]
    where = f" on {dataset}" if dataset else ""
    ax.set_title(
        f"Cost–quality trade-off{where} (n={report['n']})\n"
        f"AIQ: router {router_aiq}, Zero router {zero_aiq}",
        fontsize=11,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return fig


def plot_curve(report: dict[str, Any], path: str | Path, *, dataset: str = "") -> None:
    """Write `build_figure`'s figure to `path` (PNG, SVG or PDF by extension)."""
    import matplotlib.pyplot as plt

    fig = build_figure(report, dataset=dataset)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
