"""Label derivation: the best model per prompt, and the quality/cost/token matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from features.text import normalize
from models.catalog import Catalog
from training.labels import best_model_index, build_targets, outcome_cost
from training.records import Outcome, Record

NAN = float("nan")

CATALOG = Catalog.from_dict(
    {
        "typical_output_tokens": 300,
        "models": [
            {
                "name": "a",
                "input_price_per_1m": 1.0,
                "output_price_per_1m": 2.0,
                "latency_ms": 100,
                "context_window": 1000,
            },
            {
                "name": "b",
                "input_price_per_1m": 10.0,
                "output_price_per_1m": 30.0,
                "latency_ms": 100,
                "context_window": 1000,
            },
            {
                "name": "free-output",
                "input_price_per_1m": 1.0,
                "output_price_per_1m": 0.0,
                "latency_ms": 100,
                "context_window": 1000,
            },
        ],
    }
)


def _rec(text: str = "x" * 40, **outcomes: Outcome) -> Record:
    return Record(prompt=normalize(text), outcomes=dict(outcomes))


# --------------------------------------------------------------------------- best_model_index
@pytest.mark.parametrize(
    ("quality", "cost", "tolerance", "expected"),
    [
        pytest.param([0.2, 0.9, 0.5], [1, 2, 3], 0.0, 1, id="clear-best"),
        pytest.param([1.0, 1.0, 1.0], [3, 1, 2], 0.0, 1, id="tie-goes-to-cheapest"),
        pytest.param([1.0, 1.0], [2, 2], 0.0, 0, id="tie-in-cost-too-first-index"),
        pytest.param([0.9, 0.85, 0.5], [3, 1, 0.1], 0.1, 1, id="within-tolerance"),
        pytest.param([0.9, 0.85, 0.5], [3, 1, 0.1], 0.0, 0, id="zero-tolerance"),
        pytest.param([0.9, 0.8, 0.5], [3, 1, 0.1], 0.1, 1, id="exactly-at-tolerance"),
        pytest.param([0.9, 0.79, 0.5], [3, 1, 0.1], 0.1, 0, id="just-outside-tolerance"),
        pytest.param([0.1 + 0.2, 0.3], [2, 1], 0.0, 1, id="float-rounding-still-ties"),
        pytest.param([0.9, NAN, 0.9], [3, 0.1, 1], 0.0, 2, id="nan-quality-ignored"),
        pytest.param([NAN, 0.0], [0.1, 1], 0.0, 1, id="only-one-labelled"),
        pytest.param([NAN, NAN], [1, 2], 0.0, -1, id="none-labelled"),
        pytest.param([0.0, 0.0, 0.0], [5, 4, 6], 0.0, 1, id="all-fail-cheapest"),
    ],
)
def test_best_model_index(
    quality: list[float], cost: list[float], tolerance: float, expected: int
) -> None:
    got = best_model_index(np.array(quality, float), np.array(cost, float), tolerance)
    assert got == expected
    assert isinstance(got, int)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 6),
    tolerance=st.floats(0.0, 1.0),
)
def test_best_model_index_properties(data: st.DataObject, k: int, tolerance: float) -> None:
    quality = data.draw(
        hnp.arrays(np.float64, k, elements=st.one_of(st.floats(0, 1), st.just(NAN)))
    )
    cost = data.draw(hnp.arrays(np.float64, k, elements=st.floats(0, 1e3)))
    i = best_model_index(quality, cost, tolerance)
    if np.isnan(quality).all():
        assert i == -1
        return
    best = np.nanmax(quality)
    assert not np.isnan(quality[i])
    assert quality[i] >= best - tolerance - 1e-12
    near = ~np.isnan(quality) & (quality >= best - tolerance - 1e-12)
    # nothing eligible is strictly cheaper, and among equal costs the first one wins
    assert cost[i] == cost[near].min()
    assert i == int(np.flatnonzero(near & (cost == cost[i]))[0])


# --------------------------------------------------------------------------- costs
def test_recorded_cost_wins() -> None:
    rec = _rec(a=Outcome(quality=1.0, cost_usd=0.123, input_tokens=10, output_tokens=10))
    assert outcome_cost(rec.outcomes["a"], "a", rec, CATALOG) == 0.123


def test_cost_from_tokens_times_price() -> None:
    rec = _rec(b=Outcome(quality=1.0, input_tokens=1000, output_tokens=200))
    assert outcome_cost(rec.outcomes["b"], "b", rec, CATALOG) == pytest.approx(
        (1000 * 10.0 + 200 * 30.0) / 1e6
    )


def test_cost_estimated_from_chars_and_typical_output() -> None:
    # 41 characters -> ceil(41 / 4) = 11 input tokens; output tokens: the catalog's 300.
    rec = _rec("y" * 41, a=Outcome(quality=0.5))
    assert outcome_cost(rec.outcomes["a"], "a", rec, CATALOG) == pytest.approx(
        (11 * 1.0 + 300 * 2.0) / 1e6
    )


def test_cost_with_only_output_tokens_estimates_input() -> None:
    rec = _rec("y" * 8, b=Outcome(quality=0.5, output_tokens=10))
    assert outcome_cost(rec.outcomes["b"], "b", rec, CATALOG) == pytest.approx(
        (2 * 10.0 + 10 * 30.0) / 1e6
    )


# --------------------------------------------------------------------------- build_targets
def test_build_targets_matrices() -> None:
    records = [
        _rec(
            "p" * 40,  # 10 estimated input tokens
            a=Outcome(quality=1.0, cost_usd=0.001),
            b=Outcome(quality=1.0, input_tokens=100, output_tokens=50),
        ),
        _rec("q" * 40, a=Outcome(quality=0.0), b=Outcome(quality=0.5, cost_usd=0.002)),
    ]
    t = build_targets(records, ("a", "b"), CATALOG)
    assert t.models == ("a", "b")
    np.testing.assert_array_equal(t.quality, [[1.0, 1.0], [0.0, 0.5]])
    np.testing.assert_allclose(
        t.cost,
        [
            [0.001, (100 * 10.0 + 50 * 30.0) / 1e6],
            [(10 * 1.0 + 300 * 2.0) / 1e6, 0.002],
        ],
        rtol=1e-12,
    )
    np.testing.assert_array_equal(t.label, [0, 1])
    assert t.label.dtype == np.int64
    assert t.labelled.all()
    # output tokens: implied by the recorded cost (a, row 0), recorded (b, row 0),
    # unknown (a, row 1), implied (b, row 1).
    implied_a = (0.001 - 10 * 1e-6) / 2e-6
    implied_b = (0.002 - 10 * 1e-5) / 3e-5
    np.testing.assert_allclose(
        t.output_tokens, [[implied_a, 50.0], [NAN, implied_b]], rtol=1e-9, equal_nan=True
    )


def test_implied_output_tokens_use_recorded_input_tokens_and_clip_at_zero() -> None:
    records = [
        _rec(a=Outcome(quality=1.0, cost_usd=0.0011, input_tokens=100)),
        # recorded cost below the input cost alone: implied tokens clip to 0, not negative
        _rec(b=Outcome(quality=1.0, cost_usd=1e-9, input_tokens=100)),
        # no output price: the tokens cannot be implied
        _rec(**{"free-output": Outcome(quality=1.0, cost_usd=0.5)}),
    ]
    t = build_targets(records, ("a", "b", "free-output"), CATALOG)
    assert t.output_tokens[0, 0] == pytest.approx((0.0011 - 100 * 1e-6) / 2e-6)
    assert t.output_tokens[1, 1] == 0.0
    assert math.isnan(t.output_tokens[2, 2])


def test_labels_need_two_labelled_models() -> None:
    records = [
        _rec(a=Outcome(quality=1.0), b=Outcome(quality=None)),  # b unlabelled
        _rec(b=Outcome(quality=0.0)),
        _rec(a=Outcome(quality=0.0), b=Outcome(quality=0.0)),
    ]
    t = build_targets(records, ("a", "b"), CATALOG)
    np.testing.assert_array_equal(t.label, [-1, -1, 0])  # all fail: the cheapest, a
    np.testing.assert_array_equal(t.labelled, [[True, False], [False, True], [True, True]])
    assert math.isnan(t.quality[0, 1]) and math.isnan(t.cost[0, 1])


def test_direct_labels() -> None:
    records = [
        Record(prompt=normalize("use b"), label="b"),
        Record(prompt=normalize("use a"), label="a"),
        Record(prompt=normalize("use z"), label="z"),  # not in the model list
    ]
    t = build_targets(records, ("a", "b"), CATALOG)
    np.testing.assert_array_equal(t.label, [1, 0, -1])
    assert not t.labelled.any()
    assert np.isnan(t.cost).all()


def test_models_outside_the_order_are_ignored() -> None:
    rec = _rec(a=Outcome(quality=0.2), b=Outcome(quality=0.9), c=Outcome(quality=1.0))
    t = build_targets([rec], ("b", "a"), CATALOG)
    np.testing.assert_array_equal(t.quality, [[0.9, 0.2]])
    np.testing.assert_array_equal(t.label, [0])  # b, in the order given


def test_tolerance_moves_the_label_to_the_cheaper_model() -> None:
    rec = _rec(
        a=Outcome(quality=0.8, cost_usd=0.001),
        b=Outcome(quality=0.9, cost_usd=0.01),
    )
    assert build_targets([rec], ("a", "b"), CATALOG).label.tolist() == [1]
    assert build_targets([rec], ("a", "b"), CATALOG, tolerance=0.1).label.tolist() == [0]
    assert build_targets([rec], ("a", "b"), CATALOG, tolerance=0.05).label.tolist() == [1]


def test_unknown_model_without_cost_needs_the_catalog() -> None:
    from models.errors import UnknownModelError

    rec = _rec(a=Outcome(quality=1.0), zz=Outcome(quality=1.0))
    with pytest.raises(UnknownModelError, match="'zz'"):
        build_targets([rec], ("a", "zz"), CATALOG)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(
                st.one_of(st.none(), st.floats(0, 1), st.sampled_from([0.0, 0.5, 1.0])),
                min_size=3,
                max_size=3,
            ),
            st.lists(st.sampled_from([0.0, 0.001, 0.01, 0.5]), min_size=3, max_size=3),
            st.sampled_from([None, "a", "b", "z"]),
        ),
        min_size=1,
        max_size=30,
    ),
    tolerance=st.floats(0.0, 1.0),
)
def test_build_targets_labels_every_row_as_best_model_index(rows, tolerance) -> None:
    """The labels are computed for all rows at once; row by row they are best_model_index's,
    and a direct label wins."""
    names = ("a", "b", "free-output")
    records = []
    for qualities, costs, direct in rows:
        outcomes = {
            m: Outcome(quality=q, cost_usd=c)
            for m, q, c in zip(names, qualities, costs, strict=True)
            if q is not None or direct is None
        }
        records.append(Record(prompt=normalize("x" * 40), outcomes=outcomes, label=direct))
    t = build_targets(records, names, CATALOG, tolerance=tolerance)
    for r, (rec, row_q, row_c) in enumerate(zip(records, t.quality, t.cost, strict=True)):
        if rec.label in names:
            assert t.label[r] == names.index(rec.label)
        elif np.count_nonzero(~np.isnan(row_q)) >= 2:
            assert t.label[r] == best_model_index(row_q, row_c, tolerance)
        else:
            assert t.label[r] == -1
