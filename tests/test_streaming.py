"""Streaming training: options, soft targets, the held-out slice, chunking, errors, round trip."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.extractor import PromptFeaturizer
from features.text import normalize
from models.artifact import load_router, save_router
from models.catalog import Catalog
from models.errors import DataError
from training.split import is_test
from training.streaming import (
    StreamingOptions,
    expand_soft_targets,
    is_holdout,
    train_streaming,
)
from training.trainer import TrainResult

KEYWORD = "zebra"
VOCAB = [f"w{i}" for i in range(60)]
SMALL = dict(chunk_size=64, epochs=3, n_hash_features=2**10, holdout_percent=10)

CATALOG = Catalog.from_dict(
    {
        "models": [
            {
                "name": name,
                "input_price_per_1m": 1.0,
                "output_price_per_1m": 2.0,
                "latency_ms": 100,
                "context_window": 100_000,
            }
            for name in ("model-a", "model-b", "model-c")
        ]
    }
)


def _prompt(rng: random.Random, keyword: bool) -> str:
    words = rng.choices(VOCAB, k=rng.randint(6, 14))
    if keyword:
        words.insert(rng.randrange(len(words) + 1), KEYWORD)
    return " ".join(words)


def _synthetic_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """model-a is right exactly on prompts with the keyword, model-b on the others; model-b's
    quality is fractional (0.9 / 0.1) so the soft-target path is exercised too."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kw = rng.random() < 0.5
        rows.append(
            {
                "id": f"r{i}",
                "prompt": _prompt(rng, kw),
                "outcomes": {
                    "model-a": {"quality": 1.0 if kw else 0.0},
                    "model-b": {"quality": 0.1 if kw else 0.9},
                },
            }
        )
    return rows


def _write(path: Path, rows: list[Any], *, gz: bool = True) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        path.write_bytes(gzip.compress(lines.encode("utf-8"), mtime=0))
    else:
        path.write_text(lines, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write(tmp_path_factory.mktemp("logs") / "synthetic.jsonl.gz", _synthetic_rows(700, 1))


@pytest.fixture(scope="module")
def trained(logs: Path) -> TrainResult:
    return train_streaming(logs, CATALOG, StreamingOptions(**SMALL))


def _heads_equal(a: TrainResult, b: TrainResult) -> bool:
    ha, hb = a.router.heads["quality"], b.router.heads["quality"]
    return (
        np.array_equal(ha.dense_w, hb.dense_w)
        and np.array_equal(ha.hashed_w, hb.hashed_w)
        and np.array_equal(ha.bias, hb.bias)
    )


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"chunk_size": 0}, "chunk_size: must be a positive integer", id="chunk-0"),
        pytest.param(
            {"chunk_size": 2.5}, "chunk_size: must be a positive integer", id="chunk-float"
        ),
        pytest.param({"epochs": True}, "epochs: must be a positive integer", id="epochs-bool"),
        pytest.param(
            {"max_holdout": -1}, "max_holdout: must be a positive integer", id="holdout-max"
        ),
        pytest.param({"steps": ()}, "steps: every value must be > 0", id="steps-empty"),
        pytest.param({"steps": (1.0, 9.0)}, "steps: every value must be > 0", id="steps-big"),
        pytest.param({"steps": (1.0, 1)}, "steps: values must be distinct", id="steps-dup"),
        pytest.param({"alpha": 0.0}, "alpha: must be > 0 and < 1", id="alpha-0"),
        pytest.param(
            {"holdout_percent": 0}, "holdout_percent: must be between 1 and 50", id="pct-0"
        ),
        pytest.param(
            {"holdout_percent": 51}, "holdout_percent: must be between 1 and 50", id="pct-51"
        ),
        pytest.param({"split": "dev"}, "split: must be one of train, test, all", id="split"),
        pytest.param({"n_hash_features": 2**7}, "n_hash_features: must be between", id="hash"),
        pytest.param({"knob": 0.1, "target_budget": 0.3}, "knob: give at most one", id="two-knobs"),
        pytest.param({"knob": -1.0}, "knob: must be a finite number >= 0", id="knob-negative"),
    ],
)
def test_options_validation_names_the_option(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        StreamingOptions(**kwargs)


def test_options_normalise_steps_to_floats() -> None:
    assert StreamingOptions(steps=(1, 3)).steps == (1.0, 3.0)


# --------------------------------------------------------------------------- soft targets
def test_expand_soft_targets_example() -> None:
    rows, labels, weights = expand_soft_targets(np.array([0.0, 0.7, 1.0, 0.5]))
    assert rows.tolist() == [0, 1, 1, 2, 3, 3]
    assert labels.tolist() == [0, 1, 0, 1, 1, 0]
    assert np.allclose(weights, [1.0, 0.7, 0.3, 1.0, 0.5, 0.5])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0, allow_nan=False), max_size=40))
