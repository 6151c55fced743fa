"""Off-policy evaluation: Γ matrices by hand, unbiasedness on a synthetic bandit, log reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import normalize
from models.errors import DataError
from training.offpolicy import (
    LoggedDecision,
    compare_offpolicy,
    evaluate_offpolicy,
    has_propensities,
    pseudo_outcomes,
    read_decisions,
    router_picks,
)
from training.records import Outcome, Record

A, B, C = "gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-v1"


class StubRouter:
    """Scores given per prompt text: just enough of `Router` for the policy functions."""

    def __init__(self, models: tuple[str, ...], scores: dict[str, list[float]], knob: float = 0.0):
        self.models = models
        self.index = {m: i for i, m in enumerate(models)}
        self.scores = scores
        self.cost_ref = 1.0
        self.default_knob = knob
        self.version = "stub"
        self.heads: dict[str, object] = {}

    def score_batch(self, prompts, *, task_types=None, strategy=None, masks=None, X=None):
        score = np.array([self.scores[p.text] for p in prompts], dtype=np.float64)
        return score, np.tile(np.arange(1, len(self.models) + 1) * 1e-3, (len(prompts), 1))


def single(text: str, model: str, quality: float, p: float, cost: float = 0.01) -> LoggedDecision:
    rec = Record(normalize(prompt=text), {model: Outcome(quality=quality, cost_usd=cost)})
    return LoggedDecision(rec, model, p)


def test_pseudo_outcomes_by_hand(catalog):
    decisions = [single("x1", A, 1.0, 0.5), single("x2", B, 0.0, 0.25), single("x3", A, 0.0, 0.5)]
    po = pseudo_outcomes(decisions, (A, B), catalog, reward=None)
    # No reward router: r̂ is each model's mean logged quality (A: 0.5, B: 0.0).
    assert po.ips_quality.tolist() == [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert po.dr_quality.tolist() == [[0.5 + 2 * 0.5, 0.0], [0.5, 0.0], [0.5 - 2 * 0.5, 0.0]]
    assert po.ips_cost[0].tolist() == [0.02, 0.0]
    assert po.logged.tolist() == [0, 1, 0]
    assert po.direct.sum() == 0


def test_multi_outcome_rows_are_direct(catalog):
    rec = Record(
        normalize(prompt="y"),
        {A: Outcome(quality=1.0, cost_usd=0.03), B: Outcome(quality=0.0, cost_usd=0.001)},
    )
    po = pseudo_outcomes([LoggedDecision(rec)], (A, B, C), catalog, reward=None)
    assert po.dr_quality[0, :2].tolist() == [1.0, 0.0]
    assert po.dr_cost[0, :2].tolist() == [0.03, 0.001]
    assert po.direct[0].tolist() == [True, True, False]
    assert po.model_only == 1


def _bandit(n: int, seed: int) -> tuple[list[LoggedDecision], dict[str, list[float]], float]:
    """Uniform logging over three models with known qualities; the target policy's truth."""
    rng = np.random.default_rng(seed)
    models = (A, B, C)
    decisions, scores, truth = [], {}, 0.0
    for i in range(n):
        text = f"prompt {i}"
        p_right = rng.uniform(0.1, 0.9, size=3)
        scores[text] = list(p_right + rng.normal(0, 0.2, size=3))  # a noisy target policy
        target = int(np.argmax(scores[text]))
        truth += p_right[target]
        j = int(rng.integers(3))
        q = float(rng.random() < p_right[j])
        decisions.append(single(text, models[j], q, 1 / 3))
    return decisions, scores, truth / n


def test_estimates_are_unbiased_and_their_intervals_cover_95_percent(catalog):
    """200 independent logs of 300 uniformly explored decisions: the intervals cover the
    truth about 95% of the time, and the estimates average to it."""
    covered = {"ips": 0, "dr": 0}
    errors = {"ips": [], "dr": []}
    reps = 200
    for seed in range(reps):
        decisions, scores, truth = _bandit(300, seed)
        report = evaluate_offpolicy(StubRouter((A, B, C), scores), decisions, catalog)
        for name in covered:
            est = report["quality"][name]
            covered[name] += est["ci95"][0] <= truth <= est["ci95"][1]
            errors[name].append(est["estimate"] - truth)
    for name in covered:
        assert 0.9 <= covered[name] / reps <= 0.99, (name, covered[name])
        assert abs(np.mean(errors[name])) < 0.01, name
    # DR's correction is smaller than IPS's weights: its errors spread less.
    assert np.std(errors["dr"]) < np.std(errors["ips"])


