"""The in-process router: linear heads, one-vs-batch scoring, ranking, masks and explanations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import sparse

from features.extractor import PromptFeaturizer
from features.text import normalize
from models.errors import UnknownModelError
from models.router import STRATEGIES, LinearHead, Router, Scored

N_HASH = 256
MODELS = ("cheap", "mid", "strong")
PROMPTS = [
    normalize("hi"),
    normalize("Solve 3x + 4 = 10 step by step and explain your reasoning."),
    normalize("```python\ndef f(x):\n    return x * 2\n```\nWhy does this fail?"),
    normalize(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Name a colour"},
        ]
    ),
    normalize("???"),
    normalize("Résumé en français : 日本語のテキストも少し。"),
]


def _featurizer() -> PromptFeaturizer:
    return PromptFeaturizer(n_hash_features=N_HASH).fit([])


def _random_head(kind: str, n_dense: int, seed: int) -> LinearHead:
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(len(MODELS), n_dense + N_HASH))
    return LinearHead.from_coef(kind, coef, rng.normal(size=len(MODELS)), n_dense)  # type: ignore[arg-type]


def _router(**kw) -> Router:
    f = _featurizer()
    args = dict(
        models=MODELS,
        featurizer=f,
        heads={
            "quality": _random_head("sigmoid", f.n_dense_, 1),
            "classifier": _random_head("softmax", f.n_dense_, 2),
        },
        input_price=np.array([0.1, 1.0, 10.0]) / 1e6,
        output_price=np.array([0.2, 2.0, 30.0]) / 1e6,
        output_tokens=np.array([100.0, 200.0, 300.0]),
        cost_ref=0.01,
    )
    args.update(kw)
    return Router(**args)


def _constant_router(scores: list[float], kind: str = "sigmoid") -> Router:
    """A router whose quality head ignores the prompt: logits = bias."""
    f = _featurizer()
    k = len(scores)
    s = np.array(scores, dtype=np.float64)
    bias = np.log(s / (1 - s)) if kind == "sigmoid" else np.log(s)
    head = LinearHead(kind, np.zeros((f.n_dense_, k)), np.zeros((N_HASH, k), np.float32), bias)  # type: ignore[arg-type]
    name = "quality" if kind == "sigmoid" else "classifier"
    return Router(
        models=MODELS[:k],
        featurizer=f,
        heads={name: head},
        input_price=np.zeros(k),
        output_price=np.array([1.0, 5.0, 10.0][:k]) / 1e6,
        output_tokens=np.full(k, 1000.0),
        cost_ref=0.01,
        default_strategy=name,
    )


# --------------------------------------------------------------------------- LinearHead
def test_from_coef_splits_dense_and_hashed_blocks() -> None:
    coef = np.arange(2 * 5, dtype=float).reshape(2, 5)
    head = LinearHead.from_coef("sigmoid", coef, np.array([1.0, -1.0]), n_dense=2)
    np.testing.assert_array_equal(head.dense_w, [[0, 5], [1, 6]])
    np.testing.assert_array_equal(head.hashed_w, [[2, 7], [3, 8], [4, 9]])
    assert head.dense_w.dtype == np.float64 and head.hashed_w.dtype == np.float32
    assert head.dense_w.flags.c_contiguous and head.hashed_w.flags.c_contiguous
    np.testing.assert_array_equal(head.bias, [1.0, -1.0])


def test_payload_round_trip() -> None:
    head = _random_head("softmax", 39, 3)
    again = LinearHead.from_payload(head.to_payload())
    assert again.kind == "softmax"
    for name in ("dense_w", "hashed_w", "bias"):
        np.testing.assert_array_equal(getattr(again, name), getattr(head, name))
        assert getattr(again, name).dtype == getattr(head, name).dtype


@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
def test_logits_one_equals_batch(kind: str) -> None:
    f = _featurizer()
    head = _random_head(kind, f.n_dense_, 4)
    X = f.transform(PROMPTS)
    batch = head.logits_batch(X, f.n_dense_)
    assert batch.shape == (len(PROMPTS), len(MODELS))
    for i, p in enumerate(PROMPTS):
        one = head.logits_one(*f.transform_one(p), f.n_dense_)
        np.testing.assert_allclose(one, batch[i], rtol=1e-6, atol=1e-9)


def test_logits_are_w_dot_x_plus_b() -> None:
    f = _featurizer()
    head = _random_head("sigmoid", f.n_dense_, 5)
    X = sparse.csr_matrix(f.transform(PROMPTS[:2]))
    w = np.vstack([head.dense_w, head.hashed_w.astype(np.float64)])
    expected = X.toarray() @ w + head.bias
    np.testing.assert_allclose(head.logits_batch(X, f.n_dense_), expected, rtol=1e-9)


# --------------------------------------------------------------------------- scoring
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_score_equals_score_batch(strategy: str) -> None:
    r = _router()
    masks = np.array([[True, True, True], [True, False, True]] * 3)
    scores, costs = r.score_batch(PROMPTS, strategy=strategy, masks=masks)
    for i, p in enumerate(PROMPTS):
        one = r.score(p, strategy=strategy, mask=masks[i])
        np.testing.assert_allclose(one.score, scores[i], rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(one.cost_usd, costs[i], rtol=1e-12)
        assert one.strategy == strategy


def test_real_router_score_equals_score_batch(tiny_router: Router, sample_records: list) -> None:
    prompts = [r.prompt for r in sample_records[::60]]
    for strategy in tiny_router.heads:
        scores, costs = tiny_router.score_batch(prompts, strategy=strategy)
        for i, p in enumerate(prompts):
            one = tiny_router.score(p, strategy=strategy)
            np.testing.assert_allclose(one.score, scores[i], rtol=1e-6, atol=1e-12)
            np.testing.assert_allclose(one.cost_usd, costs[i], rtol=1e-12)


def test_sigmoid_head_scores_are_probabilities() -> None:
    s = _router().score(PROMPTS[1], strategy="quality").score
    assert s.shape == (3,)
    assert ((s > 0) & (s < 1)).all()
    assert not np.isclose(s.sum(), 1.0)  # independent per-model probabilities


def test_softmax_renormalised_over_mask() -> None:
    r = _router()
    full = r.score(PROMPTS[2], strategy="classifier").score
    assert full.sum() == pytest.approx(1.0)
    mask = np.array([True, False, True])
    part = r.score(PROMPTS[2], strategy="classifier", mask=mask).score
    assert part[1] == 0.0
    assert part[[0, 2]].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(part[[0, 2]], full[[0, 2]] / full[[0, 2]].sum(), rtol=1e-12)


def test_estimated_cost_per_model() -> None:
    r = _router()
    p = normalize("x" * 400)  # 100 estimated tokens
    sc = r.score(p)
    assert sc.input_tokens == 100
    np.testing.assert_allclose(
        sc.cost_usd, r.input_price * 100 + r.output_price * r.output_tokens, rtol=1e-12
    )
    fixed = r.score(p, expected_output_tokens=10)
    np.testing.assert_allclose(fixed.cost_usd, r.input_price * 100 + r.output_price * 10)


def test_unknown_strategy_lists_the_available_ones() -> None:
    r = _constant_router([0.5, 0.5])
    with pytest.raises(
        ValueError, match=r"strategy: unknown 'classifier'; available: \['quality'\]"
    ):
        r.score(PROMPTS[0], strategy="classifier")


def test_default_strategy_needs_a_head() -> None:
    with pytest.raises(ValueError, match="default_strategy 'classifier' has no head"):
        _router(heads={"quality": _random_head("sigmoid", 39, 1)}, default_strategy="classifier")


# --------------------------------------------------------------------------- ranking
def test_rank_orders_by_score_at_knob_zero() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    sc = r.score(PROMPTS[0])
    np.testing.assert_allclose(sc.score, [0.3, 0.9, 0.6])
    assert r.rank(sc, 0.0).tolist() == [1, 2, 0]


def test_rank_tie_goes_to_the_cheaper_model() -> None:
    r = _constant_router([0.7, 0.7, 0.7])
    sc = r.score(PROMPTS[0])
    assert r.rank(sc, 0.0).tolist() == [0, 1, 2]
    # Same scores, prices listed the other way round: order follows cost, not index.
    r.output_price = r.output_price[::-1].copy()
    assert r.rank(r.score(PROMPTS[0]), 0.0).tolist() == [2, 1, 0]


def test_large_knob_picks_the_cheapest() -> None:
    r = _constant_router([0.1, 0.5, 0.99])
    sc = r.score(PROMPTS[0])
    assert r.rank(sc, 0.0)[0] == 2
    assert r.rank(sc, 1e3).tolist() == [0, 1, 2]


def test_knob_trades_quality_for_cost_at_the_flip_point() -> None:
    # cheap 0.5, strong 0.8; costs 0.001 and 0.01 per request, c_ref 0.01:
    # utility gap 0.3 − λ·0.9 flips at λ = 1/3.
    r = _constant_router([0.5, 0.8])
    r.output_price = np.array([1.0, 10.0]) / 1e6
    sc = r.score(PROMPTS[0])
    np.testing.assert_allclose(sc.cost_usd, [0.001, 0.01])
    assert r.rank(sc, 0.33)[0] == 1
    assert r.rank(sc, 0.34)[0] == 0
    np.testing.assert_allclose(r.utility(sc.score, sc.cost_usd, 0.5), [0.45, 0.3])
    assert r.utility(sc.score, sc.cost_usd, 0.0) is sc.score


def test_rank_uses_the_default_knob() -> None:
    r = _constant_router([0.1, 0.5, 0.99])
    sc = r.score(PROMPTS[0])
    r.default_knob = 1e3
    assert r.rank(sc)[0] == 0
    r.default_knob = 0.0
    assert r.rank(sc)[0] == 2


def test_mask_restricts_the_ranking() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    sc = r.score(PROMPTS[0])
    assert r.rank(sc, 0.0, r.mask_for(["cheap", "strong"])).tolist() == [2, 0]
    assert r.rank(sc, 0.0, r.mask_for(["cheap"])).tolist() == [0]


def test_mask_for() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    np.testing.assert_array_equal(r.mask_for(None), [True, True, True])
    np.testing.assert_array_equal(r.mask_for(["strong", "cheap", "cheap"]), [True, False, True])
    assert r.mask_for(["mid"]).dtype == bool


def test_mask_for_unknown_names_it_and_the_candidates() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    with pytest.raises(UnknownModelError) as info:
        r.mask_for(["cheap", "gpt-5"])
    assert info.value.name == "gpt-5"
    assert info.value.field == "candidates"
    assert str(info.value) == "candidates: unknown model 'gpt-5'; known: cheap, mid, strong"


# --------------------------------------------------------------------------- explanations
def test_explain_returns_named_feature_contributions() -> None:
    r = _router()
    sc = r.score(PROMPTS[1], strategy="quality")
    out = r.explain(sc, chosen=2, against=0, top=5)
    names = list(r.featurizer.get_feature_names_out()[: r.n_dense])
    dense, idx, vals = sc.features
    head = r.heads["quality"]
    *named, hashed = out
    assert 1 <= len(named) <= 5
    all_contrib = dense * (head.dense_w[:, 2] - head.dense_w[:, 0])
    # A feature and its free-form copy are one entry under the base name, contributions summed.
    merged: dict[str, float] = {}
    for i, name in enumerate(names):
        base = name.removeprefix("ff.")
        merged[base] = merged.get(base, 0.0) + float(all_contrib[i])
    shown = [item["feature"] for item in named]
    assert len(set(shown)) == len(shown)
    assert not any(name.startswith("ff.") for name in shown)
    for item in named:
        assert item["contribution"] == round(merged[item["feature"]], 4)
        copies = [i for i, n in enumerate(names) if n.removeprefix("ff.") == item["feature"]]
        assert item["value"] in {round(float(dense[i]), 4) for i in copies}
    mags = [abs(d["contribution"]) for d in named]
    assert mags == sorted(mags, reverse=True)
    # the largest named contribution is the largest of all merged dense features
    assert named[0]["feature"] == max(merged, key=lambda k: abs(merged[k]))
    assert hashed["feature"] == "hashed n-grams (total)"
    assert hashed["value"] == idx.size
    hw = head.hashed_w[idx - r.n_dense].astype(np.float64)
    assert hashed["contribution"] == pytest.approx(float(vals @ (hw[:, 2] - hw[:, 0])), abs=1e-4)


def test_explain_without_rival_and_without_ngrams() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    r.heads["quality"].dense_w[0, 1] = 2.0  # weight on len.chars_log for "mid"
    sc = r.score(normalize("hi"))
    out = r.explain(sc, chosen=1)
    assert out[0] == {
        "feature": "len.chars_log",
        "value": round(float(np.log1p(2)), 4),
        "contribution": round(float(2.0 * np.log1p(2)), 4),
    }
    # zero contributions are left out; only the n-gram total follows
    assert [d["feature"] for d in out] == ["len.chars_log", "hashed n-grams (total)"]
    assert out[-1]["contribution"] == 0.0


def test_scored_is_a_slotted_record_changed_by_copies() -> None:
    # Read-only by convention (a frozen dataclass cost every decision ~1 µs to build): no
    # attribute beyond its fields, and the pipeline changes it only through `replace`.
    sc = _constant_router([0.5, 0.5]).score(PROMPTS[0])
    assert isinstance(sc, Scored) and not hasattr(sc, "__dict__")
    with pytest.raises(AttributeError):
        sc.extra = "x"  # type: ignore[attr-defined]
    scaled = dataclasses.replace(sc, score=sc.score * 0.5)
    assert scaled is not sc and np.array_equal(sc.score, [0.5, 0.5])


def test_mask_for_an_empty_list_is_an_error_not_an_empty_mask() -> None:
    r = _constant_router([0.3, 0.9, 0.6])
    with pytest.raises(ValueError, match="candidates: must name at least one model"):
        r.mask_for([])


def test_a_knob_at_floats_limit_picks_the_cheapest_model(tiny_router) -> None:
    from features.text import normalize

    scored = tiny_router.score(normalize(prompt="Explain recursion."))
    order = tiny_router.rank(scored, 1e308)
    assert order[0] == int(np.argmin(scored.cost_usd))
