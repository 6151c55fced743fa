"""Artifacts: save → load round trip, the manifest, and refusing anything unverified."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import models.artifact as artifact_mod
import models.payload as payload_mod
from features.extractor import FEATURE_VERSION, PromptFeaturizer
from features.text import normalize
from models.artifact import (
    ARRAYS,
    FORMAT_VERSION,
    MANIFEST,
    VALUES,
    file_sha256,
    load_router,
    read_manifest,
    save_router,
)
from models.errors import ArtifactError
from models.router import LinearHead, Router

MODELS = ("small", "large")
PROMPTS = [
    normalize("hi"),
    normalize("Prove that the square root of 2 is irrational."),
    normalize(messages=[{"role": "user", "content": "Write a Python function to sort a list."}]),
]
CATALOG_SNAPSHOT = {"version": 1, "typical_output_tokens": 300, "models": []}
TRAINING = {"files": ["x.jsonl"], "data_sha256": "ab" * 32, "records_used": 3}
METRICS = {"n_records": 3, "calibration": {"quality": {"brier_after": 0.1}}}


def _router(seed: int = 0) -> Router:
    f = PromptFeaturizer(n_hash_features=256).fit([])
    rng = np.random.default_rng(seed)
    heads = {
        "quality": LinearHead.from_coef(
            "sigmoid", rng.normal(size=(2, f.n_dense_ + 256)), rng.normal(size=2), f.n_dense_
        ),
        "classifier": LinearHead.from_coef(
            "softmax", rng.normal(size=(2, f.n_dense_ + 256)), rng.normal(size=2), f.n_dense_
        ),
    }
    return Router(
        models=MODELS,
        featurizer=f,
        heads=heads,
        input_price=np.array([1e-7, 1e-5]),
        output_price=np.array([2e-7, 3e-5]),
        output_tokens=np.array([120.5, 250.0]),
        cost_ref=0.0123,
        default_strategy="classifier",
        default_knob=0.37,
    )


def _save(router: Router, path: Path, **kw: Any) -> dict[str, Any]:
    args = dict(catalog=CATALOG_SNAPSHOT, training=TRAINING, metrics=METRICS)
    args.update(kw)
    return save_router(router, path, **args)


def _scores(router: Router) -> dict[str, np.ndarray]:
    return {s: router.score_batch(PROMPTS, strategy=s)[0] for s in router.heads}


@pytest.fixture
def art(tmp_path: Path) -> Path:
    path = tmp_path / "art"
    _save(_router(), path)
    return path


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the payload is parsed at all (it must be refused before)."""

    def refuse(*_a: Any, **_k: Any) -> None:
        pytest.fail("the payload of an unverified artifact was parsed")

    monkeypatch.setattr(artifact_mod._payload, "decode", refuse)


def _edit_manifest(path: Path, change) -> None:
    m = json.loads((path / MANIFEST).read_text())
    change(m)
    (path / MANIFEST).write_text(json.dumps(m))


# --------------------------------------------------------------------------- round trip
def test_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    router = _router()
    manifest = _save(router, tmp_path / "art")
    loaded, m = load_router(tmp_path / "art")
    assert m == manifest
    assert loaded.models == MODELS
    assert loaded.default_strategy == "classifier" and loaded.default_knob == 0.37
    assert loaded.cost_ref == 0.0123
    assert loaded.version == manifest["router_version"]
    for name in ("input_price", "output_price", "output_tokens"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(router, name))
    before, after = _scores(router), _scores(loaded)
    assert set(before) == set(after) == {"quality", "classifier"}
    for s in before:
        np.testing.assert_array_equal(before[s], after[s])
    one = loaded.score(PROMPTS[1])
    np.testing.assert_array_equal(one.score, router.score(PROMPTS[1]).score)