def test_report_counts(catalog):
    decisions, scores, _truth = _bandit(300, 0)
    report = evaluate_offpolicy(StubRouter((A, B, C), scores), decisions, catalog)
    assert report["n"] == report["single_calls"] == 300
    assert report["multi_outcome_rows"] == 0
    assert report["min_propensity"] == pytest.approx(1 / 3)
    agree = sum(
        d.model == (A, B, C)[int(np.argmax(scores[d.record.prompt.text]))] for d in decisions
    )
    assert report["supporting_decisions"] == agree


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.floats(0, 1)), min_size=2, max_size=30))
def test_on_policy_logs_are_estimated_exactly(catalog, rows):
    """A policy evaluated on its own deterministic logs (propensity 1): IPS = DR = the mean."""
    models = (A, B, C)
    scores = {f"p{i}": [1.0 if j == m else 0.0 for j in range(3)] for i, (m, _q) in enumerate(rows)}
    decisions = [single(f"p{i}", models[m], q, 1.0) for i, (m, q) in enumerate(rows)]
    report = evaluate_offpolicy(StubRouter(models, scores), decisions, catalog, reward=None)
    mean = float(np.mean([q for _m, q in rows]))
    assert report["quality"]["ips"]["estimate"] == pytest.approx(mean)
    assert report["quality"]["dr"]["estimate"] == pytest.approx(mean)
    assert report["supporting_decisions"] == len(rows)


def test_compare_same_router_has_zero_difference(catalog):
    decisions, scores, _truth = _bandit(200, 4)
    router = StubRouter((A, B, C), scores)
    out = compare_offpolicy(router, router, decisions, catalog, reward=None)
    for key in ("utility", "quality", "cost_usd"):
        assert out["difference"][key]["estimate"] == 0.0
        assert out["difference"][key]["ci95"] == [0.0, 0.0]


def test_router_picks_respect_the_knob(catalog):
    scores = {"a": [0.85, 0.9, 0.1]}
    po = pseudo_outcomes([single("a", A, 1.0, 1.0)], (A, B, C), catalog, reward=None)
    router = StubRouter((A, B, C), scores)
    assert router_picks(router, po, 0.0).tolist() == [1]
    # Estimated costs are 1e-3, 2e-3, 3e-3 (cost_ref 1): at λ = 100, 0.85 − 0.1 beats 0.9 − 0.2.
    assert router_picks(router, po, 100.0).tolist() == [0]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_read_decisions_sets_aside_rows_it_cannot_use(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [
            {"id": "1", "prompt": "a", "model": A, "success": True, "propensity": 0.98},
            {"id": "2", "prompt": "b", "model": A, "success": None, "propensity": 0.98},
            {"id": "3", "prompt": "c", "model": A, "success": False},
            {"prompt": "d", "label": A},
            {"prompt": "e", "outcomes": {A: {"quality": 1}, B: {"quality": 0}}},
            "",
        ],
    )
    decisions, skipped = read_decisions([path])
    assert [(d.model, d.propensity) for d in decisions] == [(A, 0.98), (None, None)]
    assert decisions[0].record.outcomes[A].quality == 1.0
    assert skipped == {"no_feedback": 1, "no_propensity": 1, "label_only": 1, "no_decision": 0}
    assert has_propensities([path])
    assert not has_propensities([_write(tmp_path / "l.jsonl", [{"prompt": "x", "label": A}])])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        pytest.param(
            {"prompt": "a", "model": A, "success": True, "propensity": 0},
            "propensity: must be in (0, 1], got 0",
            id="zero",
        ),
        pytest.param(
            {"prompt": "a", "model": A, "success": True, "propensity": 1.5},
            "propensity: must be in (0, 1], got 1.5",
            id="above-one",
        ),
        pytest.param(
            {"prompt": "a", "model": A, "success": True, "propensity": "0.5"},
            "propensity: must be a number in (0, 1]",
            id="string",
        ),
        pytest.param(
            {"prompt": "a", "model": A, "quality": 2, "propensity": 0.5},
            "quality: must be between 0 and 1",
            id="bad-quality",
        ),
        pytest.param("{not json", "not valid JSON", id="json"),
    ],
)
def test_read_decisions_names_file_and_line(tmp_path, row, message):
    good = {"prompt": "ok", "model": A, "success": True, "propensity": 0.5}
    path = _write(tmp_path / "d.jsonl", [good, row])
    with pytest.raises(DataError) as info:
        read_decisions([path])
    assert str(info.value).startswith(f"{path}:2")
    assert message in str(info.value)
