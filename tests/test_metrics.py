"""Offline routing metrics: hand-computed cases (arithmetic in comments) and properties."""

from __future__ import annotations

import inspect
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from training import metrics
from training.metrics import (
    aiq,
    apgr,
    brier_binary,
    brier_multiclass,
    cost_to_reach,
    cpt,
    expected_calibration_error,
    hull_value,
    nondecreasing_convex_hull,
    pgr,
    zero_router,
    zero_router_aiq,
)

# Most hand cases use dyadic numbers (0.5, 0.625, ...) so the float arithmetic is exact.
EXACT = {"rel": 1e-12, "abs": 1e-12}


def test_all_lists_exactly_the_public_functions() -> None:
    public = {
        name
        for name, obj in vars(metrics).items()
        if inspect.isfunction(obj) and obj.__module__ == metrics.__name__ and name[0] != "_"
    }
    assert sorted(metrics.__all__) == sorted(public)


# --- PGR -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        pytest.param(0.625, 0.5, id="halfway"),  # (0.625 - 0.5) / (0.75 - 0.5) = 0.125 / 0.25
        pytest.param(0.5, 0.0, id="weak"),
        pytest.param(0.75, 1.0, id="strong"),
        pytest.param(0.25, -1.0, id="below-weak"),  # -0.25 / 0.25
        pytest.param(1.0, 2.0, id="above-strong"),  # 0.5 / 0.25
    ],
)
def test_pgr(quality: float, expected: float) -> None:
    out = pgr(quality, 0.5, 0.75)
    assert type(out) is float
    assert out == expected


def test_pgr_is_nan_without_a_gap() -> None:
    assert math.isnan(pgr(0.7, 0.6, 0.6))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((math.nan, 0.5, 0.75), "quality must be finite", id="nan-quality"),
        pytest.param((0.6, math.inf, 0.75), "q_weak must be finite", id="inf-weak"),
        pytest.param((0.6, 0.5, "high"), "q_strong must be a number", id="text-strong"),
    ],
)
def test_pgr_rejects_bad_numbers(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pgr(*args)


# --- APGR ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("share", "quality", "expected"),
    [
        # Random router: quality = 0.5 + 0.25 * share. AUC = 0.625, weak 0.5, strong 0.75:
        # (0.625 - 0.5) / (0.75 - 0.5) = 0.5.
        pytest.param([0, 0.25, 0.5, 1], [0.5, 0.5625, 0.625, 0.75], 0.5, id="random-line"),
        # Perfect step: the whole gap at 0 strong calls. AUC = 0.75 -> 1.0.
        pytest.param([0, 0, 1], [0.5, 0.75, 0.75], 1.0, id="perfect-step"),
        # Step at 25%: AUC = 0.25 * (0.5 + 0.75) / 2 + 0.75 * 0.75 = 0.15625 + 0.5625 = 0.71875;
        # (0.71875 - 0.5) / 0.25 = 0.875.
        pytest.param([0, 0.25, 1], [0.5, 0.75, 0.75], 0.875, id="step-at-quarter"),
        # Flat until 50%: AUC = 0.5 * 0.5 + 0.5 * (0.5 + 0.75) / 2 = 0.25 + 0.3125 = 0.5625;
        # 0.0625 / 0.25 = 0.25.
        pytest.param([0, 0.5, 1], [0.5, 0.5, 0.75], 0.25, id="late-gain"),
        # Same as step-at-quarter, given out of order.
        pytest.param([1, 0, 0.25], [0.75, 0.5, 0.75], 0.875, id="unsorted"),
    ],
)
def test_apgr(share: list, quality: list, expected: float) -> None:
    out = apgr(share, quality, 0.5, 0.75)
    assert type(out) is float
    assert out == pytest.approx(expected, **EXACT)


