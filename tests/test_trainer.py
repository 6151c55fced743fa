"""Training: option validation, CV folds, the report, knob calibration, errors and determinism."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import training.policy as policy_mod
import training.trainer as trainer_mod
from features.text import normalize
from models.catalog import Catalog
from models.errors import DataError
from models.router import Router
from training.curves import KNOB_GRID
from training.logs import load_records
from training.records import Outcome, Record, in_canonical_order
from training.split import is_test
from training.trainer import TrainOptions, TrainResult, fold_ids, train

DATA = Path(__file__).resolve().parent.parent / "data"
SMALL = dict(c_grid=(0.3, 1.0), cv_folds=2, n_hash_features=2**12, n_jobs=1)

REPORT_KEYS = {
    "n_records",
    "models",
    "cv_folds",
    "cv_sample",
    "calibration",
    "cv_routing",
    "default_strategy",
    "default_knob_cv_point",
    "cv_curve",
    "knob_target_met",
    "default_knob",
    "best_c",
    "cv_loss",
    "train_seconds",
    "verifiers",
    "options",
    "default_knob_mix",
    "cv_policy_curve",
    "gain_heads",
    "domains",
}
# present by rule: a margin for the "match the best model" default, the achieved share for a target
OPTIONAL_KEYS = {"default_knob_margin", "knob_target", "knob_target_expected_cv"}


class _Capture:
    """Wraps trainer._oof_routing to keep the OOF curves the knob is chosen from."""

    def __init__(self) -> None:
        self.routing: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = self._real(*args, **kwargs)
        self.routing.append(out)
        return out

    _real = staticmethod(trainer_mod._oof_routing)


def _train_capturing(records: list, catalog: Catalog, **opts: Any) -> tuple[TrainResult, dict]:
    """Train and return the result plus the OOF routing of the chosen head (with its curve)."""
    capture = _Capture()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "_oof_routing", capture)
        result = train(records, catalog, TrainOptions(**{**SMALL, **opts}))
    heads = list(result.report["cv_routing"])  # same order as the calls
    by_head = dict(zip(heads, capture.routing, strict=True))
    return result, by_head[result.report["default_strategy"]]


@pytest.fixture(scope="module")
def trained(sample_records: list, catalog: Catalog) -> Iterator[tuple[TrainResult, dict, list]]:
    messages: list[str] = []
    capture = _Capture()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "_oof_routing", capture)
        result = train(sample_records, catalog, TrainOptions(**SMALL), progress=messages.append)
    routing = dict(zip(result.report["cv_routing"], capture.routing, strict=True))
    yield result, routing, messages


@pytest.fixture(scope="module")
def routellm_records(sample_records: list) -> list:
    out = [r for r in sample_records if r.id and r.id.startswith("routellm/")]
    assert len(out) >= 100
    return out


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"c_grid": ()}, "c_grid: every value", id="c-grid-empty"),
        pytest.param({"c_grid": (1.0, 0.0)}, "c_grid: every value", id="c-grid-zero"),
        pytest.param({"c_grid": (-1.0,)}, "c_grid: every value", id="c-grid-negative"),
        pytest.param({"c_grid": (float("inf"),)}, "c_grid: every value", id="c-grid-inf"),
        pytest.param({"tolerance": -0.1}, "tolerance: must be between 0 and 1", id="tol-neg"),
        pytest.param({"tolerance": 1.5}, "tolerance: must be between 0 and 1", id="tol-big"),
        pytest.param({"tolerance": float("nan")}, "tolerance:", id="tol-nan"),
        pytest.param({"cv_folds": 1}, "cv_folds: must be between 2 and 20", id="folds-1"),
        pytest.param({"cv_folds": 21}, "cv_folds: must be between 2 and 20", id="folds-21"),
        pytest.param({"strategy": "best"}, "strategy: must be one of", id="strategy"),
        pytest.param(
            {"target_budget": 0.3, "knob": 1.0}, "knob: give at most one of", id="two-targets"
        ),
        pytest.param(
            {"target_budget": 0.3, "target_strong_share": 0.5},
            "knob: give at most one of",
            id="budget-and-share",
        ),
        pytest.param({"target_budget": 0.0}, "target_budget: must be a fraction", id="budget-0"),
        pytest.param({"target_budget": 11.0}, "target_budget:", id="budget-huge"),
        pytest.param(
            {"target_strong_share": 1.5}, "target_strong_share: must be between", id="share"
        ),
        pytest.param({"knob": -1.0}, "knob: must be a finite number >= 0", id="knob-negative"),
        pytest.param({"knob": float("inf")}, "knob: must be a finite number", id="knob-inf"),
        pytest.param({"n_hash_features": 2**7}, "n_hash_features: must be between", id="hash-lo"),
        pytest.param({"n_hash_features": 2**23}, "n_hash_features: must be between", id="hash-hi"),
        pytest.param({"cv_max_prompts": 99}, "cv_max_prompts: must be at least 100", id="cv-cap"),
        pytest.param({"domain_groups": -1}, "domain_groups: must be between", id="groups-neg"),
        pytest.param({"idf_power": -0.5}, "idf_power: must be between 0 and 4", id="idf-neg"),
        pytest.param({"idf_power": float("nan")}, "idf_power: must be between", id="idf-nan"),
        pytest.param({"idf_power": "2"}, "idf_power: must be a number", id="idf-str"),
        pytest.param({"domain_groups": 2.5}, "domain_groups: must be a whole number", id="groups"),
    ],
)
def test_options_validation_names_the_option(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        TrainOptions(**kwargs)
    assert str(info.value).startswith(message)


def test_options_normalise_the_grid() -> None:
    opts = TrainOptions(c_grid=[1, 0.5])  # type: ignore[arg-type]
    assert opts.c_grid == (1.0, 0.5)
    assert all(isinstance(c, float) for c in opts.c_grid)
    assert TrainOptions().c_grid == (0.1, 0.3, 1.0)


# --------------------------------------------------------------------------- folds
def test_fold_ids_are_deterministic_and_per_text() -> None:
    texts = [f"prompt number {i}" for i in range(200)] + ["dup", "dup"]
    a = fold_ids(texts, 3)
    assert a.dtype == np.int64 and a.shape == (202,)
    assert set(a.tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(a, fold_ids(texts, 3))
    # a prompt's fold depends on its text only, not on its neighbours or position
    np.testing.assert_array_equal(a[::-1], fold_ids(texts[::-1], 3))
    assert a[-1] == a[-2]
    assert fold_ids([], 3).shape == (0,)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_fold_ids_are_independent_of_the_split(k: int) -> None:
    texts = [f"What is {i} plus {i * 7}?" for i in range(5000)]
    folds = fold_ids(texts, k)
    test_side = np.array([is_test(t) for t in texts])
    for side in (test_side, ~test_side):
        share = np.bincount(folds[side], minlength=k) / side.sum()
        # every fold is drawn evenly from both sides of the split (binomial sd < 0.02 here)
        np.testing.assert_allclose(share, 1.0 / k, atol=0.05)


# --------------------------------------------------------------------------- the report
def test_report_keys_and_counts(trained: tuple, sample_records: list) -> None:
    result, _routing, messages = trained
    report = result.report
    assert REPORT_KEYS <= set(report) <= REPORT_KEYS | OPTIONAL_KEYS
    n = len(sample_records)
    assert report["n_records"] == n
    assert report["models"] == list(result.router.models) == sorted(result.router.models)
    assert len(report["models"]) == 12  # RouterBench's 11 and RouteLLM's weak model
    assert report["cv_folds"] == 2
    assert report["options"]["c_grid"] == (0.3, 1.0)
    assert report["train_seconds"] > 0
    json.dumps(report, allow_nan=False)  # it goes into the manifest as it is
    # The default head's cross-validated curve (the dashboard draws it) holds the default point.
    assert [p["knob"] for p in report["cv_curve"]] == list(KNOB_GRID)
    assert report["default_knob_cv_point"] in report["cv_curve"]
    assert messages[0] == f"{n} records, 12 models; extracting features"
    assert messages[-1].startswith("final fit: ")


def test_report_calibration_figures(trained: tuple) -> None:
    calib = trained[0].report["calibration"]
    q = calib["quality"]
    assert q["method"] == "platt per model"
    assert 0 < q["brier_after"] < 0.25 and 0 < q["brier_before"] < 0.25
    c = calib["classifier"]
    assert c["method"] == "temperature"
    assert np.exp(-4) <= c["temperature"] <= np.exp(4)
    assert 0 <= c["ece_before"] <= 1 and 0 <= c["ece_after"] <= 1
    assert 0 < c["brier_after"] < 2


def test_best_c_is_chosen_from_the_grid_by_cv_loss(trained: tuple) -> None:
    report = trained[0].report
    assert set(report["best_c"]) == {"quality", "classifier"}
    for head, per_model in report["best_c"].items():
        assert list(per_model) == report["models"]
        for model, c in per_model.items():
            assert c in (0.3, 1.0)
            losses = report["cv_loss"][head][model]
            assert set(losses) == {"C=0.3", "C=1"}
            assert losses[f"C={c:g}"] == min(losses.values())


def test_default_strategy_is_the_head_with_the_higher_cv_aiq(trained: tuple) -> None:
    result, routing, _ = trained
    report = result.report
    assert set(result.router.heads) == {"quality", "classifier"}
    assert report["default_strategy"] in result.router.heads
    assert result.router.default_strategy == report["default_strategy"]
    aiq = {h: r["aiq"] for h, r in report["cv_routing"].items()}
    assert report["default_strategy"] == max(aiq, key=aiq.get)
    for head, r in report["cv_routing"].items():
        assert r == {k: v for k, v in routing[head].items() if k not in ("curve", "fold_curves")}
        assert r["n"] == report["n_records"]
        assert 0 < r["aiq"] <= 1


def test_default_knob_is_the_cheapest_point_matching_the_best_model(trained: tuple) -> None:
    result, routing, _ = trained
    r = routing[result.report["default_strategy"]]
    ok = [p["knob"] for p in r["curve"] if p["quality"] >= r["best_single_quality"] - 1e-12]
    assert result.report["default_knob"] == (max(ok) if ok else 0.0)
    assert result.router.default_knob == result.report["default_knob"]


def test_router_arrays(trained: tuple, catalog: Catalog) -> None:
    router: Router = trained[0].router
    inp, out = catalog.prices(router.models)
    np.testing.assert_array_equal(router.input_price, inp)
    np.testing.assert_array_equal(router.output_price, out)
    assert (router.output_tokens > 0).all()
    assert router.cost_ref > 0
    assert router.featurizer.n_hash_features == 2**12
    for head in router.heads.values():
        assert head.dense_w.shape == (router.n_dense, 12)
        assert head.hashed_w.shape == (2**12, 12)
        assert np.isfinite(head.dense_w).all() and np.isfinite(head.hashed_w).all()
        # the quality head's extra columns: one per kept gain head, then the domains
        n_extra = head.gain_models.size + (0 if head.domain is None else len(head.domain.names))
        if n_extra:
            assert head.extra is not None and head.extra[1].shape == (2**12, n_extra)
    quality = router.heads["quality"]
    # the tasks, and the one group of MMLU subjects (meta.subject) with 20 sampled prompts;
    # the other groups' prompts are too few and count as plain "mmlu"
    assert quality.domain is not None and quality.domain.names == [
        "arc-challenge",
        "gsm8k",
        "mbpp",
        "mmlu",
        "mmlu/professional_law",
        "winogrande",
    ]
    assert trained[0].report["domains"]["groups"] == {"mmlu/professional_law": ["professional_law"]}


def test_training_is_deterministic(trained: tuple, sample_records: list, catalog: Catalog) -> None:
    first = trained[0]
    again = train(sample_records, catalog, TrainOptions(**SMALL))
    assert again.router.models == first.router.models
    assert again.router.default_strategy == first.router.default_strategy
    assert again.router.default_knob == first.router.default_knob
    assert again.router.cost_ref == first.router.cost_ref
    np.testing.assert_array_equal(again.router.output_tokens, first.router.output_tokens)
    assert set(again.router.heads) == set(first.router.heads)
    for name, head in first.router.heads.items():
        other = again.router.heads[name]
        np.testing.assert_array_equal(head.dense_w, other.dense_w)
        np.testing.assert_array_equal(head.hashed_w, other.hashed_w)
        np.testing.assert_array_equal(head.bias, other.bias)
    for key in ("calibration", "cv_routing", "best_c", "cv_loss", "default_knob", "options"):
        assert again.report[key] == first.report[key]


def _assert_same_router(a: TrainResult, b: TrainResult) -> None:
    assert a.router.models == b.router.models
    assert a.router.default_knob == b.router.default_knob
    for name, head in a.router.heads.items():
        other = b.router.heads[name]
        np.testing.assert_array_equal(head.dense_w, other.dense_w)
        np.testing.assert_array_equal(head.hashed_w, other.hashed_w)
        np.testing.assert_array_equal(head.bias, other.bias)
    for key in ("calibration", "best_c", "cv_loss", "cv_sample"):
        assert a.report[key] == b.report[key]


def test_two_fitting_workers_train_the_same_router_as_one(
    trained: tuple, sample_records: list, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers slice a memory-mapped matrix themselves and keep their freed memory; none of
    it may change a weight. Every array goes to them as a memory map here (1 byte threshold),
    and the cap makes per-model calibration cross-validate some models a second time."""
    monkeypatch.setattr(trainer_mod, "_SHARE_BYTES", 1)
    opts = {**SMALL, "cv_max_prompts": 200}
    one = train(sample_records, catalog, TrainOptions(**opts))
    messages: list[str] = []
    two = train(
        sample_records, catalog, TrainOptions(**{**opts, "n_jobs": 2}), progress=messages.append
    )
    assert any("quality heads on their own samples" in m for m in messages)
    _assert_same_router(one, two)