def test_trained_artifact_round_trips(
    tiny_artifact: Path, tiny_router: Router, tmp_path: Path, sample_records: list
) -> None:
    manifest = read_manifest(tiny_artifact)
    _save(tiny_router, tmp_path / "again", metrics=manifest["metrics"])
    again, _ = load_router(tmp_path / "again")
    prompts = [r.prompt for r in sample_records[::25]]
    for s in tiny_router.heads:
        np.testing.assert_array_equal(
            tiny_router.score_batch(prompts, strategy=s)[0],
            again.score_batch(prompts, strategy=s)[0],
        )
    # the same arrays give the same payload bytes, hence the same version string
    assert read_manifest(tmp_path / "again")["payload"]["sha256"] == manifest["payload"]["sha256"]


def test_manifest_fields(art: Path) -> None:
    m = json.loads((art / MANIFEST).read_text())
    assert m["format_version"] == FORMAT_VERSION == 2
    assert m["feature_version"] == FEATURE_VERSION
    assert m["models"] == list(MODELS)
    assert m["strategies"] == ["classifier", "quality"]
    assert m["default_strategy"] == "classifier" and m["default_knob"] == 0.37
    assert m["catalog"] == CATALOG_SNAPSHOT
    assert m["training"] == TRAINING
    assert m["metrics"] == METRICS
    assert set(m["libraries"]) == {"promptroute", "python", "numpy"}
    assert m["libraries"]["numpy"] == np.__version__
    files = {
        name: {"sha256": file_sha256(art / name), "bytes": (art / name).stat().st_size}
        for name in (VALUES, ARRAYS)
    }
    lines = "".join(f"{n} {files[n]['sha256']}\n" for n in sorted(files))
    assert m["payload"] == {
        "sha256": hashlib.sha256(lines.encode()).hexdigest(),
        "files": files,
    }
    assert re.fullmatch(r"[0-9a-f]{64}", m["payload"]["sha256"])
    assert m["router_version"] == f"2.{FEATURE_VERSION}.{m['payload']['sha256'][:12]}"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", m["created_at"])
    assert sorted(p.name for p in art.iterdir()) == [MANIFEST, VALUES, ARRAYS]


def test_payload_is_json_and_plain_arrays(art: Path) -> None:
    # Readable without promptroute: the values are JSON, the arrays an npz numpy opens without
    # pickle, and the featurizer is its parameters.
    values = json.loads((art / VALUES).read_text())
    assert values["models"] == list(MODELS)
    assert values["featurizer_params"] == {
        "char_ngrams": [3, 4],
        "max_scan_chars": 4096,
        "n_hash_features": 256,
        "word_ngram_max": 2,
    }
    assert values["heads"]["quality"]["hashed_w"] == {
        "__ndarray__": "heads/quality/hashed_w",
        "dtype": "<f4",
        "shape": [256, 2],
    }
    with np.load(art / ARRAYS, allow_pickle=False) as npz:
        assert sorted(npz.files) == sorted(
            [
                f"heads/{h}/{a}"
                for h in ("classifier", "quality")
                for a in ("bias", "dense_w", "hashed_w")
            ]
            + ["input_price", "output_price", "output_tokens"]
        )
        np.testing.assert_array_equal(npz["input_price"], [1e-7, 1e-5])


def test_featurizer_parameters_round_trip(art: Path) -> None:
    loaded, _ = load_router(art)
    assert loaded.featurizer.get_params() == _router().featurizer.get_params()
    assert loaded.featurizer.char_ngrams == (3, 4)


def test_read_manifest_does_not_parse_the_payload(art: Path, no_parsing: None) -> None:
    assert read_manifest(art)["models"] == list(MODELS)


def test_file_sha256(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert file_sha256(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_manifest_must_be_json_safe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        _save(_router(), tmp_path / "art", metrics={"aiq": float("nan")})
    assert list(tmp_path.iterdir()) == []  # no half-written folder or temporary left behind


# --------------------------------------------------------------------------- refusals
def _flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])