def test_apgr_of_a_simulated_random_router_is_half() -> None:
    # 8 prompts; the weak model is right on 3, the strong one on 6. A random router that sends k
    # prompts to the strong model averages over all C(8, k) choices of which ones.
    weak = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    strong = np.array([1, 1, 0, 1, 1, 1, 1, 0])
    n = weak.size
    share, quality = [], []
    for k in range(n + 1):
        accs = []
        for chosen in itertools.combinations(range(n), k):
            routed = weak.copy()
            routed[list(chosen)] = strong[list(chosen)]
            accs.append(routed.mean())
        share.append(k / n)
        quality.append(float(np.mean(accs)))
    assert apgr(share, quality, weak.mean(), strong.mean()) == pytest.approx(0.5, **EXACT)


def test_apgr_is_nan_without_a_gap() -> None:
    assert math.isnan(apgr([0, 1], [0.5, 0.5], 0.5, 0.5))


@pytest.mark.parametrize(
    ("share", "quality", "message"),
    [
        pytest.param([0, 1], [0.5], "same length, got 2 and 1", id="length"),
        pytest.param([], [], "strong_share must not be empty", id="empty"),
        pytest.param([0, 1.5], [0.5, 0.75], r"strong_share must lie in \[0, 1\]", id="range"),
        pytest.param([0.5], [0.5], "non-zero range", id="one-point"),
        pytest.param([[0, 1]], [[0.5, 0.75]], "one-dimensional", id="2d"),
        pytest.param([0, 1], [0.5, math.nan], "quality must contain only finite", id="nan"),
    ],
)
def test_apgr_validates(share: list, quality: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apgr(share, quality, 0.5, 0.75)


@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(1, 99), max_size=10))
def test_apgr_of_any_random_router_line_is_half(inner: set[int]) -> None:
    share = [0.0, *(i / 100 for i in sorted(inner)), 1.0]
    quality = [0.3 + 0.4 * s for s in share]
    assert apgr(share, quality, 0.3, 0.7) == pytest.approx(0.5, abs=1e-9)


# --- CPT -----------------------------------------------------------------------------------------

# A curve that dips, so qualities are not increasing (np.interp, as RouteLLM uses it, would need
# them to be): q_weak = 0.5, q_strong = 0.75, gap 0.25.
DIP_SHARE = [0, 0.25, 0.5, 0.75, 1]
DIP_QUAL = [0.5, 0.625, 0.5625, 0.6875, 0.75]


@pytest.mark.parametrize(
    ("pct", "expected"),
    [
        pytest.param(0.0, 0.0, id="zero"),  # target 0.5, met at the first point
        # target 0.5625: on segment (0, 0.5)-(0.25, 0.625) at 0.0625 / 0.125 = half -> 0.125.
        pytest.param(0.25, 0.125, id="interpolated"),
        pytest.param(0.5, 0.25, id="at-a-point"),  # target 0.625 = quality at share 0.25
        # target 0.65625: first met on segment (0.5, 0.5625)-(0.75, 0.6875), not before the dip:
        # (0.65625 - 0.5625) / 0.125 = 0.75 of the way -> 0.5 + 0.75 * 0.25 = 0.6875.
        pytest.param(0.625, 0.6875, id="after-dip"),
        pytest.param(1.0, 1.0, id="full"),  # target 0.75, only at the all-strong end
    ],
)
def test_cpt(pct: float, expected: float) -> None:
    out = cpt(DIP_SHARE, DIP_QUAL, 0.5, 0.75, pct)
    assert type(out) is float
    assert out == pytest.approx(expected, **EXACT)


def test_cpt_is_order_independent() -> None:
    order = [3, 0, 4, 2, 1]
    share = [DIP_SHARE[i] for i in order]
    qual = [DIP_QUAL[i] for i in order]
    assert cpt(share, qual, 0.5, 0.75, 0.625) == pytest.approx(0.6875, **EXACT)


def test_cpt_full_gap_despite_rounding() -> None:
    # 1.0 * (0.9 - 0.3) + 0.3 == 0.9000000000000001 > 0.9: still reached at the all-strong point.
    assert 1.0 * (0.9 - 0.3) + 0.3 > 0.9
    assert cpt([0, 0.5, 1], [0.3, 0.6, 0.9], 0.3, 0.9, 1.0) == 1.0