def test_the_row_slicer_reuses_a_slice_only_of_the_same_matrix_and_rows() -> None:
    from scipy import sparse

    slicer = trainer_mod._RowSlicer()
    a = sparse.csr_matrix(np.arange(12.0).reshape(4, 3))
    b = sparse.csr_matrix(-np.arange(12.0).reshape(4, 3))  # same shape and non-zero count
    rows = np.array([2, 0])
    first = slicer(a, rows)
    assert slicer(a, rows.copy()) is first  # same rows: the same slice
    np.testing.assert_array_equal(slicer(b, rows).toarray(), b[rows].toarray())
    np.testing.assert_array_equal(slicer(a, np.array([1])).toarray(), a[[1]].toarray())
    del first
    slicer.clear()
    np.testing.assert_array_equal(slicer(a, rows).toarray(), a[rows].toarray())


def test_background_work_hands_back_its_value_or_its_error() -> None:
    assert trainer_mod._InBackground(lambda x, y: x + y, 2, 3).result() == 5

    def fails() -> None:
        raise DataError("logs", 3, "bad")

    with pytest.raises(DataError, match="bad"):
        trainer_mod._InBackground(fails).result()


# --------------------------------------------------------------------------- knob calibration
def test_target_budget_is_met_by_a_mix_of_the_two_knobs_around_it(
    sample_records: list, catalog: Catalog
) -> None:
    budget = 0.3  # "spend 30% of what always-the-strongest-model costs"
    result, routing = _train_capturing(sample_records, catalog, target_budget=budget)
    mix = result.router.knob_mix
    assert mix is not None and result.router.default_knob == mix.low
    assert result.report["default_knob_mix"] == [mix.low, mix.high, mix.p_high]
    knobs = [p["knob"] for p in routing["curve"]]
    lo = next(p for p in routing["curve"] if p["knob"] == mix.low)
    hi = next(p for p in routing["curve"] if p["knob"] == mix.high)
    # one overspending and one within the budget: the nearest whose shares are stable, or
    # else the target's neighbours on the grid (`training.policy._mix`)
    assert lo["budget_share"] > budget >= hi["budget_share"]
    curve = routing["curve"]
    i_lo, i_hi = knobs.index(mix.low), knobs.index(mix.high)
    first_within = next(i for i, p in enumerate(curve) if p["budget_share"] <= budget)
    assert i_lo < first_within <= i_hi
    assert i_hi == first_within or policy_mod._stable(curve, "budget_share", i_hi)
    assert i_lo == first_within - 1 or policy_mod._stable(curve, "budget_share", i_lo)
    expected = (1 - mix.p_high) * lo["budget_share"] + mix.p_high * hi["budget_share"]
    assert expected == pytest.approx(budget)
    # what the mix achieves out of fold with the router's own per-prompt draws
    target = result.report["knob_target"]
    assert target["kind"] == "budget_share" and target["target"] == budget
    assert abs(target["achieved_cv"] - budget) <= 0.03


