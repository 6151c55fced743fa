"""The pipeline's hard filters as pure functions over per-model arrays."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from serving import filters
from serving.filters import (
    context_ok,
    cost_ok,
    describe_context,
    describe_cost,
    describe_latency,
    describe_vision,
    latency_ok,
    needed_tokens,
    vision_ok,
)


def test_public_api():
    assert sorted(filters.__all__) == sorted(
        [
            "cost_ok",
            "context_ok",
            "describe_context",
            "describe_cost",
            "describe_latency",
            "describe_vision",
            "latency_ok",
            "needed_tokens",
            "vision_ok",
        ]
    )


@pytest.mark.parametrize(
    ("vision", "images", "expected"),
    [
        pytest.param([True, False, True], 0, [True, True, True], id="no-images-all"),
        pytest.param([True, False, True], 1, [True, False, True], id="image-needs-vision"),
        pytest.param([False, False], 3, [False, False], id="none-has-vision"),
    ],
)
def test_vision_ok(vision, images, expected):
    flags = np.array(vision)
    assert vision_ok(flags, images).tolist() == expected
    flags_before = flags.copy()
    vision_ok(flags, images)[:] = False  # the result is a fresh array, never the input
    assert flags.tolist() == flags_before.tolist()


@pytest.mark.parametrize(
    ("windows", "input_tokens", "output_tokens", "expected"),
    [
        pytest.param([4096, 8192], 3796, 300.0, [True, True], id="exactly-fits"),
        pytest.param([4096, 8192], 3797, 300.0, [False, True], id="one-token-over"),
        pytest.param([4096, 8192], 100, np.array([4000.0, 10.0]), [False, True], id="per-model"),
        pytest.param([4096, 8192], 10_000, 1.0, [False, False], id="none-fits"),
    ],
)
def test_context_ok(windows, input_tokens, output_tokens, expected):
    need = needed_tokens(input_tokens, output_tokens)
    assert context_ok(np.array(windows, dtype=float), need).tolist() == expected


@pytest.mark.parametrize(
    ("costs", "limit", "expected"),
    [
        pytest.param([0.01, 0.002, 0.005], None, [True, True, True], id="no-limit"),
        pytest.param([0.01, 0.002, 0.005], 0.005, [False, True, True], id="at-limit-kept"),
        pytest.param([0.01, 0.002], 0.0, [False, False], id="zero-budget"),
    ],
)
def test_cost_ok(costs, limit, expected):
    assert cost_ok(np.array(costs), limit).tolist() == expected


@pytest.mark.parametrize(
    ("latency", "limit", "expected"),
    [
        pytest.param([2500.0, 800.0], None, [True, True], id="no-limit"),
        pytest.param([2500.0, 800.0], 800.0, [False, True], id="at-limit-kept"),
        pytest.param([2500.0, 800.0], 100.0, [False, False], id="too-strict"),
    ],
)
def test_latency_ok(latency, limit, expected):
    assert latency_ok(np.array(latency), limit).tolist() == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(describe_vision(2), "the request has 2 image(s)", id="vision"),
        pytest.param(
            describe_context(5000, 300.0, 4096.0),
            "needs 5,300 tokens (5,000 input + 300 expected output); context window is 4,096",
            id="context",
        ),
        pytest.param(
            describe_cost(0.0123, 0.01),
            "estimated cost $0.0123 exceeds max_cost_usd $0.01",
            id="cost",
        ),
        pytest.param(
            describe_latency(2500.0, 1000.0, None),
            "catalog (none observed) latency 2,500 ms exceeds max_latency_ms 1,000",
            id="latency-catalog",
        ),
        pytest.param(
            describe_latency(1234.0, 1000.0, 50.0),
            "observed p50 latency 1,234 ms exceeds max_latency_ms 1,000",
            id="latency-observed",
        ),
    ],
)
def test_descriptions(text, expected):
    assert text.startswith(expected)


@settings(max_examples=60, deadline=None)
@given(
    values=arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1e6)),
    limit=st.floats(0, 1e6),
)
def test_cost_and_latency_keep_exactly_what_is_within_the_limit(values, limit):
    for check in (cost_ok, latency_ok):
        kept = check(values, limit)
        assert kept.dtype == bool and kept.shape == values.shape
        assert all(bool(k) == (v <= limit) for k, v in zip(kept, values, strict=True))