def test_cpt_ties_in_share_are_a_vertical_jump() -> None:
    # Sorted (share, quality): (0, .5) (0.5, .5) (0.5, .75) (1, .75); target 0.625 is crossed on
    # the vertical segment at share 0.5, whichever order the tied points came in.
    for share, qual in [
        ([0, 0.5, 0.5, 1], [0.5, 0.5, 0.75, 0.75]),
        ([0, 0.5, 0.5, 1], [0.5, 0.75, 0.5, 0.75]),
    ]:
        assert cpt(share, qual, 0.5, 0.75, 0.5) == 0.5


def test_cpt_starting_above_zero() -> None:
    assert cpt([0.25, 1], [0.75, 0.75], 0.5, 0.75, 0.5) == 0.25


def test_cpt_is_nan_when_never_reached() -> None:
    assert math.isnan(cpt(DIP_SHARE, DIP_QUAL, 0.5, 0.75, 1.5))  # target 0.875 > max 0.75


def test_cpt_validates() -> None:
    with pytest.raises(ValueError, match="pct must be finite"):
        cpt(DIP_SHARE, DIP_QUAL, 0.5, 0.75, math.nan)
    with pytest.raises(ValueError, match="same length"):
        cpt(DIP_SHARE, DIP_QUAL[:-1], 0.5, 0.75, 0.5)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=10),
    st.integers(0, 10),
)
def test_cpt_is_where_the_curve_first_reaches_the_target(
    points: list[tuple[int, int]], pct_tenths: int
) -> None:
    share = np.array([p[0] / 20 for p in points])
    qual = np.array([p[1] / 20 for p in points])
    pct = pct_tenths / 10
    target = pct * (0.75 - 0.25) + 0.25
    out = cpt(share, qual, 0.25, 0.75, pct)
    if math.isnan(out):
        assert qual.max() < target - 1e-12
        return
    assert share.min() <= out <= share.max()
    # No point strictly before the result reaches the target; one at or after it does.
    assert np.all(qual[share < out - 1e-12] < target - 1e-12)
    assert np.any(qual[share >= out - 1e-12] >= target - 1e-12)


# --- non-decreasing convex hull ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("costs", "quals", "hull_c", "hull_q"),
    [
        pytest.param([2], [0.5], [2], [0.5], id="single"),
        pytest.param([1, 1], [0.25, 0.5], [1], [0.5], id="same-cost-keeps-best"),
        # (1, 0.25) is under the chord (0, 0)-(2, 0.75), which is 0.375 at cost 1.
        pytest.param([0, 1, 2], [0, 0.25, 0.75], [0, 2], [0, 0.75], id="pops-non-concave"),
        pytest.param([1, 2, 3], [0.75, 0.5, 0.25], [1], [0.75], id="cheapest-is-best"),
        # A (1, .5) cheapest; B (2, .5) dominated; C (3, .625) under chord A-D (0.75 at cost 3);
        # D (4, .875); H (5, .9375) collinear on D-E (slope 0.0625 both sides); E (6, 1) best;
        # F (7, 1) costlier and not better; G (8, .75) dominated.
        pytest.param(
            [1, 2, 3, 4, 5, 6, 7, 8],
            [0.5, 0.5, 0.625, 0.875, 0.9375, 1.0, 1.0, 0.75],
            [1, 4, 6],
            [0.5, 0.875, 1.0],
            id="mixed",
        ),
        pytest.param(
            [8, 3, 6, 1, 5, 7, 4, 2],
            [0.75, 0.625, 1.0, 0.5, 0.9375, 1.0, 0.875, 0.5],
            [1, 4, 6],
            [0.5, 0.875, 1.0],
            id="mixed-shuffled",
        ),
    ],
)
def test_nondecreasing_convex_hull(costs: list, quals: list, hull_c: list, hull_q: list) -> None:
    hc, hq = nondecreasing_convex_hull(costs, quals)
    assert hc.tolist() == hull_c
    assert hq.tolist() == hull_q