def test_target_strong_share_gives_a_knob_within_the_share(
    routellm_records: list, catalog: Catalog
) -> None:
    result, routing = _train_capturing(routellm_records, catalog, target_strong_share=0.4)
    mix = result.router.knob_mix
    knob = result.router.default_knob if mix is None else mix.high
    point = next(p for p in routing["curve"] if p["knob"] == knob)
    assert point["strong_share"] <= 0.4
    # the mix's high side is the first knob within the share, or the nearest stable one after
    curve = routing["curve"]
    first_within = next(i for i, p in enumerate(curve) if p["strong_share"] <= 0.4)
    i_hi = [p["knob"] for p in curve].index(knob)
    assert i_hi == first_within or (
        i_hi > first_within and policy_mod._stable(curve, "strong_share", i_hi)
    )
    assert routing["curve"][0]["knob"] == 0.0 and routing["curve"][0]["strong_share"] > 0.4
    assert abs(result.report["knob_target"]["achieved_cv"] - 0.4) <= 0.03


def test_explicit_strategy_and_knob(routellm_records: list, catalog: Catalog) -> None:
    result = train(
        routellm_records, catalog, TrainOptions(**SMALL, strategy="classifier", knob=0.25)
    )
    assert set(result.router.heads) == {"classifier"}
    assert result.router.heads["classifier"].kind == "softmax"
    assert result.router.default_strategy == result.report["default_strategy"] == "classifier"
    assert result.router.default_knob == result.report["default_knob"] == 0.25
    assert set(result.report["calibration"]) == {"classifier"}
    assert result.router.models == ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")