def test_expand_soft_targets_preserves_every_target(ys: list[float]) -> None:
    y = np.array(ys, dtype=np.float64)
    rows, labels, weights = expand_soft_targets(y)
    assert np.all(np.diff(rows) >= 0)  # rows stay in order, pairs adjacent
    assert set(labels.tolist()) <= {0, 1}
    assert np.all(weights >= 0)
    per_row = np.bincount(rows, weights=weights, minlength=y.size)
    positive = np.bincount(rows, weights=weights * labels, minlength=y.size)
    assert np.allclose(per_row, 1.0)
    assert np.allclose(positive, y)
    hard = (y == 0.0) | (y == 1.0)
    assert np.array_equal(np.bincount(rows, minlength=y.size), np.where(hard, 1, 2))


# --------------------------------------------------------------------------- held-out slice
@pytest.mark.parametrize("percent", [pytest.param(p, id=f"{p}%") for p in (1, 5, 20, 50)])
def test_is_holdout_reads_bytes_8_to_11_of_the_sha256(percent: int) -> None:
    for i in range(300):
        text = f"prompt {i}"
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        assert is_holdout(text, percent) == (int(digest[16:24], 16) % 100 < percent)
        # bytes 0-3 decide the 80/20 split: a different rule
        assert is_test(text) == (int(digest[:8], 16) % 100 < 20)


def test_report_counts_match_the_holdout_rule(trained: TrainResult) -> None:
    texts = [r["prompt"] for r in _synthetic_rows(700, 1)]
    held = sum(is_holdout(t, SMALL["holdout_percent"]) for t in texts)
    report = trained.report
    assert report["n_holdout"] == held
    assert report["n_records"] == 700 - held
    assert report["n_holdout_used"] == held  # fewer than max_holdout
    assert report["models"] == ["model-a", "model-b"]
    assert [e["epoch"] for e in report["epochs"]] == [1, 2, 3]
    assert set(report["best_step"].values()) <= set(StreamingOptions().steps)
    assert report["default_strategy"] == "quality"
    assert report["skipped_lines"] == 0