@pytest.mark.parametrize(
    ("costs", "quals", "message"),
    [
        pytest.param([], [], "costs must not be empty", id="empty"),
        pytest.param([1, 2], [0.5], "same length, got 2 and 1", id="length"),
        pytest.param([1, math.inf], [0.5, 0.6], "costs must contain only finite", id="inf"),
    ],
)
def test_nondecreasing_convex_hull_validates(costs: list, quals: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nondecreasing_convex_hull(costs, quals)


POINTS = st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), min_size=1, max_size=12)


def _scaled(points: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    # Grid points keep slopes well-conditioned, so the properties need only a tiny tolerance.
    return np.array([p[0] / 10 for p in points]), np.array([p[1] / 100 for p in points])


@settings(max_examples=100, deadline=None)
@given(POINTS)
def test_hull_properties(points: list[tuple[int, int]]) -> None:
    c, q = _scaled(points)
    hc, hq = nondecreasing_convex_hull(c, q)
    assert np.all(np.diff(hc) > 0)
    assert np.all(np.diff(hq) > 0)
    for i in range(hc.size - 2):  # concave: every consecutive triple turns right (or is straight)
        cross = (hc[i + 1] - hc[i]) * (hq[i + 2] - hq[i]) - (hq[i + 1] - hq[i]) * (
            hc[i + 2] - hc[i]
        )
        assert cross <= 1e-12
    assert set(zip(hc, hq, strict=True)) <= set(zip(c, q, strict=True))
    assert hc[0] == c.min() and hq[0] == q[c == c.min()].max()
    assert hq[-1] == q.max()
    assert np.all(q <= hull_value(hc, hq, c) + 1e-12)  # no point lies above the hull


# --- hull_value ----------------------------------------------------------------------------------


def test_hull_value() -> None:
    # Hull (1, 0.5)-(3, 0.75): nan before 1, 0.625 halfway, flat at 0.75 after 3.
    out = hull_value([1, 3], [0.5, 0.75], [0, 1, 2, 3, 10])
    assert np.array_equal(out, [math.nan, 0.5, 0.625, 0.75, 0.75], equal_nan=True)


def test_hull_value_keeps_the_shape_of_c() -> None:
    assert hull_value([1, 3], [0.5, 0.75], 2).shape == ()
    assert hull_value([1, 3], [0.5, 0.75], [[1, 2], [3, 4]]).tolist() == [
        [0.5, 0.625],
        [0.75, 0.75],
    ]


@pytest.mark.parametrize(
    ("hull_c", "hull_q", "c", "message"),
    [
        pytest.param([3, 1], [0.5, 0.75], [2], "strictly increasing", id="unsorted"),
        pytest.param([1, 1], [0.5, 0.75], [2], "strictly increasing", id="repeated"),
        pytest.param([1, 3], [0.5], [2], "same length", id="length"),
        pytest.param([1, 3], [0.5, 0.75], [math.nan], "c must not contain nan", id="nan-c"),
    ],
)
def test_hull_value_validates(hull_c: list, hull_q: list, c: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        hull_value(hull_c, hull_q, c)


# --- AIQ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("costs", "quals", "c_min", "c_max", "expected"),
    [
        # One flat segment: (3, 0.5) is dominated, the hull is 0.5 from cost 1 on.
        pytest.param([1, 3], [0.5, 0.5], 1, 3, 0.5, id="flat"),
        # 0 on [0, 1), 0.5 on [1, 3]: area 1.0 over a width of 3.
        pytest.param([1, 3], [0.5, 0.5], 0, 3, 1 / 3, id="flat-unreachable-start"),
        # Straight (1, .5)-(3, .75): area 2 * 0.625 = 1.25 over 2.
        pytest.param([1, 3], [0.5, 0.75], 1, 3, 0.625, id="sloped"),
        # 0 on [0, 1], 1.25 on [1, 3], 0.75 on [3, 4]: 2.0 over 4.
        pytest.param([1, 3], [0.5, 0.75], 0, 4, 0.5, id="sloped-wide"),
        # [2, 3]: (0.625 + 0.75) / 2 = 0.6875; [3, 5]: 1.5. (0.6875 + 1.5) / 3.
        pytest.param([1, 3], [0.5, 0.75], 2, 5, 2.1875 / 3, id="sloped-inside"),
        pytest.param([5], [1.0], 0, 2, 0.0, id="never-reachable"),
        # Hull (1, .5)-(4, .875)-(6, 1) then flat: 3 * 0.6875 + 2 * 0.9375 + 2 * 1 = 5.9375 / 7.
        pytest.param(
            [1, 2, 3, 4, 5, 6, 7, 8],
            [0.5, 0.5, 0.625, 0.875, 0.9375, 1.0, 1.0, 0.75],
            1,
            8,
            5.9375 / 7,
            id="mixed",
        ),
    ],
)
def test_aiq(costs: list, quals: list, c_min: float, c_max: float, expected: float) -> None:
    out = aiq(costs, quals, c_min, c_max)
    assert type(out) is float
    assert out == pytest.approx(expected, **EXACT)


def test_aiq_anchor_makes_the_cheap_end_reachable() -> None:
    # Alone, (4, 0.75) is unreachable below cost 4: AIQ over [1, 4] is 0. With the anchor (1, 0.5)
    # the hull is the line (1, .5)-(4, .75), whose mean is 0.625.
    assert aiq([4], [0.75], 1, 4) == 0.0
    assert aiq([4], [0.75], 1, 4, anchor=(1, 0.5)) == pytest.approx(0.625, **EXACT)


def test_aiq_anchor_under_the_hull_changes_nothing() -> None:
    assert aiq([1, 3], [0.5, 0.75], 1, 3, anchor=(2, 0.25)) == pytest.approx(0.625, **EXACT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"c_min": 3, "c_max": 3}, "c_max must be greater than c_min", id="empty"),
        pytest.param({"c_min": 3, "c_max": 1}, "c_max must be greater than c_min", id="reversed"),
        pytest.param({"c_max": math.inf}, "c_max must be finite", id="inf"),
        pytest.param({"anchor": (1, 0.5, 2)}, "anchor must be a", id="anchor-triple"),
        pytest.param({"anchor": (1, math.nan)}, "anchor quality must be finite", id="anchor-nan"),
    ],
)
def test_aiq_validates(kwargs: dict, message: str) -> None:
    args = {"c_min": 1, "c_max": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        aiq([1, 3], [0.5, 0.75], **args)


@settings(max_examples=100, deadline=None)
@given(POINTS, POINTS, st.integers(0, 100), st.integers(1, 50))
def test_aiq_never_drops_when_points_are_added(
    base: list[tuple[int, int]], extra: list[tuple[int, int]], lo: int, width: int
) -> None:
    c, q = _scaled(base)
    ce, qe = _scaled(extra)
    lo_c, hi_c = lo / 10, (lo + width) / 10
    small = aiq(c, q, lo_c, hi_c)
    large = aiq(np.concatenate([c, ce]), np.concatenate([q, qe]), lo_c, hi_c)
    assert large >= small - 1e-12


@settings(max_examples=100, deadline=None)
@given(POINTS)
def test_aiq_over_the_points_own_range_lies_within_their_qualities(
    points: list[tuple[int, int]],
) -> None:
    c, q = _scaled(points)
    assume(c.min() < c.max())
    out = aiq(c, q, c.min(), c.max())
    assert q.min() - 1e-12 <= out <= q.max() + 1e-12


@settings(max_examples=30, deadline=None)
@given(POINTS, st.integers(0, 100), st.integers(1, 50))
def test_aiq_matches_dense_sampling(points: list[tuple[int, int]], lo: int, width: int) -> None:
    c, q = _scaled(points)
    lo_c, hi_c = lo / 10, (lo + width) / 10
    grid = np.linspace(lo_c, hi_c, 20001)
    values = np.nan_to_num(hull_value(*nondecreasing_convex_hull(c, q), grid), nan=0.0)
    # The trapezoid on a fine grid is off only near the jump from 0 at the first vertex.
    approx = float(np.sum((values[1:] + values[:-1]) / 2) * (grid[1] - grid[0]) / (hi_c - lo_c))
    assert aiq(c, q, lo_c, hi_c) == pytest.approx(approx, abs=1e-3)


# --- zero router ---------------------------------------------------------------------------------


def test_zero_router_is_the_hull_of_the_single_models() -> None:
    # (2, 0.5625) lies under the chord (1, .5)-(4, .875), which is 0.625 at cost 2.
    hc, hq = zero_router([1, 2, 4], [0.5, 0.5625, 0.875])
    assert hc.tolist() == [1, 4]
    assert hq.tolist() == [0.5, 0.875]


def test_zero_router_aiq_is_the_mean_height_of_the_hull() -> None:
    # Hull area over [1, 4]: 3 * (0.5 + 0.875) / 2 = 2.0625; divided by the width 3 -> 0.6875.
    out = zero_router_aiq([1, 2, 4], [0.5, 0.5625, 0.875])
    assert type(out) is float
    assert out == pytest.approx(2.0625 / 3, **EXACT)


def test_zero_router_aiq_needs_two_costs() -> None:
    with pytest.raises(ValueError, match="at least two distinct costs"):
        zero_router_aiq([2, 2], [0.5, 0.75])


# --- cost_to_reach -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param(0.8, 2.0, id="exact"),
        pytest.param(0.5, 1.0, id="cheapest"),
        pytest.param(0.8 + 1e-13, 2.0, id="within-tolerance"),
        pytest.param(0.8 + 1e-9, 3.0, id="beyond-tolerance"),
        pytest.param(0.95, None, id="unreachable"),
    ],
)
def test_cost_to_reach(target: float, expected: float | None) -> None:
    out = cost_to_reach([3, 1, 2], [0.9, 0.5, 0.8], target)
    assert out == expected
    assert out is None or type(out) is float


