"""Offline evaluation: the stable JSON interface, on real data and on a case checked by hand."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from features.extractor import PromptFeaturizer
from features.text import normalize
from models.catalog import Catalog
from models.router import LinearHead, Router
from training.curves import KNOB_GRID
from training.evaluate import cross_val_evaluate, evaluate
from training.records import Outcome, Record
from training.trainer import TrainOptions

SUMMARY_KEYS = {
    "n",
    "models",
    "single_models",
    "oracle",
    "heuristic",
    "router",
    "zero_router",
    "two_model",
}
ROUTER_KEYS = {
    "curve",
    "aiq",
    "max_quality",
    "cost_to_match_best",
    "cost_to_95pct_best",
    "accuracy",
    "macro_f1",
}


def _is_num(x: Any) -> bool:
    return isinstance(x, float | int) and not isinstance(x, bool) and math.isfinite(x)


def _num_or_none(x: Any) -> bool:
    return x is None or _is_num(x)


def _check_summary(s: dict[str, Any], models_expected: int | None = None) -> None:
    """Every field of the stable interface, with the documented types."""
    assert SUMMARY_KEYS <= set(s)
    assert isinstance(s["n"], int) and s["n"] > 0
    assert isinstance(s["models"], list) and all(isinstance(m, str) for m in s["models"])
    if models_expected is not None:
        assert len(s["models"]) == models_expected
    assert set(s["single_models"]) == set(s["models"])
    for v in [*s["single_models"].values(), s["oracle"], s["heuristic"]]:
        assert set(v) == {"quality", "cost"}
        assert _is_num(v["quality"]) and 0 <= v["quality"] <= 1
        assert _is_num(v["cost"]) and v["cost"] >= 0
    r = s["router"]
    assert ROUTER_KEYS <= set(r)
    assert isinstance(r["curve"], list) and r["curve"]
    for p in r["curve"]:
        assert set(p) == {"knob", "quality", "cost", "calls"}
        assert _is_num(p["knob"]) and _is_num(p["quality"]) and _is_num(p["cost"])
        assert set(p["calls"]) == set(s["models"])
        assert all(_is_num(c) and 0 <= c <= 1 for c in p["calls"].values())
        assert sum(p["calls"].values()) == pytest.approx(1.0, abs=1e-3)  # rounded to 4 places
    for key in ("aiq", "cost_to_match_best", "cost_to_95pct_best", "accuracy", "macro_f1"):
        assert _num_or_none(r[key]), key
    assert _is_num(r["max_quality"])
    assert set(s["zero_router"]) == {"aiq"} and _num_or_none(s["zero_router"]["aiq"])
    tm = s["two_model"]
    if tm is not None:
        assert set(tm) == {"strong", "weak", "apgr", "cpt50", "cpt80"}
        assert {tm["strong"], tm["weak"]} == set(s["models"])
        assert all(_num_or_none(tm[k]) for k in ("apgr", "cpt50", "cpt80"))


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def report(tiny_router: Router, sample_records: list, catalog: Catalog) -> dict[str, Any]:
    return evaluate(tiny_router, sample_records, catalog)


@pytest.fixture(scope="module")
def routellm_report(tiny_router: Router, sample_records: list, catalog: Catalog) -> dict:
    records = [r for r in sample_records if r.id.startswith("routellm/")]
    return evaluate(tiny_router, records, catalog)


def test_every_field_of_the_interface(
    report: dict[str, Any], tiny_router: Router, sample_records: list
) -> None:
    _check_summary(report, models_expected=12)  # RouterBench's 11 and RouteLLM's weak model
    assert report["n"] == len(sample_records) and report["n_skipped"] == 0
    assert report["strategy"] == tiny_router.default_strategy
    assert [p["knob"] for p in report["router"]["curve"]] == list(KNOB_GRID)
    assert isinstance(report["by_task"], dict) and report["by_task"]
    for task, s in report["by_task"].items():
        assert isinstance(task, str) and task
        _check_summary(s)
        assert s["n"] >= 20
    json.dumps(report, allow_nan=False)


def test_by_task_groups_partition_the_records(report: dict, sample_records: list) -> None:
    counts: dict[str, int] = {}
    for r in sample_records:
        counts[r.task] = counts.get(r.task, 0) + 1
    assert {t: s["n"] for t, s in report["by_task"].items()} == {
        t: n for t, n in counts.items() if n >= 20
    }


def test_two_model_only_for_two_model_data(report: dict, routellm_report: dict) -> None:
    assert report["two_model"] is None
    _check_summary(routellm_report, models_expected=2)
    tm = routellm_report["two_model"]
    assert tm["strong"] == "gpt-4-1106-preview"
    assert tm["weak"] == "mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert 0 <= tm["cpt50"] <= tm["cpt80"] <= 1
    assert -1 <= tm["apgr"] <= 2
    json.dumps(routellm_report, allow_nan=False)


def test_oracle_bounds_everything(report: dict) -> None:
    for s in [report, *report["by_task"].values()]:
        oracle = s["oracle"]["quality"]
        assert all(oracle >= v["quality"] for v in s["single_models"].values())
        assert oracle >= s["heuristic"]["quality"]
        assert oracle >= s["router"]["max_quality"]
        assert all(oracle >= p["quality"] for p in s["router"]["curve"])


def test_curve_endpoints(report: dict) -> None:
    curve = report["router"]["curve"]
    cheapest = min(report["single_models"].values(), key=lambda v: v["cost"])
    # the largest knob routes (almost) purely on cost: no dearer than the dearest model
    assert curve[-1]["cost"] <= max(v["cost"] for v in report["single_models"].values())
    assert curve[-1]["cost"] <= curve[0]["cost"]
    assert curve[-1]["cost"] >= cheapest["cost"] * 0.999


def test_router_beats_the_zero_router_on_the_sample(report: dict) -> None:
    # trained and evaluated on the same records, so this only guards against gross breakage
    assert report["router"]["aiq"] > report["zero_router"]["aiq"]


def test_other_strategy_and_alternatives(tiny_router: Router, sample_records: list, catalog):
    rep = evaluate(tiny_router, sample_records, catalog, strategy="classifier", knobs=(0.0, 1.0))
    assert rep["strategy"] == "classifier"
    assert set(rep["router_alternatives"]) == {"quality"}
    assert [p["knob"] for p in rep["router"]["curve"]] == [0.0, 1.0]
    _check_summary(rep)


def test_no_usable_record(tiny_router: Router, catalog: Catalog) -> None:
    records = [Record(prompt=normalize("q"), outcomes={"claude-v1": Outcome(quality=1.0)})]
    with pytest.raises(ValueError, match="no record has two or more labelled models"):
        evaluate(tiny_router, records, catalog)


def test_cross_val_evaluate(sample_records: list, catalog: Catalog) -> None:
    records = [r for r in sample_records if r.id.startswith("routellm/")]
    opts = TrainOptions(c_grid=(1.0,), cv_folds=2, n_hash_features=2**12, n_jobs=1)
    said: list[str] = []
    rep = cross_val_evaluate(
        records, catalog, opts, folds=2, knobs=(0.0, 1.0), progress=said.append
    )
    _check_summary(rep, models_expected=2)
    assert rep["n"] == len(records) and rep["cv_folds"] == 2
    assert rep["two_model"] is not None
    assert [m.split(":")[0] for m in said] == ["fold 1/2", "fold 2/2"]
    json.dumps(rep, allow_nan=False)


# --------------------------------------------------------------------------- by hand
HAND_CATALOG = Catalog.from_dict(
    {
        "models": [
            {
                "name": "cheap",
                "input_price_per_1m": 0.1,
                "output_price_per_1m": 0.2,
                "latency_ms": 100,
                "context_window": 10000,
            },
            {
                "name": "strong",
                "input_price_per_1m": 10.0,
                "output_price_per_1m": 30.0,
                "latency_ms": 100,
                "context_window": 10000,
            },
        ]
    }
)

# Three prompts of 2, 400 and 60 characters. The heuristic sends only the second (it says
# "Solve") to the strong model.
SHORT = "hi"
LONG = ("Solve for x in the equation x + 3 = 5, then check the result. " * 7)[:400]
MEDIUM = "Tell me a little about the old town and the river of the city"[:60]


def _hand_router() -> Router:
    """Scores known in closed form: strong 0.5 always; cheap sigmoid(3 − log1p(chars)).

    Estimated costs: cheap 1e-4, strong 1e-3, c_ref 9e-4, so the relative cost gap is 1 and
    a prompt flips to cheap once the knob exceeds 0.5 − score_cheap:
    "hi" 0.870 (cheap even at 0), MEDIUM 0.248 (flips at 0.252), LONG 0.048 (flips at 0.452).
    """
    f = PromptFeaturizer(n_hash_features=256).fit([])
    names = list(f.get_feature_names_out()[: f.n_dense_])
    dense_w = np.zeros((f.n_dense_, 2))
    dense_w[names.index("len.chars_log"), 0] = -1.0
    head = LinearHead("sigmoid", dense_w, np.zeros((256, 2), np.float32), np.array([3.0, 0.0]))
    return Router(
        models=("cheap", "strong"),
        featurizer=f,
        heads={"quality": head},
        input_price=np.zeros(2),
        output_price=np.array([1e-6, 1e-5]),
        output_tokens=np.array([100.0, 100.0]),
        cost_ref=9e-4,
    )


def _hand_record(text: str, q_cheap: float | None, q_strong: float | None, task: str) -> Record:
    return Record(
        prompt=normalize(text),
        outcomes={
            "cheap": Outcome(quality=q_cheap, cost_usd=0.001),
            "strong": Outcome(quality=q_strong, cost_usd=0.01),
        },
        task=task,
    )


def test_hand_router_scores_are_the_closed_form() -> None:
    assert (len(SHORT), len(LONG), len(MEDIUM)) == (2, 400, 60)
    r = _hand_router()
    for text, n in ((SHORT, 2), (LONG, 400), (MEDIUM, 60)):
        s = r.score(normalize(text)).score
        expected = 1 / (1 + math.exp(-(3 - math.log1p(n))))
        np.testing.assert_allclose(s, [expected, 0.5], rtol=1e-12)


def test_hand_computed_report() -> None:
    records = [
        _hand_record(SHORT, 1.0, 1.0, "x"),  # both right: label cheap
        _hand_record(LONG, 0.0, 1.0, "x"),  # only strong: label strong
        _hand_record(MEDIUM, 1.0, 1.0, "y"),  # both right: label cheap
        _hand_record("one labelled model only", 1.0, None, "y"),  # skipped
    ]
    rep = evaluate(_hand_router(), records, HAND_CATALOG, knobs=(0.0, 0.3, 1.0), min_task_size=2)
    _check_summary(rep, models_expected=2)
    assert rep["n"] == 3 and rep["n_skipped"] == 1
    assert rep["models"] == ["cheap", "strong"]
    assert rep["single_models"] == {
        "cheap": {"quality": 0.666667, "cost": 0.001},
        "strong": {"quality": 1.0, "cost": 0.01},
    }
    # oracle: cheap, strong, cheap; the heuristic happens to pick the same
    assert rep["oracle"] == {"quality": 1.0, "cost": 0.004}
    assert rep["heuristic"] == {"quality": 1.0, "cost": 0.004}
    r = rep["router"]
    # knob 0: cheap, strong, strong; 0.3: MEDIUM flips to cheap; 1.0: everything cheap
    assert r["curve"] == [
        {"knob": 0.0, "quality": 1.0, "cost": 0.007, "calls": {"cheap": 0.3333, "strong": 0.6667}},
        {"knob": 0.3, "quality": 1.0, "cost": 0.004, "calls": {"cheap": 0.6667, "strong": 0.3333}},
        {"knob": 1.0, "quality": 0.666667, "cost": 0.001, "calls": {"cheap": 1.0, "strong": 0.0}},
    ]
    assert r["max_quality"] == 1.0
    # the best single model (strong, 1.0 at 0.01) is matched at cost 0.004 -> 0.4 of its cost
    assert r["cost_to_match_best"] == 0.4
    assert r["cost_to_95pct_best"] == 0.4
    # hull (0.001, 2/3) -> (0.004, 1), flat to 0.01: (0.003·5/6 + 0.006) / 0.009
    assert r["aiq"] == pytest.approx(0.944444, abs=1e-6)
    # the single models alone: a straight line from 2/3 to 1, mean 5/6
    assert rep["zero_router"]["aiq"] == pytest.approx(0.833333, abs=1e-6)
    # default knob 0 picks cheap, strong, strong against labels cheap, strong, cheap
    assert r["accuracy"] == 0.6667
    assert r["macro_f1"] == 0.6667  # both classes: F1 = 2/3
    # two models: strong-call order LONG, MEDIUM, SHORT; quality 2/3, 1, 1, 1 at share 0..1
    assert rep["two_model"] == {
        "strong": "strong",
        "weak": "cheap",
        "apgr": 0.8333,
        "cpt50": 0.1667,
        "cpt80": 0.2667,
    }
    assert set(rep["by_task"]) == {"x"}  # "y" has one evaluated record, below min_task_size
    x = rep["by_task"]["x"]
    assert x["n"] == 2
    assert x["single_models"]["cheap"] == {"quality": 0.5, "cost": 0.001}
    assert x["oracle"] == {"quality": 1.0, "cost": 0.0055}
    json.dumps(rep, allow_nan=False)


def test_tolerance_changes_the_labels_not_the_curve() -> None:
    records = [
        _hand_record(SHORT, 0.9, 1.0, "x"),
        _hand_record(LONG, 0.0, 1.0, "x"),
        _hand_record(MEDIUM, 0.95, 1.0, "x"),
    ]
    strict = evaluate(_hand_router(), records, HAND_CATALOG, knobs=(0.0,))
    loose = evaluate(_hand_router(), records, HAND_CATALOG, knobs=(0.0,), tolerance=0.1)
    assert strict["router"]["curve"] == loose["router"]["curve"]
    # picks at knob 0: cheap, strong, strong. Labels strict: strong ×3; loose: cheap, strong, cheap
    assert strict["router"]["accuracy"] == 0.6667
    assert loose["router"]["accuracy"] == 0.6667
    assert strict["router"]["macro_f1"] == 0.8  # one class: P 1, R 2/3
    assert loose["router"]["macro_f1"] == 0.6667


def test_cost_to_match_best_when_the_router_equals_the_best_model() -> None:
    records = [
        _hand_record(SHORT, 1.0, 1.0, "x"),
        _hand_record(LONG, 0.0, 1.0, "x"),
        _hand_record(MEDIUM, 0.0, 0.0, "x"),
    ]
    rep = evaluate(_hand_router(), records, HAND_CATALOG, knobs=(0.0, 0.3, 1.0))
    assert rep["best_single"]["model"] == "strong"
    # knob 0.3 picks cheap, strong, cheap: quality 2/3 (= strong's) at cost 0.004 (strong: 0.01)
    assert rep["router"]["curve"][1]["quality"] == rep["single_models"]["strong"]["quality"]
    assert rep["router"]["cost_to_match_best"] == 0.4
