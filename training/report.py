"""Human-readable views of an evaluation report: Markdown and a cost–quality plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["markdown_report", "plot_curve"]


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


def plot_curve(report: dict[str, Any], path: str | Path) -> None:
    """Cost–quality curve with the single models, the Zero router, the oracle and the heuristic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.metrics import zero_router

    fig, ax = plt.subplots(figsize=(8, 5.5))
    curve = sorted(report["router"]["curve"], key=lambda p: p["cost"])
    ax.plot(
        [p["cost"] for p in curve],
        [p["quality"] for p in curve],
        "-o",
        ms=3,
        label="promptroute (knob sweep)",
    )
    names = list(report["single_models"])
    sc = [report["single_models"][m]["cost"] for m in names]
    sq = [report["single_models"][m]["quality"] for m in names]
    ax.scatter(sc, sq, c="grey", zorder=3, label="single models")
    for m, x, y in zip(names, sc, sq, strict=True):
        ax.annotate(
            m.split("/")[-1][:24], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    hx, hy = zero_router(sc, sq)
    ax.plot(hx, hy, "--", c="grey", label="Zero router (random mix)")
    ax.scatter(
        [report["oracle"]["cost"]],
        [report["oracle"]["quality"]],
        marker="*",
        s=120,
        c="gold",
        edgecolors="k",
        zorder=4,
        label="oracle",
    )
    ax.scatter(
        [report["heuristic"]["cost"]],
        [report["heuristic"]["quality"]],
        marker="s",
        c="red",
        zorder=4,
        label="hand rules",
    )
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title("Cost–quality trade-off")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