@pytest.mark.parametrize("name", [VALUES, ARRAYS])
@pytest.mark.parametrize(
    "damage",
    [pytest.param(_flip_one_byte, id="flipped-byte"), pytest.param(_truncate, id="truncated")],
)
def test_changed_payload_is_refused_before_parsing(
    art: Path, no_parsing: None, damage, name: str
) -> None:
    expected = read_manifest(art)["payload"]["files"][name]["sha256"]
    damage(art / name)
    with pytest.raises(ArtifactError) as info:
        load_router(art)
    msg = str(info.value)
    assert msg.startswith(f"{art / name}: sha256 {file_sha256(art / name)[:16]}…")
    assert f"does not match the manifest's {expected[:16]}…" in msg
    assert msg.endswith("refusing to load it")


def test_edited_combined_payload_hash_is_refused(art: Path, no_parsing: None) -> None:
    _edit_manifest(art, _set("payload", "sha256", value="0" * 64))
    with pytest.raises(ArtifactError, match="the payload sha256 does not match its files'"):
        load_router(art)


def _set(*keys: str, value: Any):
    def change(m: dict) -> None:
        target = m
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            _set("format_version", value=3),
            "artifact format 3, this promptroute reads format 2; retrain it with "
            "`promptroute train --logs LOGS --out",
            id="format-version",
        ),
        pytest.param(
            _set("format_version", value=None),
            "artifact format None",
            id="format-version-missing",
        ),
        pytest.param(
            _set("feature_version", value="0"),
            f"trained with feature version '0', this promptroute extracts version "
            f"{FEATURE_VERSION!r}; retrain it with `promptroute train",
            id="feature-version",
        ),
        pytest.param(_set("payload", "sha256", value=None), "no payload sha256", id="no-sha"),
        pytest.param(
            _set("payload", "files", VALUES, "sha256", value=1), "no payload sha256", id="bad-sha"
        ),
        pytest.param(_set("payload", "files", value={}), "no payload sha256", id="no-files"),
        pytest.param(_set("payload", value="router.npz"), "no payload sha256", id="payload-str"),
    ],
)
def test_incompatible_manifest_is_refused(
    art: Path, no_parsing: None, change, message: str
) -> None:
    _edit_manifest(art, change)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        load_router(art)
    with pytest.raises(ArtifactError, match=re.escape(message)):
        read_manifest(art)


def test_another_numpy_version_is_accepted(art: Path) -> None:
    # .npy files are numpy's stable on-disk format (no pickled numpy internals), so unlike the
    # old joblib payload an artifact does not depend on the numpy version that wrote it.
    _edit_manifest(art, _set("libraries", "numpy", value="1.26.4"))
    router, m = load_router(art)
    assert m["libraries"]["numpy"] == "1.26.4"
    assert router.models == MODELS


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda a: (a / MANIFEST).unlink(), "missing manifest", id="no-manifest"),
        pytest.param(lambda a: (a / VALUES).unlink(), "missing payload file", id="no-values"),
        pytest.param(lambda a: (a / ARRAYS).unlink(), "missing payload file", id="no-arrays"),
        pytest.param(
            lambda a: (a / MANIFEST).write_text("{not json"), "unreadable manifest", id="bad-json"
        ),
        pytest.param(
            lambda a: (a / MANIFEST).write_text("[1, 2]"),
            "manifest is not a JSON object",
            id="list",
        ),
        pytest.param(
            lambda a: (a / MANIFEST).write_bytes(b"\xff\xfe{}"), "unreadable manifest", id="binary"
        ),
    ],
)
def test_damaged_folder_is_refused(art: Path, no_parsing: None, damage, message: str) -> None:
    damage(art)
    with pytest.raises(ArtifactError, match=message):
        load_router(art)


