"""The evaluation plot tells the truth: the Zero router drawn as its real curve on the log cost
axis, the dataset in the title, every model's full name in the legend."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics import zero_router
from training.report import build_figure, plot_curve, zero_router_curve

LONG = "mistralai/Mixtral-8x7B-Instruct-v0.1-with-a-very-long-suffix"
REPORT = {
    "n": 2984,
    "router": {
        "aiq": 0.771,
        "curve": [
            {"knob": k, "cost": c, "quality": q}
            for k, c, q in [(0.0, 6e-3, 0.80), (0.5, 1e-3, 0.74), (4.0, 2e-4, 0.70)]
        ],
    },
    "zero_router": {"aiq": 0.749},
    "single_models": {
        "gpt-4-1106-preview": {"cost": 6.1e-3, "quality": 0.805},
        LONG: {"cost": 1.2e-4, "quality": 0.68},
        "claude-instant-v1": {"cost": 9e-4, "quality": 0.60},  # below the hull
    },
    "oracle": {"cost": 5e-4, "quality": 0.9},
    "heuristic": {"cost": 5.5e-4, "quality": 0.70},
}


def _zero_line(fig):
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("Zero router")]
    return np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)


def test_zero_router_is_drawn_as_the_cost_linear_mix() -> None:
    fig = build_figure(REPORT, dataset="routellm.jsonl.gz (test side)")
    x, y = _zero_line(fig)
    costs = [v["cost"] for v in REPORT["single_models"].values()]
    quals = [v["quality"] for v in REPORT["single_models"].values()]
    hx, hy = zero_router(costs, quals)
    # Dense on the log axis, from the cheapest to the dearest hull vertex, through every vertex.
    assert len(x) >= 400
    assert x[0] == pytest.approx(hx[0]) and x[-1] == pytest.approx(hx[-1])
    assert set(np.round(hx, 12)) <= set(np.round(x, 12))
    assert np.all(np.diff(np.log10(x)) < 0.01)
    # Every plotted point is the hull's value at that cost: a mix linear in cost.
    np.testing.assert_allclose(y, np.interp(x, hx, hy), rtol=0, atol=1e-12)
    # At $3e-4 the straight segment on a log axis would read far higher than the true mix.
    i = int(np.argmin(abs(x - 3e-4)))
    log_straight = np.interp(np.log10(x[i]), np.log10(hx), hy)
    assert y[i] < log_straight - 0.02


def test_title_names_the_data_and_the_legend_the_full_model_names() -> None:
    fig = build_figure(REPORT, dataset="routellm.jsonl.gz (test side)")
    title = fig.axes[0].get_title()
    assert "routellm.jsonl.gz (test side)" in title and "n=2984" in title
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for name in REPORT["single_models"]:
        assert name in labels
    assert LONG in labels  # not cut at 24 characters


def test_zero_router_curve_of_one_model_is_that_point() -> None:
    x, y = zero_router_curve([1e-3], [0.5])
    assert list(x) == [1e-3] and list(y) == [0.5]


def test_plot_curve_writes_a_png(tmp_path) -> None:
    out = tmp_path / "curve.png"
    plot_curve(REPORT, out, dataset="x")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