# --------------------------------------------------------------------------- data errors
def _rec(text: str, source: str = "logs.jsonl:1", **q: float) -> Record:
    return Record(
        prompt=normalize(text),
        outcomes={m: Outcome(quality=v) for m, v in q.items()},
        source=source,
    )


def test_models_missing_from_the_catalog(catalog: Catalog) -> None:
    records = [
        _rec("a", **{"gpt-4-1106-preview": 1.0, "my-local-llm": 0.0}, source="mine.jsonl:7"),
        _rec("b", **{"gpt-4-1106-preview": 1.0, "another-llm": 0.0}, source="mine.jsonl:9"),
    ]
    with pytest.raises(DataError) as info:
        train(records, catalog, TrainOptions(**SMALL))
    assert info.value.path == "mine.jsonl:7"
    # Every unknown model at once, and the file to edit.
    assert info.value.reason == (
        f"2 model(s) in the logs are not in the catalog {catalog.source}: 'another-llm', "
        f"'my-local-llm'; add them to {catalog.source} with their prices (or pass --catalog FILE)"
    )


@pytest.mark.parametrize(
    "records",
    [
        pytest.param(
            [_rec(f"p{i}", **{"gpt-4-1106-preview": 1.0}) for i in range(5)], id="one-model"
        ),
        pytest.param(
            [Record(prompt=normalize(f"p{i}"), label="claude-v1") for i in range(5)],
            id="one-label",
        ),
    ],
)
def test_fewer_than_two_models(catalog: Catalog, records: list) -> None:
    with pytest.raises(DataError, match="need labelled outcomes for at least 2 models"):
        train(records, catalog, TrainOptions(**SMALL))