def test_missing_folder(tmp_path: Path, no_parsing: None) -> None:
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        load_router(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        load_router(tmp_path / "file")


def test_manifest_models_must_match_the_payload(art: Path) -> None:
    _edit_manifest(art, _set("models", value=["large", "small"]))
    with pytest.raises(ArtifactError, match="payload models differ from the manifest's"):
        load_router(art)


def _rehash(art: Path) -> None:
    """Make the manifest vouch for the payload files as they now are (what a forger does)."""

    def change(m: dict) -> None:
        files = m["payload"]["files"]
        for name in files:
            files[name] = {"sha256": file_sha256(art / name), "bytes": (art / name).stat().st_size}
        lines = "".join(f"{n} {files[n]['sha256']}\n" for n in sorted(files))
        m["payload"]["sha256"] = hashlib.sha256(lines.encode()).hexdigest()

    _edit_manifest(art, change)


def _write_payload(art: Path, tree: Any) -> None:
    values, arrays = payload_mod.encode(tree)
    (art / VALUES).write_bytes(values)
    (art / ARRAYS).write_bytes(arrays)
    _rehash(art)


def test_verified_payload_of_another_shape_is_an_artifact_error(art: Path) -> None:
    _write_payload(art, {"models": ["small", "large"]})
    with pytest.raises(ArtifactError, match=r"payload does not match this promptroute \(KeyError"):
        load_router(art)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        pytest.param(
            lambda t: t["heads"]["quality"].update(kind="exec"),
            "head kind 'exec'; known: sigmoid, softmax",
            id="head-kind",
        ),
        pytest.param(
            lambda t: t["featurizer_params"].update(__class__="os.system"),
            "TypeError",
            id="featurizer-extra-param",
        ),
        pytest.param(
            lambda t: t["featurizer_params"].update(n_hash_features=10**12),
            "n_hash_features",
            id="featurizer-huge",
        ),
        pytest.param(
            lambda t: t.update(input_price=np.zeros(3)),
            "input_price does not have one value per model",
            id="price-shape",
        ),
        pytest.param(
            lambda t: t["heads"]["quality"].update(bias=np.zeros(5)),
            "head 'quality' does not fit the features",
            id="bias-shape",
        ),
    ],
)
def test_hostile_payload_values_are_refused(art: Path, edit, message: str) -> None:
    tree = _router().to_payload()
    edit(tree)
    _write_payload(art, tree)
    _edit_manifest(art, _set("models", value=list(MODELS)))
    with pytest.raises(ArtifactError, match=re.escape(message)):
        load_router(art)


# --------------------------------------------------------------------------- atomic writes
def test_overwrite_replaces_the_artifact(tmp_path: Path) -> None:
    path = tmp_path / "art"
    _save(_router(seed=0), path)
    first = read_manifest(path)["payload"]["sha256"]
    new = _router(seed=1)
    _save(new, path)
    loaded, m = load_router(path)
    assert m["payload"]["sha256"] != first
    for s, v in _scores(new).items():
        np.testing.assert_array_equal(_scores(loaded)[s], v)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]  # no temporary or .old folder left


def test_crash_while_saving_keeps_the_old_artifact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "art"
    old = _router(seed=0)
    _save(old, path)
    real_write = Path.write_bytes

    def write_then_die(self: Path, data: bytes) -> int:
        if self.name != ARRAYS:
            return real_write(self, data)
        real_write(self, data[:100])  # half-written
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", write_then_die)
    with pytest.raises(OSError, match="disk full"):
        _save(_router(seed=1), path)
    loaded, _ = load_router(path)
    for s, v in _scores(old).items():
        np.testing.assert_array_equal(_scores(loaded)[s], v)
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_save_creates_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "art"
    _save(_router(), path)
    assert load_router(path)[0].models == MODELS


