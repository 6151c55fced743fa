"""Offline metrics for judging a router: quality-versus-cost curves and calibration.

Two-model routing (strong/weak), after RouteLLM (Ong et al. 2024, "RouteLLM: Learning to Route
LLMs with Preference Data"; lm-sys/RouteLLM ``routellm/evals/evaluate.py``):

- **PGR** (performance gap recovered): where a quality sits between the weak model (0) and the
  strong model (1): ``(quality - q_weak) / (q_strong - q_weak)``.
- **APGR** (average PGR): the area under the router's curve of quality against the share of
  calls sent to the strong model, expressed as PGR — ``(AUC - weak_auc) / (strong_auc -
  weak_auc)`` with all three areas taken by the trapezoidal rule over the curve's points. A random
  router traces the straight line from ``(0, q_weak)`` to ``(1, q_strong)`` and scores 0.5; a
  router that recovers the whole gap with no strong calls scores 1.
- **CPT(pct)** (call-performance threshold): the smallest strong-call share at which the curve
  reaches ``q_weak + pct * (q_strong - q_weak)``, e.g. CPT(50%).

Many models, after RouterBench (Hu et al. 2024, "RouterBench: A Benchmark for Multi-LLM Routing
System"):

- **Non-decreasing convex hull**: given (cost, quality) points, any mix of them is attainable by
  choosing between them at random, so the best attainable quality at a budget is the upper convex
  hull of the points, kept only while quality still rises (a costlier, not-better point is
  dominated), and flat after the best point (one can always spend less).
- **AIQ** (average improvement in quality): the mean of that hull over a cost range
  ``[c_min, c_max]``, i.e. its integral divided by ``c_max - c_min``. Below the cheapest point
  nothing is attainable and the integrand counts as 0.
- **Zero router**: the hull of the single models alone (a cost-matched random mix of them); a
  router is only useful where its AIQ beats the zero router's.

Calibration of the router's probabilities:

- **Brier score**: mean squared distance between predicted probabilities and the one-hot outcome
  (multiclass: summed over classes, so it lies in [0, 2]; binary: in [0, 1], soft labels allowed).
- **ECE** (expected calibration error, Guo et al. 2017): bin the top-label confidences into
  equal-width bins on [0, 1]; the weighted mean over bins of ``|accuracy - mean confidence|``.

Every function validates its inputs (``ValueError`` naming the argument) and returns plain Python
floats so results serialise to JSON as they are.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "aiq",
    "apgr",
    "brier_binary",
    "brier_multiclass",
    "cost_to_reach",
    "cpt",
    "expected_calibration_error",
    "hull_value",
    "nondecreasing_convex_hull",
    "pgr",
    "zero_router",
    "zero_router_aiq",
]

# Absolute slack when asking "does this quality reach the target?", so that a target computed as
# q_weak + 1.0 * (q_strong - q_weak) still counts as reached by q_strong despite rounding.
_REACH_TOL = 1e-12


def _scalar(name: str, value: float) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _vector(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must contain only finite numbers")
    return arr


def _same_length(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same length, got {a.size} and {b.size}"
        )


def _in_unit_interval(name: str, arr: np.ndarray) -> None:
    if np.any(arr < 0.0) or np.any(arr > 1.0):
        raise ValueError(f"{name} must lie in [0, 1]")


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    # Same rule as np.trapz / np.trapezoid, without depending on which of the two numpy has.
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def _share_curve(strong_share: ArrayLike, quality: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = _vector("strong_share", strong_share)
    y = _vector("quality", quality)
    _same_length("strong_share", x, "quality", y)
    _in_unit_interval("strong_share", x)
    # Ties in share are ordered by quality so that the result never depends on input order.
    order = np.lexsort((y, x))
    return x[order], y[order]


def pgr(quality: float, q_weak: float, q_strong: float) -> float:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's.

    Returns nan when ``q_strong == q_weak`` (there is no gap to recover).

    >>> pgr(0.625, 0.5, 0.75)
    0.5
    """
    quality = _scalar("quality", quality)
    q_weak = _scalar("q_weak", q_weak)
    q_strong = _scalar("q_strong", q_strong)
    if q_strong == q_weak:
        return math.nan
    return float((quality - q_weak) / (q_strong - q_weak))


