"""Issue 14's pieces: domain prior, gain block, knob mixture, policy choice, conversation context."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.extractor import FEATURE_NAMES, PromptFeaturizer
from features.signals import DENSE_FEATURE_NAMES
from features.text import normalize
from models.router import DomainPrior, KnobMix, LinearHead, Router, mixture_draw
from training.domains import (
    choose_strength,
    domain_labels,
    domain_means,
    group_finer_domains,
    shrink,
)
from training.gain import choose_gain, references
from training.labels import Targets
from training.policy import choose_policy, retarget

N_HASH = 256
MODELS = ("cheap", "mid", "strong")
MATHS_CHAT = [
    {"role": "system", "content": "You are a maths tutor. Solve every equation step by step."},
    {"role": "user", "content": "Solve 3x + 4 = 10."},
    {"role": "assistant", "content": "3x = 6, so x = 2."},
    {"role": "user", "content": "What is the capital of France?"},
]


def _featurizer() -> PromptFeaturizer:
    return PromptFeaturizer(n_hash_features=N_HASH).fit([])


def _prior(strength: float | np.ndarray = 0.5) -> DomainPrior:
    return DomainPrior(
        names=["maths", "trivia"],
        means=np.array([[0.2, 0.5, 0.9], [0.7, 0.8, 0.0]]),
        measured=np.array([[True, True, True], [True, True, False]]),
        strength=np.broadcast_to(np.asarray(strength, dtype=float), (2, 3)),
    )


def _head(seed: int, *, gain: bool = False, domain: bool = False, mix: KnobMix | None = None):
    f = _featurizer()
    rng = np.random.default_rng(seed)
    extras: dict = {}
    cols = 3
    if gain:  # cheap and mid against strong
        extras.update(gain_models=np.array([0, 1]), gain_ref=np.array([2, 2]))
        cols += 2
    if domain:
        extras["domain"] = _prior()
        cols += 2
    coef = rng.normal(size=(cols, f.n_dense_ + N_HASH))
    return f, LinearHead.from_coef(
        "sigmoid", coef, rng.normal(size=cols), f.n_dense_, n_scores=3, knob_mix=mix, **extras
    )


def _router(seed: int = 0, **head_kw) -> Router:
    f, head = _head(seed, **head_kw)
    return Router(
        models=MODELS,
        featurizer=f,
        heads={"quality": head},
        input_price=np.array([0.1, 1.0, 10.0]) / 1e6,
        output_price=np.array([0.2, 2.0, 30.0]) / 1e6,
        output_tokens=np.array([100.0, 200.0, 300.0]),
        cost_ref=0.01,
    )


# --------------------------------------------------------------------------- domain prior
def test_domain_prior_is_a_convex_mix_toward_the_measured_means() -> None:
    prior = _prior(0.5)
    s = np.array([0.4, 0.4, 0.4])
    # all mass on "maths": halfway to (0.2, 0.5, 0.9)
    np.testing.assert_allclose(prior.apply(s, np.array([1.0, 0.0])), [0.3, 0.45, 0.65])
    # all mass on "trivia": "strong" was not measured there, so it keeps its own score
    np.testing.assert_allclose(prior.apply(s, np.array([0.0, 1.0])), [0.55, 0.6, 0.4])
    # strength 1 and a certain domain: exactly the domain means
    np.testing.assert_allclose(_prior(1.0).apply(s, np.array([1.0, 0.0])), [0.2, 0.5, 0.9])
    # strength 0: untouched
    np.testing.assert_allclose(_prior(0.0).apply(s, np.array([0.3, 0.7])), s)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    st.floats(0.0, 1.0),
    st.floats(0.0, 1.0),
)
def test_shrunk_scores_stay_between_the_prediction_and_the_means(s, p0, a) -> None:
    prior = _prior(a)
    score = np.array(s)
    p = np.array([p0, 1.0 - p0])
    out = prior.apply(score, p)
    lo = np.minimum(score, np.minimum(prior.means[0], prior.means[1]))
    hi = np.maximum(score, np.maximum(prior.means[0], prior.means[1]))
    assert np.all(out >= lo - 1e-12) and np.all(out <= hi + 1e-12)
    # the training-time twin computes the same thing
    np.testing.assert_allclose(shrink(score, p, prior.means, prior.measured, prior.strength), out)


def test_domain_labels_keep_only_tasks_with_enough_prompts() -> None:
    tasks = ["a"] * 20 + ["b"] * 19 + [None] + ["c"] * 25
    names, idx, group, group_names = domain_labels(tasks)
    assert names == ["a", "c"] and group_names == ["a", "c"] and group.tolist() == [0, 1]
    assert idx[:20].tolist() == [0] * 20 and set(idx[20:40].tolist()) == {-1}
    assert idx[40:].tolist() == [1] * 25


def test_finer_domains_split_their_task_where_they_have_enough_prompts() -> None:
    # mmlu: 25 anatomy prompts (a domain), 5 law prompts (too few: they fall back to mmlu,
    # which has 30 prompts in all); gsm8k has no finer domain; "x" alone names 20 prompts.
    tasks = ["mmlu"] * 30 + ["gsm8k"] * 20 + [None] * 20
    finer = ["anatomy"] * 25 + ["law"] * 5 + [None] * 20 + ["x"] * 20
    d = domain_labels(tasks, finer)
    assert d.names == ["gsm8k", "mmlu", "mmlu/anatomy", "x"]
    assert d.index.tolist() == [2] * 25 + [1] * 5 + [0] * 20 + [3] * 20
    assert d.tasks == ["gsm8k", "mmlu", "x"]
    assert [d.tasks[g] for g in d.group] == ["gsm8k", "mmlu", "mmlu", "x"]


def _subject_records(
    means: dict[str, tuple[float, float]], n: int = 30
) -> tuple[list, list, np.ndarray, np.ndarray]:
    """n records per subject of task "mmlu", two models with these mean qualities (exactly:
    the first n·q records of each column are right), plus 10 of a task without subjects."""
    tasks, subjects, rows = [], [], []
    for subject, (qa, qb) in means.items():
        for i in range(n):
            tasks.append("mmlu")
            subjects.append(subject)
            rows.append([float(i < qa * n), float(i < qb * n)])
    tasks += ["gsm8k"] * 10
    subjects += [None] * 10
    rows += [[1.0, 0.0]] * 10
    q = np.array(rows)
    return tasks, subjects, q, np.ones_like(q, dtype=bool)


def test_finer_domains_are_grouped_by_which_models_do_well() -> None:
    # b beats a on law and ethics, a beats b on algebra and physics; two groups split them so
    tasks, subjects, q, labelled = _subject_records(
        {"law": (0.2, 0.9), "ethics": (0.3, 0.8), "algebra": (0.9, 0.4), "physics": (0.8, 0.3)}
    )
    finer, members = group_finer_domains(tasks, subjects, q, labelled, max_groups=2)
    assert sorted(members.values()) == [["algebra", "physics"], ["ethics", "law"]]
    # named by the largest member (ties: the last name), with how many others it holds
    assert set(members) == {"mmlu/physics+1", "mmlu/law+1"}
    assert finer[0] == "law+1" and finer[-11] == "physics+1" and finer[-1] is None
    d = domain_labels(tasks, finer)  # gsm8k's 10 prompts are too few for a domain
    assert d.names == ["mmlu/law+1", "mmlu/physics+1"] and d.tasks == ["mmlu"]


def test_finer_domains_stay_apart_when_the_groups_allow_it_and_vanish_at_zero() -> None:
    tasks, subjects, q, labelled = _subject_records({"law": (0.2, 0.9), "ethics": (0.3, 0.8)})
    finer, members = group_finer_domains(tasks, subjects, q, labelled, max_groups=8)
    assert finer == subjects and members == {"mmlu/ethics": ["ethics"], "mmlu/law": ["law"]}
    finer, members = group_finer_domains(tasks, subjects, q, labelled, max_groups=0)
    assert finer == [None] * len(tasks) and members == {}


def test_finer_domains_with_equal_means_make_fewer_groups_without_a_warning() -> None:
    # four subjects, two distinct mean vectors: k-means is asked for two groups, not three
    tasks, subjects, q, labelled = _subject_records(
        {"law": (0.5, 0.5), "ethics": (0.5, 0.5), "algebra": (0.9, 0.1), "physics": (0.9, 0.1)}
    )
    finer, members = group_finer_domains(tasks, subjects, q, labelled, max_groups=3)
    assert sorted(members.values()) == [["algebra", "physics"], ["ethics", "law"]]


def test_domain_means_need_enough_measured_records() -> None:
    q = np.array([[1.0, np.nan]] * 4 + [[0.0, 1.0]] * 6)
    labelled = ~np.isnan(q)
    dom = np.array([0] * 10)
    means, measured = domain_means(np.nan_to_num(q), labelled, dom, 1)
    assert measured.tolist() == [[True, True]]
    np.testing.assert_allclose(means, [[0.4, 1.0]])
    means, measured = domain_means(np.nan_to_num(q[:8]), labelled[:8], dom[:8], 1)
    assert measured.tolist() == [[True, False]] and means[0, 1] == 0.0


def _two_domains(n: int, seed: int) -> tuple:
    """n records, half in domain 0 (model 1 always right) and half in domain 1 (model 0 right),
    with noise predictions, sure domain probabilities, two folds and the true means."""
    dom = np.repeat([0, 1], n // 2)
    quality = np.where(dom[:, None] == 0, [0.0, 1.0], [1.0, 0.0])
    score = np.random.default_rng(seed).uniform(size=(n, 2))
    means = np.array([[0.0, 1.0], [1.0, 0.0]])
    fold_means = [(means, np.ones((2, 2), dtype=bool))] * 2
    return dom, quality, score, np.eye(2)[dom], np.arange(n) % 2, fold_means


def test_choose_strength_picks_the_strength_that_routes_best_per_domain() -> None:
    # Two domains, one model set of 2 models. Predictions are noise in [0, 1]; the domain means
    # say model 1 wins in domain 0 and model 0 in domain 1. From strength 0.5 on the means
    # always decide; ties go to the weaker strength.
    n = 200
    dom, quality, score, p, fold, fold_means = _two_domains(n, seed=0)
    groups = [np.arange(n)]

    def subset_aiq(s: np.ndarray, rows: np.ndarray) -> float:
        return float(np.mean(quality[rows, np.argmax(s[rows], axis=1)]))

    grid = (0.0, 0.4, 0.5, 1.0)
    strength, table = choose_strength(score, p, fold_means, fold, dom, groups, subset_aiq, grid)
    assert strength.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert table[(0, 0)][0.5] == table[(0, 0)][1.0] == 1.0
    assert table[(0, 0)][0.0] < table[(0, 0)][0.4] < 1.0


def test_choose_strength_chooses_once_per_task_for_all_its_domains() -> None:
    # Domains 0 and 1 are two subjects of one task: their records are scored as one cell, and
    # the strength it picks goes to both.
    n = 60
    dom, quality, score, p, fold, fold_means = _two_domains(n, seed=1)
    seen: list[int] = []

    def subset_aiq(s: np.ndarray, rows: np.ndarray) -> float:
        seen.append(rows.size)
        return float(np.mean(quality[rows, np.argmax(s[rows], axis=1)]))

    strength, table = choose_strength(
        score,
        p,
        fold_means,
        fold,
        dom,
        [np.arange(n)],
        subset_aiq,
        (0.0, 0.5, 1.0),
        group=np.array([0, 0]),
    )
    assert set(seen) == {n} and list(table) == [(0, 0)]
    assert strength.tolist() == [[0.5, 0.5], [0.5, 0.5]]


# --------------------------------------------------------------------------- gain block
def test_gain_models_score_as_reference_minus_expected_gain() -> None:
    f, head = _head(1, gain=True)
    dense, idx, vals = f.transform_one(normalize("Solve 3x + 4 = 10 step by step."))
    z = head.logits_one(dense, idx, vals, f.n_dense_)
    s, p = head.scores(z.copy())
    assert p is None
    q = 1 / (1 + np.exp(-z[:3]))
    g = 2 / (1 + np.exp(-z[3:5])) - 1
    np.testing.assert_allclose(s, [q[2] - g[0], q[2] - g[1], q[2]])


def test_references_are_the_strongest_model_of_each_model_set() -> None:
    q = np.array([[0.2, 0.9, np.nan, np.nan]] * 30 + [[np.nan, 0.1, 0.8, 0.3]] * 25)
    t = Targets(("a", "b", "c", "d"), q, np.nan_to_num(q), np.zeros(55, int), q * np.nan)
    # b is the strongest of {a, b}; c of {b, c, d} — b keeps no reference (strongest somewhere)
    assert references(t).tolist() == [1, -1, -1, 2]


def test_choose_gain_keeps_a_gain_head_only_where_it_predicts_the_difference_better() -> None:
    rng = np.random.default_rng(2)
    n = 300
    q = np.column_stack([rng.integers(0, 2, n), rng.integers(0, 2, n)]).astype(float)
    t = Targets(("weak", "strong"), q, q, np.zeros(n, int), q * np.nan)
    refs = np.array([1, -1])
    diff = q[:, 1] - q[:, 0]
    noisy_q = np.clip(q + rng.normal(0, 0.4, size=q.shape), 0, 1)
    good_gain = np.column_stack([diff + rng.normal(0, 0.05, n), np.full(n, np.nan)])
    keep, report = choose_gain(noisy_q, good_gain, t, refs)
    assert keep.tolist() == [True, False] and report["weak"]["kept"] is True
    bad_gain = np.column_stack([rng.uniform(-1, 1, n), np.full(n, np.nan)])
    exact_q = q.copy()
    keep, _ = choose_gain(exact_q, bad_gain, t, refs)
    assert keep.tolist() == [False, False]


# --------------------------------------------------------------------------- payload
def test_router_payload_round_trip_keeps_every_learned_piece() -> None:
    mix = KnobMix(0.1, 0.3, 0.25)
    r = _router(2, gain=True, domain=True, mix=mix)
    data = r.to_payload()

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list | tuple):
            return all(plain(v) for v in x)
        return isinstance(x, np.ndarray | str | int | float | bool) or x is None

    assert plain(data)
    again = Router.from_payload(data, version="v")
    assert again.knob_mix == mix and again.default_knob == 0.1
    for p in (normalize("hi"), normalize(messages=MATHS_CHAT)):
        a, b = r.score(p), again.score(p)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(a.domain_p, b.domain_p)


def test_head_payload_round_trip_with_gain_and_domain() -> None:
    _f, head = _head(3, gain=True, domain=True, mix=KnobMix(0.0, 1.0, 0.5))
    again = LinearHead.from_payload(head.to_payload())
    assert again.gain_models.tolist() == [0, 1] and again.gain_ref.tolist() == [2, 2]
    assert again.domain is not None and again.domain.names == ["maths", "trivia"]
    np.testing.assert_array_equal(again.domain.strength, head.domain.strength)
    assert again.knob_mix == KnobMix(0.0, 1.0, 0.5)


def test_a_head_whose_columns_do_not_add_up_is_refused() -> None:
    f = _featurizer()
    with pytest.raises(ValueError, match="has 1 extra columns; expected 2 gains \\+ 0 domains"):
        LinearHead(
            "sigmoid",
            np.zeros((f.n_dense_, 3)),
            np.zeros((N_HASH, 3), np.float32),
            np.zeros(3),
            extra=(np.zeros((f.n_dense_, 1)), np.zeros((N_HASH, 1), np.float32), np.zeros(1)),
            gain_models=np.array([0, 1]),
            gain_ref=np.array([2, 2]),
        )


def test_extra_columns_keep_the_score_arrays_k_wide() -> None:
    _f, head = _head(9, gain=True, domain=True)
    assert head.dense_w.shape[1] == head.hashed_w.shape[1] == head.bias.shape[0] == 3
    assert head.extra is not None and head.extra[2].shape == (4,)
    data = head.to_payload()
    assert data["hashed_w"].shape[1] == 3 and data["extra"]["hashed_w"].shape[1] == 4
    assert data["hashed_w"].flags.c_contiguous


def test_batch_scores_equal_one_by_one_with_gain_and_domain() -> None:
    r = _router(4, gain=True, domain=True)
    prompts = [normalize("hi"), normalize("Solve 3x = 6"), normalize(messages=MATHS_CHAT)]
    batch, _cost = r.score_batch(prompts)
    for i, p in enumerate(prompts):
        np.testing.assert_allclose(batch[i], r.score(p).score, rtol=1e-9, atol=1e-12)


def test_explanation_names_the_domain_and_its_weight() -> None:
    r = _router(5, domain=True)
    scored = r.score(normalize("Solve 3x + 4 = 10 step by step."))
    dom = r.domain_of(scored, 1)
    assert dom is not None and dom["domain"] in ("maths", "trivia")
    d = ["maths", "trivia"].index(dom["domain"])
    assert dom["probability"] == round(float(scored.domain_p[d]), 4)
    assert dom["weight"] == round(float(scored.domain_p @ (0.5 * np.array([1.0, 1.0]))), 4)
    entry = [e for e in r.explain(scored, 1, 0) if e["feature"].startswith("domain:")]
    assert entry == [
        {
            "feature": f"domain:{dom['domain']}",
            "value": dom["weight"],
            "contribution": entry[0]["contribution"],
        }
    ]
    # the contribution is how much more the prior moved model 1's score than model 0's
    head = r.heads["quality"]
    own, _p = head.scores(head.logits_one(*scored.features, r.n_dense), shrink=False)
    pull = scored.score - own
    assert entry[0]["contribution"] == pytest.approx(float(pull[1] - pull[0]), abs=1e-4)
    assert _router(5).domain_of(_router(5).score(normalize("x"))) is None


# --------------------------------------------------------------------------- knob mixture
def test_mixture_draw_is_fixed_by_the_last_user_turn() -> None:
    a = mixture_draw(normalize("What is the capital of France?"))
    assert 0.0 <= a < 1.0
    assert a == mixture_draw(normalize("What is the capital of France?"))
    assert a == mixture_draw(normalize(messages=MATHS_CHAT))
    draws = [mixture_draw(normalize(f"prompt number {i}")) for i in range(2000)]
    assert abs(np.mean(np.array(draws) < 0.3) - 0.3) < 0.04


def test_the_default_policy_uses_the_mix_and_an_explicit_knob_does_not() -> None:
    r = _router(6, mix=KnobMix(0.0, 1e6, 0.5))
    lows = highs = 0
    for i in range(200):
        p = normalize(f"question {i}: what is {i} + {i}?")
        scored = r.score(p)
        top = int(r.rank(scored)[0])
        assert top == int(r.rank(scored, r.default_knob)[0])  # the default knob names the policy
        if scored.draw < 0.5:
            highs += 1
            assert top == 0  # λ = 1e6: the cheapest model
        else:
            lows += 1
            assert top == int(np.argmax(scored.score))
        assert int(r.rank(scored, 1e6)[0]) == 0
    assert lows > 50 and highs > 50


def _curve(shares: list[float], key: str) -> dict:
    other = "strong_share" if key == "budget_share" else "budget_share"
    return {
        "best_single_quality": 0.9,
        "curve": [
            {"knob": float(i), "quality": 0.9 - 0.01 * i, "cost": s, key: s, other: s}
            for i, s in enumerate(shares)
        ],
        "fold_curves": [],
    }


@pytest.mark.parametrize("key", ["budget_share", "strong_share"])
def test_a_target_between_two_knobs_is_met_by_their_mix(key: str) -> None:
    routing = _curve([1.0, 0.6, 0.2, 0.1], key)
    kw = {"target_budget" if key == "budget_share" else "target_strong_share": 0.3}
    policy = choose_policy(routing, **kw)
    mix = policy["mix"]
    assert policy["met"] and mix is not None and (mix.low, mix.high) == (1.0, 2.0)
    assert mix.p_high == pytest.approx(0.75)
    assert policy["expected"] == pytest.approx(0.3)


def test_a_target_on_a_knob_point_or_out_of_reach_needs_no_mix() -> None:
    on = choose_policy(_curve([1.0, 0.6, 0.3], "budget_share"), target_budget=0.3)
    assert on["mix"] is None and on["knob"] == 2.0 and on["met"]
    cheap = choose_policy(_curve([0.2, 0.1], "budget_share"), target_budget=0.3)
    assert cheap["mix"] is None and cheap["knob"] == 0.0
    missed = choose_policy(_curve([1.0, 0.8], "budget_share"), target_budget=0.3)
    assert missed["met"] is False and missed["knob"] == 1.0


def test_on_a_cliff_the_mix_uses_the_nearest_stable_knobs() -> None:
    """Points on a steep stretch of the curve are not trusted: their out-of-fold share moves a
    lot on the final model; the mix spans the flat stretches on either side."""
    shares = [0.95, 0.94, 0.93, 0.6, 0.25, 0.05, 0.01, 0.0, 0.0]
    policy = choose_policy(_curve(shares, "strong_share"), target_strong_share=0.2)
    mix = policy["mix"]
    assert (mix.low, mix.high) == (1.0, 7.0)
    assert mix.p_high == pytest.approx((0.94 - 0.2) / 0.94)
    assert policy["expected"] == pytest.approx(0.2)
    # a smooth curve keeps the target's immediate neighbours
    smooth = [1.0 - 0.02 * i for i in range(40)]
    mix = choose_policy(_curve(smooth, "budget_share"), target_budget=0.5)["mix"]
    assert mix is None or (mix.low, mix.high) == (24.0, 25.0)


def test_match_best_keeps_a_margin_of_one_standard_error_across_folds() -> None:
    routing = {
        "best_single_quality": 0.80,
        "curve": [
            {"knob": 0.0, "quality": 0.83},
            {"knob": 1.0, "quality": 0.81},
            {"knob": 2.0, "quality": 0.79},
        ],
        # per fold, knob 1 is +0.03, +0.01, -0.01 over the best model: mean +0.01, se 0.0115
        "fold_curves": [
            {"quality": [0.83, 0.83, 0.80], "best_single": 0.80},
            {"quality": [0.83, 0.81, 0.79], "best_single": 0.80},
            {"quality": [0.83, 0.79, 0.78], "best_single": 0.80},
        ],
    }
    policy = choose_policy(routing)
    assert policy["knob"] == 0.0 and policy["margin"] == 0.0  # knob 0: +0.03 in every fold
    routing["fold_curves"] = []  # without folds: the plain rule, knob 1 matches
    assert choose_policy(routing)["knob"] == 1.0


def test_retarget_sets_the_routers_policy() -> None:
    r = _router(7)
    retarget(r, _curve([1.0, 0.6, 0.2], "budget_share"), target_budget=0.4)
    assert r.knob_mix is not None and (r.knob_mix.low, r.knob_mix.high) == (1.0, 2.0)
    assert r.knob_mix.p_high == pytest.approx(0.5) and r.default_knob == 1.0


# --------------------------------------------------------------------------- conversations
def test_context_moves_the_scores_exactly_by_the_context_weights() -> None:
    r = _router(8)
    head = r.heads["quality"]
    conv = normalize(messages=MATHS_CHAT)
    alone = normalize("What is the capital of France?")
    dense_c, idx_c, vals_c = r.featurizer.transform_one(conv)
    dense_a, _, _ = r.featurizer.transform_one(alone)
    z_conv = head.logits_one(dense_c, idx_c, vals_c, r.n_dense)
    z_alone = head.logits_one(*r.featurizer.transform_one(alone), r.n_dense)
    n_main = len(DENSE_FEATURE_NAMES)
    expected = dense_c[n_main:] @ head.dense_w[n_main:]
    np.testing.assert_allclose(z_conv - z_alone, expected, rtol=1e-9, atol=1e-12)
    assert np.all(dense_a[n_main:] == 0.0)
    # with no learned context weights (what single-turn training data gives), no change at all
    head.dense_w[n_main:] = 0.0
    np.testing.assert_array_equal(r.score(conv).score, r.score(alone).score)


def test_a_router_trained_on_single_prompts_ignores_context(tiny_router) -> None:
    n_main = len(DENSE_FEATURE_NAMES)
    for head in tiny_router.heads.values():
        assert np.all(head.dense_w[n_main:] == 0.0)
    conv = tiny_router.score(normalize(messages=MATHS_CHAT))
    alone = tiny_router.score(normalize("What is the capital of France?"))
    np.testing.assert_allclose(conv.score, alone.score, rtol=1e-12)
    assert FEATURE_NAMES[n_main:] and all(n.startswith("ctx.") for n in FEATURE_NAMES[n_main:])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda d: d["heads"]["quality"]["domain"].update(means=np.zeros((2, 2))),
            "domain means and measured must be (D, K) arrays of one shape",
            id="domain-means-shape",
        ),
        pytest.param(
            lambda d: d["heads"]["quality"].update(gain_ref=np.array([2, 7])),
            "gain models and references must be model indices below 3",
            id="gain-ref-range",
        ),
        pytest.param(
            lambda d: d["heads"]["quality"].update(knob_mix=[0.5, 0.1, 0.3]),
            "need 0 <= low <= high and 0 <= p <= 1",
            id="knob-mix-order",
        ),
        pytest.param(
            lambda d: d["heads"]["quality"]["extra"].update(bias=np.zeros(3)),
            "head has 3 extra columns; expected 2 gains + 2 domains",
            id="extra-columns",
        ),
    ],
)
def test_inconsistent_payloads_are_refused(edit, message: str) -> None:
    data = _router(10, gain=True, domain=True, mix=KnobMix(0.0, 1.0, 0.5)).to_payload()
    edit(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        Router.from_payload(data)