def test_cost_to_reach_validates() -> None:
    with pytest.raises(ValueError, match="same length"):
        cost_to_reach([1, 2], [0.5], 0.5)


# --- Brier ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("proba", "y", "expected"),
    [
        # Row 1: (0.5 - 1)^2 + 0.5^2 = 0.5; row 2: 0. Mean 0.25.
        pytest.param([[0.5, 0.5], [1, 0]], [0, 0], 0.25, id="two-rows"),
        # 0.25^2 + (0.5 - 1)^2 + 0.25^2 = 0.0625 + 0.25 + 0.0625.
        pytest.param([[0.25, 0.5, 0.25]], [1], 0.375, id="three-classes"),
        pytest.param([[0, 1]], [0], 2.0, id="worst"),  # 1 + 1
        pytest.param([[0, 1]], [1.0], 0.0, id="float-labels"),
    ],
)
def test_brier_multiclass(proba: list, y: list, expected: float) -> None:
    out = brier_multiclass(proba, y)
    assert type(out) is float
    assert out == expected


@pytest.mark.parametrize(
    ("proba", "y", "message"),
    [
        pytest.param([0.5, 0.5], [0], "two-dimensional", id="1d"),
        pytest.param(np.zeros((0, 2)), [], "proba must not be empty", id="empty"),
        pytest.param([[0.5, 0.5]], [0, 1], "same number of rows, got 1 and 2", id="rows"),
        pytest.param([[0.5, 0.5]], [2], r"class indices in \[0, 2\)", id="out-of-range"),
        pytest.param([[0.5, 0.5]], [-1], r"class indices in \[0, 2\)", id="negative"),
        pytest.param([[0.5, 0.5]], [0.5], "integer class indices", id="fractional"),
        pytest.param([[1.5, -0.5]], [0], r"proba must lie in \[0, 1\]", id="not-proba"),
    ],
)
def test_brier_multiclass_validates(proba: list, y: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        brier_multiclass(proba, y)


@pytest.mark.parametrize(
    ("p", "y", "expected"),
    [
        # ((0.75 - 1)^2 + (0.25 - 0.5)^2) / 2 = (0.0625 + 0.0625) / 2.
        pytest.param([0.75, 0.25], [1, 0.5], 0.0625, id="soft-label"),
        pytest.param([1, 0], [True, False], 0.0, id="perfect"),
        pytest.param([1], [0], 1.0, id="worst"),
    ],
)
def test_brier_binary(p: list, y: list, expected: float) -> None:
    out = brier_binary(p, y)
    assert type(out) is float
    assert out == expected


@pytest.mark.parametrize(
    ("p", "y", "message"),
    [
        pytest.param([0.5], [1, 0], "same length, got 1 and 2", id="length"),
        pytest.param([], [], "p must not be empty", id="empty"),
        pytest.param([0.5], [2], r"y must lie in \[0, 1\]", id="label-range"),
        pytest.param([1.25], [1], r"p must lie in \[0, 1\]", id="proba-range"),
    ],
)
def test_brier_binary_validates(p: list, y: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        brier_binary(p, y)


# --- ECE -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "correct", "n_bins", "expected"),
    [
        # Bin (0.8, 0.9]: acc 0.5, conf 0.9, weight 1/2 -> 0.2; bin (0.2, 0.3]: acc 0, conf 0.3,
        # weight 1/2 -> 0.15. Total 0.35.
        pytest.param([0.9, 0.9, 0.3, 0.3], [1, 0, 0, 0], 10, 0.35, id="two-bins"),
        pytest.param([0.75] * 4, [1, 1, 1, 0], 15, 0.0, id="calibrated"),
        # 0 falls in the first bin, 1 in the last; both are right.
        pytest.param([0.0, 1.0], [False, True], 15, 0.0, id="extremes"),
        # One bin: |mean correct - mean conf| = |0.5 - 0.625|.
        pytest.param([0.5, 0.75], [1, 0], 1, 0.125, id="one-bin"),
        # 0.30000000000000004 is exactly the edge closing (0.2, 0.3] for 10 bins, so it shares
        # that bin with 0.25: |1 - 0.55| / 2 = 0.225 (in the next bin: (0.75 + 0.3) / 2 = 0.525).
        pytest.param([0.25, np.linspace(0, 1, 11)[3]], [1, 0], 10, 0.225, id="edge-closes-bin"),
    ],
)
def test_expected_calibration_error(
    conf: list, correct: list, n_bins: int, expected: float
) -> None:
    out = expected_calibration_error(conf, correct, n_bins=n_bins)
    assert type(out) is float
    assert out == pytest.approx(expected, **EXACT)


@pytest.mark.parametrize(
    ("conf", "correct", "n_bins", "message"),
    [
        pytest.param([0.5], [0.5], 15, "correct must hold only 0/1", id="soft-correct"),
        pytest.param([1.5], [1], 15, r"confidence must lie in \[0, 1\]", id="conf-range"),
        pytest.param([0.5], [1, 0], 15, "same length", id="length"),
        pytest.param([0.5], [1], 0, "n_bins must be a positive integer", id="zero-bins"),
        pytest.param([0.5], [1], 2.5, "n_bins must be a positive integer", id="float-bins"),
        pytest.param([0.5], [1], True, "n_bins must be a positive integer", id="bool-bins"),
    ],
)
def test_expected_calibration_error_validates(
    conf: list, correct: list, n_bins: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(conf, correct, n_bins=n_bins)


def test_results_serialise_to_json() -> None:
    results = {
        "pgr": pgr(0.625, 0.5, 0.75),
        "apgr": apgr([0, 1], [0.5, 0.75], 0.5, 0.75),
        "cpt": cpt([0, 1], [0.5, 0.75], 0.5, 0.75, 0.5),
        "aiq": aiq([1, 3], [0.5, 0.75], 1, 3),
        "zero": zero_router_aiq([1, 3], [0.5, 0.75]),
        "reach": cost_to_reach([1, 3], [0.5, 0.75], 0.75),
        "brier_m": brier_multiclass([[0.5, 0.5]], [0]),
        "brier_b": brier_binary([0.5], [1]),
        "ece": expected_calibration_error([0.5], [1]),
    }
    assert json.loads(json.dumps(results)) == results