def apgr(strong_share: ArrayLike, quality: ArrayLike, q_weak: float, q_strong: float) -> float:
    """Average performance gap recovered over a strong-share curve (RouteLLM).

    Parameters
    ----------
    strong_share : array-like of float in [0, 1]
        Fraction of calls sent to the strong model at each operating point. The curve should span
        0..1 (include the all-weak and all-strong endpoints), as RouteLLM's curves do.
    quality : array-like of float
        Router quality at each point.
    q_weak, q_strong : float
        Quality of always calling the weak / strong model.

    Returns
    -------
    float
        ``(AUC - weak_auc) / (strong_auc - weak_auc)``, every area by the trapezoidal rule over
        the same x points. A random router (the straight line from ``(0, q_weak)`` to
        ``(1, q_strong)``) scores 0.5. nan when ``q_strong == q_weak``.

    >>> apgr([0.0, 0.5, 1.0], [0.5, 0.625, 0.75], 0.5, 0.75)
    0.5
    """
    x, y = _share_curve(strong_share, quality)
    q_weak = _scalar("q_weak", q_weak)
    q_strong = _scalar("q_strong", q_strong)
    if x[-1] == x[0]:
        raise ValueError("strong_share must span a non-zero range (e.g. from 0 to 1)")
    if q_strong == q_weak:
        return math.nan
    auc = _trapezoid(y, x)
    weak_auc = _trapezoid(np.full_like(x, q_weak), x)
    strong_auc = _trapezoid(np.full_like(x, q_strong), x)
    return float((auc - weak_auc) / (strong_auc - weak_auc))


def cpt(
    strong_share: ArrayLike, quality: ArrayLike, q_weak: float, q_strong: float, pct: float
) -> float:
    """Strong-call share needed to recover ``pct`` of the quality gap (RouteLLM's CPT).

    The curve is sorted by strong share and linearly interpolated between consecutive points;
    the result is the smallest share at which it first reaches
    ``q_weak + pct * (q_strong - q_weak)``. Unlike RouteLLM's ``np.interp`` (which needs the
    qualities to be increasing), this is correct for curves that dip.

    Returns
    -------
    float
        A fraction in [0, 1]; nan if the curve never reaches the target.

    >>> cpt([0.0, 0.5, 1.0], [0.5, 0.75, 0.75], 0.5, 0.75, 0.5)
    0.25
    """
    x, y = _share_curve(strong_share, quality)
    q_weak = _scalar("q_weak", q_weak)
    q_strong = _scalar("q_strong", q_strong)
    pct = _scalar("pct", pct)
    target = pct * (q_strong - q_weak) + q_weak
    reached = np.flatnonzero(y >= target - _REACH_TOL)
    if reached.size == 0:
        return math.nan
    i = int(reached[0])
    if i == 0:
        return float(x[0])
    # Every earlier point is below the target, so the first crossing lies on segment (i-1, i).
    frac = (target - y[i - 1]) / (y[i] - y[i - 1])
    frac = min(max(frac, 0.0), 1.0)
    return float(x[i - 1] + frac * (x[i] - x[i - 1]))