def test_holdout_sample_is_the_smallest_keys_whatever_the_order(
    logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more held-out prompts than max_holdout, the validation sample is the prompts with
    the smallest sha256 bytes 12-19, so reordering the file does not change it."""
    calls: list[list[str]] = []
    real = PromptFeaturizer.transform

    def spy(self: PromptFeaturizer, X: Any, task_types: Any = None) -> Any:
        calls.append([p.text for p in X])
        return real(self, X, task_types=task_types)

    monkeypatch.setattr(PromptFeaturizer, "transform", spy)
    rows = _synthetic_rows(700, 1)
    held = [r["prompt"] for r in rows if is_holdout(r["prompt"], SMALL["holdout_percent"])]
    key = {t: int(hashlib.sha256(t.encode()).hexdigest()[24:40], 16) for t in held}
    expected = sorted(sorted(held, key=key.__getitem__)[:20], key=key.__getitem__)
    opts = StreamingOptions(**{**SMALL, "epochs": 1, "max_holdout": 20})
    samples = []
    for path in (logs, _write(logs.parent / "reversed.jsonl.gz", rows[::-1])):
        calls.clear()
        result = train_streaming(path, CATALOG, opts)
        assert result.report["n_holdout"] == len(held) > 20
        assert result.report["n_holdout_used"] == 20
        samples.append(calls[-1])  # the held-out sample is featurised after the epoch
    assert samples[0] == samples[1] == expected


# --------------------------------------------------------------------------- learning
def test_streamed_router_learns_the_keyword_rule(trained: TrainResult) -> None:
    router = trained.router
    rng = random.Random(99)
    prompts = [(kw, _prompt(rng, kw)) for kw in [True, False] * 100]
    right = 0
    for kw, text in prompts:
        scored = router.score(normalize(text))
        chosen = router.models[int(router.rank(scored, 0.0)[0])]
        right += chosen == ("model-a" if kw else "model-b")
    # A random router gets half of them right.
    assert right / len(prompts) >= 0.95


def test_validation_loss_beats_the_constant_predictor(trained: TrainResult) -> None:
    last = trained.report["epochs"][-1]["val_loss"]
    # A constant predictor of a 50/50 task has log loss ln 2 ≈ 0.693.
    assert min(last["model-a"].values()) < 0.3
    assert min(last["model-b"].values()) < 0.5


def test_calibration_does_not_hurt_on_the_holdout(trained: TrainResult) -> None:
    cal = trained.report["calibration"]["quality"]
    assert cal["brier_after"] <= cal["brier_before"] + 1e-9


# --------------------------------------------------------------------------- determinism
def test_same_run_twice_gives_the_same_model(logs: Path, trained: TrainResult) -> None:
    again = train_streaming(logs, CATALOG, StreamingOptions(**SMALL))
    assert _heads_equal(trained, again)
    assert again.router.default_knob == trained.router.default_knob
    assert np.array_equal(again.router.output_tokens, trained.router.output_tokens)


def test_chunk_sizes_that_cut_the_data_the_same_way_give_the_same_model(logs: Path) -> None:
    base = {**SMALL, "epochs": 2}
    n_train = train_streaming(logs, CATALOG, StreamingOptions(**base)).report["n_records"]
    one = train_streaming(logs, CATALOG, StreamingOptions(**{**base, "chunk_size": n_train}))
    other = train_streaming(logs, CATALOG, StreamingOptions(**{**base, "chunk_size": 10**6}))
    assert _heads_equal(one, other)


@pytest.fixture
def transform_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of prompts of every `PromptFeaturizer.transform` call, in order."""
    sizes: list[int] = []
    real = PromptFeaturizer.transform

    def spy(self: PromptFeaturizer, X: Any, task_types: Any = None) -> Any:
        sizes.append(len(X))
        return real(self, X, task_types=task_types)

    monkeypatch.setattr(PromptFeaturizer, "transform", spy)
    return sizes


def test_features_are_computed_in_bounded_chunks(logs: Path, transform_sizes: list[int]) -> None:
    sizes = transform_sizes
    opts = StreamingOptions(**{**SMALL, "chunk_size": 40, "max_holdout": 30, "scale_rows": 100})
    result = train_streaming(logs, CATALOG, opts)
    n_train = result.report["n_records"]
    assert max(sizes) == 40
    # per epoch the chunks, each featurised once (the first ones wait for the scale from the
    # first 100 rows rather than being read twice); the 30 held-out rows after epoch 1
    chunks = [40] * (n_train // 40) + ([n_train % 40] if n_train % 40 else [])
    assert sizes == chunks + [30] + chunks * (opts.epochs - 1)


def test_repeated_prompts_are_featurised_once_per_chunk(
    tmp_path: Path, transform_sizes: list[int]
) -> None:
    doubled = _write(
        tmp_path / "doubled.jsonl.gz", [r for r in _synthetic_rows(700, 1) for _ in "ab"]
    )
    sizes = transform_sizes
    opts = StreamingOptions(**{**SMALL, "epochs": 1, "chunk_size": 10**6})
    result = train_streaming(doubled, CATALOG, opts)
    assert result.report["n_records"] == 2 * sizes[0]


# --------------------------------------------------------------------------- round trip
def test_saved_artifact_equals_its_reload(trained: TrainResult, tmp_path: Path) -> None:
    manifest = save_router(
        trained.router,
        tmp_path / "art",
        catalog=CATALOG.to_dict(),
        training={"files": ["synthetic.jsonl.gz"], "method": "streaming"},
        metrics={k: v for k, v in trained.report.items() if k != "options"},
    )
    loaded, loaded_manifest = load_router(tmp_path / "art")
    assert loaded_manifest["router_version"] == manifest["router_version"]
    assert loaded.models == trained.router.models
    assert loaded.default_knob == trained.router.default_knob
    assert loaded.cost_ref == trained.router.cost_ref
    for text in ["w1 w2 zebra w3", "w4 w5 w6", "zebra"]:
        a = trained.router.score(normalize(text))
        b = loaded.score(normalize(text))
        assert np.array_equal(a.score, b.score)
        assert np.array_equal(a.cost_usd, b.cost_usd)


# --------------------------------------------------------------------------- inputs and errors
def test_split_side_is_respected(tmp_path: Path) -> None:
    rows = _synthetic_rows(700, 2)
    path = _write(tmp_path / "x.jsonl", rows, gz=False)
    result = train_streaming(path, CATALOG, StreamingOptions(**{**SMALL, "split": "train"}))
    on_test = sum(is_test(r["prompt"]) for r in rows)
    report = result.report
    assert report["records_other_split"] == on_test
    assert report["n_records"] + report["n_holdout"] == 700 - on_test


def test_skip_invalid_counts_bad_lines(tmp_path: Path) -> None:
    rows: list[Any] = _synthetic_rows(300, 3)
    rows.insert(10, "{not json")
    path = _write(tmp_path / "bad.jsonl", rows, gz=False)
    with pytest.raises(DataError, match=r"bad\.jsonl:11: not valid JSON"):
        train_streaming(path, CATALOG, StreamingOptions(**SMALL))
    result = train_streaming(path, CATALOG, StreamingOptions(**{**SMALL, "skip_invalid": True}))
    assert result.report["skipped_lines"] == 1
    assert list(result.report["skipped_by_reason"]) == [
        "not valid JSON: Expecting property name enclosed in double quotes"
    ]


def test_unknown_model_names_the_line(tmp_path: Path) -> None:
    rows = _synthetic_rows(50, 4)
    rows[7]["outcomes"]["gpt-9"] = {"quality": 1.0}
    path = _write(tmp_path / "u.jsonl", rows, gz=False)
    with pytest.raises(DataError) as info:
        train_streaming(path, CATALOG, StreamingOptions(**SMALL))
    assert str(info.value).startswith(f"{path}:8: 1 model(s) in this line are not in the catalog ")
    assert "'gpt-9'; add them to " in str(info.value)


def test_records_without_quality_are_counted(tmp_path: Path) -> None:
    rows: list[Any] = _synthetic_rows(300, 5)
    rows += [{"prompt": "labelled directly", "label": "model-a"}] * 3
    rows += [{"prompt": "no quality", "outcomes": {"model-a": {"quality": None}}}] * 2
    path = _write(tmp_path / "l.jsonl", rows, gz=False)
    said: list[str] = []
    result = train_streaming(path, CATALOG, StreamingOptions(**SMALL), progress=said.append)
    assert result.report["records_without_quality"] == 2
    # Directly labelled rows are counted apart, and said: --streaming cannot use them.
    assert result.report["records_directly_labelled_ignored"] == 3
    assert any(m.startswith("warning: ignored 3 directly labelled row(s)") for m in said)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        pytest.param(
            [{"prompt": f"p {i}", "outcomes": {"model-a": {"quality": 1.0}}} for i in range(50)],
            r"need labelled outcomes for at least 2 models, found \['model-a'\]",
            id="one-model",
        ),
        pytest.param(
            [{"prompt": f"p {i}", "label": "model-a"} for i in range(50)],
            r"need labelled outcomes for at least 2 models, found \[\]",
            id="labels-only",
        ),
        pytest.param(
            [
                {
                    "prompt": "w1 w2",
                    "outcomes": {"model-a": {"quality": 1.0}, "model-b": {"quality": 0.0}},
                }
            ],
            "no prompt falls in the held-out slice",
            id="no-holdout",
        ),
    ],
)
def test_unusable_data(tmp_path: Path, rows: list, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", rows, gz=False)
    with pytest.raises(DataError, match=message):
        train_streaming(path, CATALOG, StreamingOptions(**SMALL))


def test_needs_a_path() -> None:
    with pytest.raises(ValueError, match="at least one path"):
        train_streaming([], CATALOG)
