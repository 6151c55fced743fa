"""Column weights of the hashed n-grams (idf): the formula, validation, the hot path against the
batch reweighting training uses, and that they survive an artifact round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features import Prompt, PromptFeaturizer, from_messages
from features.extractor import idf_weights

N = 2**10


def fitted() -> PromptFeaturizer:
    return PromptFeaturizer(n_hash_features=N).fit([])


def test_idf_weights_are_sklearns_smoothed_idf_raised_to_the_power() -> None:
    df = np.array([0, 1, 5, 10])
    plain = idf_weights(df, 10, 1.0)
    expected = [math.log(11 / (1 + d)) + 1 for d in (0, 1, 5, 10)]
    np.testing.assert_allclose(plain, expected, rtol=1e-15)
    np.testing.assert_allclose(idf_weights(df, 10, 2.0), plain**2, rtol=1e-15)
    np.testing.assert_array_equal(idf_weights(df, 10, 0.0), np.ones(4))
    # A column every prompt has keeps weight 1; the rarer a column, the heavier.
    assert plain[-1] == 1.0 and np.all(np.diff(plain) < 0)


@pytest.mark.parametrize(
    ("df", "n_docs", "power"),
    [([3], 2, 1.0), ([-1], 2, 1.0), ([[1]], 2, 1.0), ([1], 2, -1.0), ([1], 2, math.inf)],
)
def test_idf_weights_refuse_impossible_counts(df, n_docs, power) -> None:
    with pytest.raises(ValueError):
        idf_weights(np.array(df), n_docs, power)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (np.ones(N - 1), f"column_weights: expected {N} weights"),
        (np.zeros(N), "column_weights: every weight must be finite and > 0"),
        (np.full(N, np.nan), "column_weights: every weight must be finite and > 0"),
    ],
)
def test_set_column_weights_names_the_problem(weights, message) -> None:
    with pytest.raises(ValueError) as info:
        fitted().set_column_weights(weights)
    assert str(info.value).startswith(message)


def test_no_weights_and_unit_weights_compute_the_documented_rows() -> None:
    plain = fitted()
    ones = fitted().set_column_weights(np.ones(N))
    for text in ["Why is the sky blue?", "Solve 3x + 4 = 10 step by step.", ""]:
        d0, c0, v0 = plain.transform_one(text)
        d1, c1, v1 = ones.transform_one(text)
        np.testing.assert_array_equal(d0, d1)
        np.testing.assert_array_equal(c0, c1)
        np.testing.assert_allclose(v0, v1, rtol=1e-15)
    assert plain.set_column_weights(None).column_weights_ is None
    assert fitted().fit([]).column_weights_ is None  # fit resets them


def test_a_heavier_column_takes_a_larger_share_of_the_row() -> None:
    f = fitted()
    dense, cols, values = f.transform_one("photosynthesis converts light")
    heavy = cols[0] - f.n_dense_
    w = np.ones(N)
    w[heavy] = 4.0
    _, cols_w, values_w = f.set_column_weights(w).transform_one("photosynthesis converts light")
    np.testing.assert_array_equal(cols, cols_w)
    assert abs(values_w[0]) > abs(values[0])
    assert np.all(np.abs(values_w[1:]) < np.abs(values[1:]))
    assert math.isclose(float(np.dot(values_w, values_w)), 1.0, rel_tol=1e-12)


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
conversations = st.lists(texts, min_size=1, max_size=4).map(
    lambda turns: from_messages(
        [{"role": "system", "content": "You are terse."}]
        + [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    )
)


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.one_of(texts, conversations), min_size=1, max_size=6),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_hot_path_equals_the_batch_reweighting_training_uses(
    prompts: list[str | Prompt], seed: int
) -> None:
    raw = fitted().transform(prompts)
    weights = np.random.default_rng(seed).uniform(0.5, 8.0, N)
    f = fitted().set_column_weights(weights)
    hot = f.transform(prompts)  # row by row through transform_one
    batch = f.reweight(raw)
    assert hot.shape == batch.shape
    np.testing.assert_allclose(hot.toarray(), batch.toarray(), rtol=1e-12, atol=1e-15)
    hashed = batch[:, f.n_dense_ :]
    norms = np.sqrt(np.asarray(hashed.multiply(hashed).sum(axis=1)).ravel())
    assert np.all((np.abs(norms - 1) < 1e-12) | (norms == 0))
    # The dense block is not weighted.
    np.testing.assert_array_equal(batch[:, : f.n_dense_].toarray(), raw[:, : f.n_dense_].toarray())


def test_a_router_trained_with_idf_weights_keeps_them_through_the_artifact(
    tiny_artifact,
) -> None:
    from models.artifact import load_router

    router, _manifest = load_router(tiny_artifact)
    w = router.featurizer.column_weights_
    assert w is not None and w.shape == (router.featurizer.n_hash_features,)
    # tiny_artifact is trained at power 1: the smoothed idf, 1 for a column in every prompt,
    # larger for rarer ones.
    assert w.min() >= 1.0 and w.max() > 2.0