def nondecreasing_convex_hull(
    costs: ArrayLike, qualities: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing upper convex hull of (cost, quality) points (RouterBench).

    The upper hull runs from the cheapest point (the best one, if several share that cost) to the
    first point of highest quality; dominated points (costlier and not better) and points under
    the hull are dropped, as are collinear middle points.

    Returns
    -------
    (hull_costs, hull_quals) : tuple of ndarray
        Vertices sorted by cost; both strictly increasing.

    >>> c, q = nondecreasing_convex_hull([1, 2, 3, 4], [0.5, 0.6, 0.9, 0.8])
    >>> c.tolist(), q.tolist()
    ([1.0, 3.0], [0.5, 0.9])
    """
    c = _vector("costs", costs)
    q = _vector("qualities", qualities)
    _same_length("costs", c, "qualities", q)
    order = np.lexsort((q, c))
    c, q = c[order], q[order]
    # Of points sharing a cost only the best can be on the hull; it is the last after the sort.
    last_of_cost = np.append(c[1:] != c[:-1], True)
    c, q = c[last_of_cost], q[last_of_cost]

    hull: list[int] = []
    for k in range(c.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (c[b] - c[a]) * (q[k] - q[a]) - (q[b] - q[a]) * (c[k] - c[a])
            if cross < 0:  # a -> b -> k turns right: b stays on the upper hull
                break
            hull.pop()
        hull.append(k)
    hc, hq = c[hull], q[hull]
    top = int(np.argmax(hq))  # first maximum: costlier vertices of equal quality are dominated
    return hc[: top + 1].copy(), hq[: top + 1].copy()


def hull_value(hull_costs: ArrayLike, hull_quals: ArrayLike, c: ArrayLike) -> np.ndarray:
    """Best attainable quality at budget(s) ``c`` on a hull from `nondecreasing_convex_hull`.

    Linear between vertices; the last vertex's quality beyond it (one can always spend less);
    nan before the first vertex (not attainable). Returns an array shaped like ``c``.

    >>> hull_value([1.0, 3.0], [0.5, 0.9], [0.0, 2.0, 5.0]).tolist()
    [nan, 0.7, 0.9]
    """
    hc = _vector("hull_costs", hull_costs)
    hq = _vector("hull_quals", hull_quals)
    _same_length("hull_costs", hc, "hull_quals", hq)
    if np.any(np.diff(hc) <= 0):
        raise ValueError("hull_costs must be strictly increasing")
    cc = np.asarray(c, dtype=float)
    if np.any(np.isnan(cc)):
        raise ValueError("c must not contain nan")
    return np.interp(cc, hc, hq, left=math.nan, right=float(hq[-1]))


def aiq(
    costs: ArrayLike,
    qualities: ArrayLike,
    c_min: float,
    c_max: float,
    *,
    anchor: tuple[float, float] | None = None,
) -> float:
    """Average improvement in quality over ``[c_min, c_max]`` (RouterBench's AIQ).

    The exact mean over the cost range of the non-decreasing convex hull of the points, with
    ``anchor=(cost, quality)`` added to them when given (e.g. the cheapest single model, which a
    router can always be mixed with). Where the hull is not yet attainable (below its cheapest
    vertex) the integrand is 0. For non-negative qualities, adding points never lowers AIQ.

    >>> aiq([1.0, 3.0], [0.5, 0.9], 1.0, 3.0)
    0.7
    """
    c = _vector("costs", costs)
    q = _vector("qualities", qualities)
    _same_length("costs", c, "qualities", q)
    lo_c = _scalar("c_min", c_min)
    hi_c = _scalar("c_max", c_max)
    if not hi_c > lo_c:
        raise ValueError(f"c_max must be greater than c_min, got c_min={lo_c}, c_max={hi_c}")
    if anchor is not None:
        if len(anchor) != 2:
            raise ValueError(f"anchor must be a (cost, quality) pair, got {anchor!r}")
        c = np.append(c, _scalar("anchor cost", anchor[0]))
        q = np.append(q, _scalar("anchor quality", anchor[1]))
    hc, hq = nondecreasing_convex_hull(c, q)
    start = max(lo_c, float(hc[0]))
    if start >= hi_c:
        return 0.0
    # The hull is linear between these knots, so the trapezoidal rule on them is exact.
    inner = hc[(hc > start) & (hc < hi_c)]
    knots = np.concatenate(([start], inner, [hi_c]))
    area = _trapezoid(hull_value(hc, hq, knots), knots)
    return float(area / (hi_c - lo_c))


def zero_router(single_costs: ArrayLike, single_quals: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Hull vertices of RouterBench's Zero router: cost-matched random mixes of single models."""
    return nondecreasing_convex_hull(single_costs, single_quals)


def zero_router_aiq(single_costs: ArrayLike, single_quals: ArrayLike) -> float:
    """AIQ of the Zero router over ``[min cost, max cost]`` of the single models.

    Raises ValueError when all models cost the same (the range is empty).
    """
    c = _vector("single_costs", single_costs)
    q = _vector("single_quals", single_quals)
    _same_length("single_costs", c, "single_quals", q)
    if c.min() == c.max():
        raise ValueError("single_costs must contain at least two distinct costs")
    return aiq(c, q, float(c.min()), float(c.max()))


def cost_to_reach(curve_costs: ArrayLike, curve_quals: ArrayLike, target: float) -> float | None:
    """Cheapest cost among curve points whose quality reaches ``target`` (within 1e-12).

    Returns None when no point reaches it.

    >>> cost_to_reach([3.0, 1.0, 2.0], [0.9, 0.5, 0.8], 0.8)
    2.0
    """
    c = _vector("curve_costs", curve_costs)
    q = _vector("curve_quals", curve_quals)
    _same_length("curve_costs", c, "curve_quals", q)
    target = _scalar("target", target)
    ok = q >= target - _REACH_TOL
    if not np.any(ok):
        return None
    return float(c[ok].min())


def brier_multiclass(proba: ArrayLike, y_index: ArrayLike) -> float:
    """Mean over rows of ``sum_k (proba[i, k] - onehot(y_index[i])_k) ** 2``; in [0, 2].

    >>> brier_multiclass([[0.5, 0.5], [1.0, 0.0]], [0, 0])
    0.25
    """
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"proba must be two-dimensional (rows, classes), got shape {p.shape}")
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"proba must not be empty, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("proba must contain only finite numbers")
    _in_unit_interval("proba", p)
    y = _vector("y_index", y_index)
    if y.size != p.shape[0]:
        raise ValueError(
            f"proba and y_index must have the same number of rows, got {p.shape[0]} and {y.size}"
        )
    if np.any(y != np.round(y)) or np.any(y < 0) or np.any(y >= p.shape[1]):
        raise ValueError(f"y_index must hold integer class indices in [0, {p.shape[1]})")
    onehot = np.zeros_like(p)
    onehot[np.arange(p.shape[0]), y.astype(int)] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def brier_binary(p: ArrayLike, y: ArrayLike) -> float:
    """Mean of ``(p - y) ** 2``; ``y`` may be a soft label in [0, 1].

    >>> brier_binary([0.75, 0.25], [1, 0.5])
    0.0625
    """
    pp = _vector("p", p)
    yy = _vector("y", y)
    _same_length("p", pp, "y", yy)
    _in_unit_interval("p", pp)
    _in_unit_interval("y", yy)
    return float(np.mean((pp - yy) ** 2))


def expected_calibration_error(
    confidence: ArrayLike, correct: ArrayLike, n_bins: int = 15
) -> float:
    """Top-label expected calibration error with ``n_bins`` equal-width bins on [0, 1].

    Bins are ``(lo, hi]`` (a confidence of exactly 0 goes in the first bin);
    ECE = ``sum_b (n_b / n) * |accuracy_b - mean confidence_b|`` over non-empty bins.

    >>> expected_calibration_error([0.9, 0.9, 0.3, 0.3], [1, 0, 0, 0], n_bins=10)
    0.35
    """
    conf = _vector("confidence", confidence)
    corr = _vector("correct", correct)
    _same_length("confidence", conf, "correct", corr)
    _in_unit_interval("confidence", conf)
    if not np.all((corr == 0) | (corr == 1)):
        raise ValueError("correct must hold only 0/1 or booleans")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    # Compare with the edges themselves rather than using ceil(conf * n_bins), whose rounding can
    # put a confidence equal to an edge into the bin above the one that edge closes.
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    corr_sum = np.bincount(bins, weights=corr, minlength=n_bins)
    # Per bin |acc_b - conf_b| * n_b / n == |corr_sum_b - conf_sum_b| / n.
    return float(np.sum(np.abs(corr_sum - conf_sum)) / conf.size)