def test_saved_folder_follows_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "art"
    _save(_router(), path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask


def test_copied_artifact_loads(art: Path, tmp_path: Path) -> None:
    # Nothing in an artifact depends on where it was written.
    shutil.copytree(art, tmp_path / "elsewhere")
    assert load_router(tmp_path / "elsewhere")[0].models == MODELS


# ---------------------------------------------------------------------------------------------
# Artifacts trained with featurizer or training defaults that have since changed


def _edited(src: Path, dst: Path, name: str, section: str, key: str, value: Any) -> Path:
    """A copy of artifact `src` at `dst` whose JSON file `name` has `[section][key] = value`."""
    shutil.copytree(src, dst)
    doc = json.loads((dst / name).read_text())
    doc[section][key] = value
    (dst / name).write_text(json.dumps(doc))
    return dst


def _with_window(src: Path, dst: Path, window: Any) -> Path:
    return _edited(src, dst, VALUES, "featurizer_params", "max_scan_chars", window)


def _with_options(src: Path, dst: Path, options: Any) -> Path:
    return _edited(src, dst, MANIFEST, "training", "options", options)


def _current_options() -> dict[str, Any]:
    from dataclasses import asdict

    from training.trainer import TrainOptions

    return json.loads(json.dumps(asdict(TrainOptions())))


def test_featurizer_changes_names_the_settings_that_are_no_longer_defaults(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    from training.build import featurizer_changes

    # The tiny artifact's 4,096 hash columns are a training option, not a changed default.
    assert featurizer_changes(tiny_artifact) == {}
    old = _with_window(tiny_artifact, tmp_path / "old", 16384)
    assert featurizer_changes(old) == {"max_scan_chars": 16384}
    (old / VALUES).write_text("{")
    with pytest.raises(ArtifactError, match="cannot read the featurizer settings"):
        featurizer_changes(old)


@pytest.mark.parametrize(
    ("current", "stale", "changed"),
    [
        pytest.param(
            lambda art, dst: art,
            lambda art, dst: _with_window(art, dst, 16384),
            "{'max_scan_chars': 16384}",
            id="featurizer",
        ),
        pytest.param(
            lambda art, dst: _with_options(art, dst, _current_options()),
            lambda art, dst: _with_options(
                art, dst, {**_current_options(), "calibrate_per_model": False}
            ),
            "{'calibrate_per_model': False}",
            id="training-options",
        ),
    ],
)
def test_the_default_model_is_retrained_when_its_defaults_changed(
    tiny_artifact: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    current: Any,
    stale: Any,
    changed: str,
) -> None:
    import training.build as build

    trained: list[Path] = []
    monkeypatch.setattr(build, "train_and_save", lambda logs, out, **kw: trained.append(out))
    said: list[str] = []
    now = current(tiny_artifact, tmp_path / "now")
    assert build.ensure_default_artifact(now, progress=said.append) == now
    assert trained == [] and said == []
    old = stale(tiny_artifact, tmp_path / "old")
    assert build.ensure_default_artifact(old, progress=said.append) == old
    assert trained == [old]
    assert f"no longer the defaults: {changed}" in said[0]


def test_option_changes_names_the_training_options_that_are_no_longer_defaults(
    tiny_artifact: Path, tmp_path: Path
) -> None:
    from training.build import option_changes, stale_defaults

    # A manifest without options (the tiny artifact's) cannot tell: nothing to compare.
    assert option_changes(tiny_artifact) == {}
    now = {**_current_options(), "n_jobs": 1}
    assert option_changes(_with_options(tiny_artifact, tmp_path / "now", now)) == {}
    older = {k: v for k, v in now.items() if k != "calibrate_per_model"}
    old = _with_options(tiny_artifact, tmp_path / "old", older)
    assert option_changes(old) == {"calibrate_per_model": None}  # predates the option
    off = _with_options(tiny_artifact, tmp_path / "off", {**now, "calibrate_per_model": False})
    assert option_changes(off) == {"calibrate_per_model": False}
    both = _with_window(off, tmp_path / "both", 16384)
    assert stale_defaults(both) == {"max_scan_chars": 16384, "calibrate_per_model": False}