def test_no_labelled_record(catalog: Catalog) -> None:
    records = [_rec("p", **{}), Record(prompt=normalize("q"), outcomes={"claude-v1": Outcome()})]
    with pytest.raises(DataError, match="no record has a labelled outcome or a label"):
        train(records, catalog, TrainOptions(**SMALL))


def test_budget_point_and_target_flag_are_reported(sample_records: list, catalog: Catalog) -> None:
    met, _ = _train_capturing(sample_records, catalog, target_budget=0.3)
    assert met.report["knob_target_met"] is True
    assert met.report["default_knob_cv_point"]["knob"] == met.report["default_knob"]
    # the low side of the mix overspends; the mix lands on the target
    assert met.report["default_knob_cv_point"]["budget_share"] > 0.3
    assert met.report["knob_target_expected_cv"] == pytest.approx(0.3)
    # Spending 0.01% of the strongest model's cost is not reachable: said, not hidden.
    unmet, _ = _train_capturing(sample_records, catalog, target_budget=1e-4)
    assert unmet.report["knob_target_met"] is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("cv_folds", 2.5, id="folds"),
        pytest.param("n_hash_features", 4096.0, id="hash"),
        pytest.param("cv_max_prompts", 1000.0, id="cv-cap"),
    ],
)
def test_whole_number_options_reject_floats(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{field}: must be a whole number"):
        TrainOptions(**{field: value})


# --------------------------------------------------------------------------- repeats, CV sample
def test_repeated_records_train_the_same_router(
    trained: tuple, sample_records: list, catalog: Catalog
) -> None:
    """A prompt logged twice is one example with its mean outcome: logging everything twice
    changes nothing but the counts (and, within the optimiser's tolerance, the calibration)."""
    first = trained[0]
    twice = train(sample_records * 2, catalog, TrainOptions(**SMALL))
    assert twice.report["n_records"] == 2 * first.report["n_records"]
    assert (
        twice.report["cv_sample"]["distinct_prompts"]
        == first.report["cv_sample"]["distinct_prompts"]
    )
    assert twice.report["best_c"] == first.report["best_c"]
    assert twice.router.default_strategy == first.router.default_strategy
    for name, head in first.router.heads.items():
        other = twice.router.heads[name]
        np.testing.assert_allclose(other.hashed_w, head.hashed_w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(other.dense_w, head.dense_w, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(other.bias, head.bias, rtol=1e-4, atol=1e-6)


def test_cross_validation_runs_on_a_capped_sample(sample_records: list, catalog: Catalog) -> None:
    capped, routing = _train_capturing(sample_records, catalog, cv_max_prompts=200)
    sample = capped.report["cv_sample"]
    assert sample["prompts"] == 200 < sample["distinct_prompts"]
    assert 200 <= sample["records"] < capped.report["n_records"]
    # calibration and the policy choices see only the sample's out-of-fold scores
    assert routing["n"] <= sample["records"]
    for head in capped.report["cv_routing"].values():
        assert head["n"] <= sample["records"]
    # the final fits still use every record: models only in the unsampled part would be
    # missing otherwise, and the weights differ from a router trained on the sample alone
    assert set(capped.router.heads) == {"quality", "classifier"}


def test_cv_sample_is_independent_of_record_order(sample_records: list) -> None:
    a = trainer_mod._distinct_prompts(sample_records, 3, 150)
    b = trainer_mod._distinct_prompts(sample_records[::-1], 3, 150)
    chosen_a = {sample_records[i].prompt.text for i in a.first[a.in_cv]}
    chosen_b = {sample_records[::-1][i].prompt.text for i in b.first[b.in_cv]}
    assert chosen_a == chosen_b and len(chosen_a) == 150
    # folds are those of `fold_ids`, so the sample never changes which fold a prompt is in
    texts = [sample_records[i].prompt.text for i in a.first]
    np.testing.assert_array_equal(a.folds, fold_ids(texts, 3))


def test_each_model_is_calibrated_on_its_own_sample(sample_records: list, catalog: Catalog) -> None:
    """A model's sample is the first `cap` of its own prompts in the shared sample's order, so
    it holds the model's part of the shared sample and, where the shared one spread `cap` over
    sources, more of the model's prompts."""
    from training.labels import build_targets

    models = sorted({m for r in sample_records for m in r.outcomes})
    t = build_targets(sample_records, models, catalog)
    cap = 120
    prompts = trainer_mod._distinct_prompts(sample_records, 3, cap)
    sample = trainer_mod._model_samples(trainer_mod._measured(t, prompts), prompts, cap)
    for j in range(len(models)):
        own = np.zeros(len(prompts.first), dtype=bool)
        own[prompts.inverse[t.labelled[:, j]]] = True
        chosen = np.flatnonzero(sample[:, j])
        assert not (sample[:, j] & ~own).any()  # only prompts the model was measured on
        assert chosen.size == min(cap, int(own.sum()))
        # the first of its own prompts by the shared order: none left out ranks before one taken
        left_out = np.flatnonzero(own & ~sample[:, j])
        if left_out.size:
            assert prompts.rank[chosen].max() < prompts.rank[left_out].min()
        assert not (own & prompts.in_cv & ~sample[:, j]).any()  # contains its shared part
    # a model of one source only gets more of its own prompts than the shared sample gave it
    shared = (sample & prompts.in_cv[:, None]).sum(axis=0)
    assert (sample.sum(axis=0) > shared).sum() >= len(models) - 1


def test_training_reports_the_prompts_each_model_is_calibrated_on(
    sample_records: list, catalog: Catalog
) -> None:
    opts = TrainOptions(**{**SMALL, "cv_max_prompts": 120, "calibrate_per_model": False})
    shared = trainer_mod._distinct_prompts(sample_records, opts.cv_folds, 120)
    texts = np.array([sample_records[i].prompt.text for i in shared.first], dtype=object)
    in_shared = set(texts[shared.in_cv])
    messages: list[str] = []
    per_model = train(sample_records, catalog, opts, progress=messages.append).report["cv_sample"][
        "per_model_prompts"
    ]
    own = {m: {r.prompt.text for r in sample_records if m in r.outcomes} for m in per_model}
    # without per-model calibration, each model's part of the shared sample
    assert per_model == {m: len(p & in_shared) for m, p in own.items()}
    assert not any("own samples" in m for m in messages)
    assert TrainOptions().calibrate_per_model  # the default
    opts = TrainOptions(**{**SMALL, "cv_max_prompts": 120})
    per_model = train(sample_records, catalog, opts, progress=messages.append).report["cv_sample"][
        "per_model_prompts"
    ]
    assert per_model == {m: min(120, len(p)) for m, p in own.items()}  # up to the cap, its own
    assert any("quality heads on their own samples" in m for m in messages)


def test_per_model_calibration_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="calibrate_per_model: must be true or false"):
        TrainOptions(calibrate_per_model="yes")


def test_the_order_the_records_come_in_does_not_change_the_router(
    sample_records: list, catalog: Catalog
) -> None:
    """Logs read in another order (`--logs b a`, replicas' logs concatenated) train the same
    router and the same answer verifiers, bit for bit: the trainer sorts the records by what
    they say first."""
    answers = load_records([DATA / "gsm8k_responses.jsonl.gz"]).records[:400]
    one = train(sample_records, catalog, TrainOptions(**SMALL), verifier_records=answers)
    shuffled = list(sample_records)
    random.Random(7).shuffle(shuffled)
    two = train(shuffled, catalog, TrainOptions(**SMALL), verifier_records=answers[::-1])
    _assert_same_router(one, two)
    assert two.report["cv_routing"] == one.report["cv_routing"]
    assert set(one.router.verifiers) == set(two.router.verifiers) and one.router.verifiers
    for m, v in one.router.verifiers.items():
        w = two.router.verifiers[m]
        np.testing.assert_array_equal(v.hashed_w, w.hashed_w)
        np.testing.assert_array_equal(v.dense_w, w.dense_w)
        assert (v.bias, v.threshold) == (w.bias, w.threshold)


def test_canonical_order_sorts_by_content_and_errors_still_name_the_first_bad_line(
    catalog: Catalog,
) -> None:
    two = {"gpt-4-1106-preview": 1.0, "claude-v1": 0.0}
    recs = [_rec(f"prompt {i}", source=f"logs.jsonl:{i + 1}", **two) for i in range(20)]
    once = in_canonical_order(recs)
    assert sorted(map(id, once)) == sorted(map(id, recs)) and once != recs
    assert in_canonical_order(once[::-1]) == once
    bad = [*recs[:5], _rec("other", source="logs.jsonl:6", **{**two, "my-llm": 1.0}), *recs[5:]]
    bad.append(_rec("again", source="logs.jsonl:22", **{**two, "my-llm": 1.0}))
    with pytest.raises(DataError) as info:
        train(bad, catalog, TrainOptions(**SMALL))
    assert info.value.path == "logs.jsonl:6"
