"""What an artifact may make the service do: no code from its files, signatures, where it lives.

The attack from issue 11: a payload whose unpickling runs a command, with the manifest's hashes
recomputed to vouch for it. Each way in (an old-format pickle, a pickle named like the new
files, a pickled array inside the npz) must be refused without unpickling — a marker file the
pickle would create must never appear.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_artifact import CATALOG_SNAPSHOT, METRICS, MODELS, TRAINING, _router

from models import payload as payload_mod
from models.artifact import (
    ARRAYS,
    KEY_ENV,
    MANIFEST,
    SIGNATURE,
    VALUES,
    artifact_key,
    file_sha256,
    load_router,
    read_manifest,
    resolve_artifact,
    save_router,
    sign_artifact,
)
from models.errors import (
    ArtifactError,
    ArtifactLocationError,
    ArtifactSignatureError,
    ConfigError,
    OldArtifactFormatError,
)

KEY = "k" * 32
OTHER_KEY = "o" * 32


class RunsCode:
    """Unpickling this creates the file `path`: proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _save(path: Path, environ: dict[str, str] | None = None) -> dict[str, Any]:
    return save_router(
        _router(),
        path,
        catalog=CATALOG_SNAPSHOT,
        training=TRAINING,
        metrics=METRICS,
        environ=environ or {},
    )


def _edit_manifest(art: Path, change) -> None:
    m = json.loads((art / MANIFEST).read_text())
    change(m)
    (art / MANIFEST).write_text(json.dumps(m))


def _rehash(art: Path) -> None:
    """Make the manifest vouch for whatever the payload files now hold (what a forger does)."""

    def change(m: dict) -> None:
        files = m["payload"]["files"]
        for name in files:
            files[name] = {"sha256": file_sha256(art / name), "bytes": (art / name).stat().st_size}
        lines = "".join(f"{n} {files[n]['sha256']}\n" for n in sorted(files))
        m["payload"]["sha256"] = hashlib.sha256(lines.encode()).hexdigest()

    _edit_manifest(art, change)


@pytest.fixture
def art(tmp_path: Path) -> Path:
    path = tmp_path / "artifacts" / "art"
    _save(path)
    return path


# --------------------------------------------------------------------------- no code from files
def write_old_format_artifact(folder: Path, marker: Path) -> None:
    """A format-1 artifact as an attacker writes it: a pickle with a matching manifest hash."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "router.joblib").write_bytes(pickle.dumps(RunsCode(marker)))
    manifest = {
        "format_version": 1,
        "feature_version": "0",
        "models": list(MODELS),
        "payload": {"file": "router.joblib", "sha256": file_sha256(folder / "router.joblib")},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest))


def test_old_format_artifact_gets_a_retrain_message_not_an_unpickle(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    old = tmp_path / "old"
    write_old_format_artifact(old, marker)
    with pytest.raises(OldArtifactFormatError) as info:
        load_router(old)
    assert str(info.value) == (
        f"{old}: this artifact uses the old format 1 (a pickled router.joblib, which promptroute "
        f"no longer opens); retrain it with `promptroute train --logs LOGS --out {old}`"
    )
    assert (info.value.path, info.value.format_version) == (str(old), 1)
    with pytest.raises(OldArtifactFormatError):
        read_manifest(old)
    (old / MANIFEST).unlink()  # a bare pickle, no manifest: still the old format
    with pytest.raises(OldArtifactFormatError, match="uses the old format 1"):
        load_router(old)
    assert not marker.exists()


def test_old_format_with_a_key_set_still_says_retrain(tmp_path: Path) -> None:
    write_old_format_artifact(tmp_path / "old", tmp_path / "pwned")
    with pytest.raises(OldArtifactFormatError):
        load_router(tmp_path / "old", environ={KEY_ENV: KEY})
    assert not (tmp_path / "pwned").exists()


def _pickle_as_values(art: Path, marker: Path) -> None:
    (art / VALUES).write_bytes(pickle.dumps(RunsCode(marker)))


def _pickle_as_arrays(art: Path, marker: Path) -> None:
    (art / ARRAYS).write_bytes(pickle.dumps(RunsCode(marker)))


def _pickled_array_in_npz(art: Path, marker: Path) -> None:
    # An object array's .npy holds a pickle; numpy only unpickles it with allow_pickle=True.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z, z.open("input_price.npy", "w") as f:
        bomb = np.empty(2, dtype=object)
        bomb[0] = RunsCode(marker)
        np.lib.format.write_array(f, bomb, allow_pickle=True)
    (art / ARRAYS).write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    ("plant", "message"),
    [
        pytest.param(_pickle_as_values, "values: not UTF-8", id="pickle-as-values"),
        pytest.param(_pickle_as_arrays, "arrays: not an npz archive", id="pickle-as-arrays"),
        pytest.param(_pickled_array_in_npz, "Object arrays cannot be loaded", id="object-array"),
    ],
)
def test_pickles_with_vouching_manifest_are_never_unpickled(
    art: Path, tmp_path: Path, plant, message: str
) -> None:
    marker = tmp_path / "pwned"
    plant(art, marker)
    _rehash(art)
    with pytest.raises(ArtifactError, match=message):
        load_router(art)
    assert not marker.exists()


def test_the_loading_code_has_no_pickle_path() -> None:
    # No module of the runtime model imports a pickle loader, and numpy is never told it may
    # unpickle: checked on the syntax tree, so comments and strings do not count.
    import ast

    import models

    loaders = {"pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}
    for path in sorted(Path(models.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                names = {(node.module or "").split(".")[0]}
            else:
                names = set()
            assert not names & loaders, f"{path.name}:{node.lineno} imports {names & loaders}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, path


# --------------------------------------------------------------------------- the generic payload
_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_arrays = st.sampled_from(["<f8", "<f4", "<i8", "|u1", "|b1"]).flatmap(
    lambda dt: st.lists(st.integers(0, 3), max_size=3).map(
        lambda shape: (np.arange(int(np.prod(shape))) % 3).astype(dt).reshape(shape)
    )
)
_trees = st.recursive(
    st.one_of(_json_leaf, _arrays),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.text(max_size=6).filter(lambda k: k != "__ndarray__"), children, max_size=4
        ),
    ),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(_trees, st.booleans())
def test_any_tree_of_arrays_and_json_values_round_trips(tree: Any, compress: bool) -> None:
    values, arrays = payload_mod.encode(tree, compress=compress)
    assert _same(tree, payload_mod.decode(values, arrays))
    assert payload_mod.encode(tree, compress=compress) == (values, arrays)  # deterministic


@pytest.mark.parametrize(
    ("tree", "error", "message"),
    [
        pytest.param({"a": {1, 2}}, TypeError, "/a: set is not", id="set"),
        pytest.param({"a": [object()]}, TypeError, "/a/0: object is not", id="object"),
        pytest.param({"a": np.array(["x"])}, TypeError, "/a: arrays of dtype <U1", id="str-array"),
        pytest.param({"a": np.array([None])}, TypeError, "dtype object", id="object-array"),
        pytest.param({1: 2}, TypeError, "/: key 1 is not a string", id="int-key"),
        pytest.param({"__ndarray__": 1}, ValueError, "is reserved", id="reserved-key"),
        pytest.param({"x": float("nan")}, ValueError, "/x: nan is not a finite", id="nan"),
    ],
)
def test_encode_refuses_what_it_cannot_store(tree: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        payload_mod.encode(tree)


def _npz(**arrays: np.ndarray) -> bytes:
    return payload_mod.encode(arrays)[1]


@pytest.mark.parametrize(
    ("values", "arrays", "message"),
    [
        pytest.param(b'{"a": NaN}', _npz(), "NaN is not a finite number", id="nan"),
        pytest.param(b"{", _npz(), "values: not JSON", id="bad-json"),
        pytest.param(
            b'{"a": {"__ndarray__": "a", "dtype": "<f8", "shape": [2]}}',
            _npz(b=np.zeros(2)),
            "/a: array 'a' is not in the archive",
            id="missing-array",
        ),
        pytest.param(
            b'{"a": {"__ndarray__": "a", "dtype": "<f8", "shape": [2]}, '
            b'"b": {"__ndarray__": "a", "dtype": "<f8", "shape": [2]}}',
            _npz(a=np.zeros(2)),
            "/b: array 'a' is referenced twice",
            id="twice",
        ),
        pytest.param(
            b'{"a": {"__ndarray__": "a", "dtype": "<f4", "shape": [2]}}',
            _npz(a=np.zeros(2)),
            "array 'a' is <f8 [2], the reference says <f4 [2]",
            id="dtype",
        ),
        pytest.param(
            b'{"a": {"__ndarray__": "a", "dtype": "<f8", "shape": [3]}}',
            _npz(a=np.zeros(2)),
            "the reference says <f8 [3]",
            id="shape",
        ),
        pytest.param(
            b'{"a": {"__ndarray__": "a"}}',
            _npz(a=np.zeros(2)),
            "malformed array reference",
            id="ref",
        ),
        pytest.param(b"{}", _npz(a=np.zeros(2)), "1 unreferenced array(s): a", id="unreferenced"),
        pytest.param(b"{}", b"PK\x03\x04junk", "arrays: not an npz archive", id="bad-zip"),
    ],
)
def test_decode_refuses_payloads_that_do_not_fit(
    values: bytes, arrays: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        payload_mod.decode(values, arrays)


def test_decode_bounds_the_decompressed_size() -> None:
    # A zip bomb: a few kB that would inflate to far more than the limit.
    values, arrays = payload_mod.encode({"a": np.zeros(1_000_000)}, compress=True)
    assert len(arrays) < 50_000
    with pytest.raises(ValueError, match="over the 1000000 limit"):
        payload_mod.decode(values, arrays, max_array_bytes=1_000_000)
    assert payload_mod.decode(values, arrays, max_array_bytes=9_000_000)["a"].shape == (1_000_000,)


# --------------------------------------------------------------------------- signatures
def test_train_signs_when_the_key_is_set_and_load_verifies(tmp_path: Path) -> None:
    _save(tmp_path / "signed", {KEY_ENV: KEY})
    doc = json.loads((tmp_path / "signed" / SIGNATURE).read_text())
    assert doc["algorithm"] == "hmac-sha256" and len(doc["signature"]) == 64
    assert KEY not in (tmp_path / "signed" / SIGNATURE).read_text()
    router, _ = load_router(tmp_path / "signed", environ={KEY_ENV: KEY})
    assert router.models == MODELS
    # without a key configured, a signature is not required (and not checked)
    assert load_router(tmp_path / "signed", environ={})[0].models == MODELS
    _save(tmp_path / "unsigned", {})
    assert not (tmp_path / "unsigned" / SIGNATURE).exists()


def test_unsigned_artifact_is_refused_when_a_key_is_set(art: Path) -> None:
    with pytest.raises(ArtifactSignatureError) as info:
        load_router(art, environ={KEY_ENV: KEY})
    assert str(info.value) == (
        f"{art}: unsigned artifact, and {KEY_ENV} is set, so only artifacts signed with that key "
        f"load; sign it with `promptroute sign {art}` (with the key in {KEY_ENV})"
    )


def _resave_manifest(art: Path) -> None:
    # The same JSON, written differently: the signature covers the manifest's exact bytes.
    (art / MANIFEST).write_text(json.dumps(json.loads((art / MANIFEST).read_text())))


def _edit_metrics(art: Path) -> None:
    _edit_manifest(art, lambda m: m["metrics"].update(n_records=10**6))


def _forge_payload(art: Path) -> None:
    tree = _router(seed=7).to_payload()
    values, arrays = payload_mod.encode(tree)
    (art / VALUES).write_bytes(values)
    (art / ARRAYS).write_bytes(arrays)
    _rehash(art)


def _other_key(art: Path) -> None:
    sign_artifact(art, OTHER_KEY.encode())


def _garbage_signature(art: Path) -> None:
    (art / SIGNATURE).write_text('{"algorithm": "hmac-sha256", "signature": 5}')


def _copy_signature_from(other: Path):
    def damage(art: Path) -> None:
        (art / SIGNATURE).write_bytes((other / SIGNATURE).read_bytes())

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(_resave_manifest, id="manifest-reformatted"),
        pytest.param(_edit_metrics, id="manifest-field"),
        pytest.param(_forge_payload, id="payload-forged-and-rehashed"),
        pytest.param(_other_key, id="other-key"),
        pytest.param(_garbage_signature, id="signature-not-a-string"),
    ],
)
def test_mis_signed_artifact_is_refused(tmp_path: Path, damage) -> None:
    art = tmp_path / "art"
    _save(art, {KEY_ENV: KEY})
    damage(art)
    with pytest.raises(ArtifactSignatureError) as info:
        load_router(art, environ={KEY_ENV: KEY})
    assert str(info.value).startswith(
        f"{art}: the signature does not match (signed with another key, or changed after "
        "signing) — refusing to load it"
    )


def test_a_signature_does_not_move_to_another_artifact(tmp_path: Path) -> None:
    _save(tmp_path / "a", {KEY_ENV: KEY})
    save_router(
        _router(seed=3),
        tmp_path / "b",
        catalog=CATALOG_SNAPSHOT,
        training=TRAINING,
        metrics=METRICS,
        environ={},
    )
    _copy_signature_from(tmp_path / "a")(tmp_path / "b")
    with pytest.raises(ArtifactSignatureError, match="the signature does not match"):
        load_router(tmp_path / "b", environ={KEY_ENV: KEY})


@pytest.mark.parametrize(
    ("document", "message"),
    [
        pytest.param("{", "unreadable signature", id="bad-json"),
        pytest.param('{"algorithm": "md5", "signature": "ab"}', "not an hmac-sha256", id="md5"),
        pytest.param("[1]", "not an hmac-sha256", id="list"),
    ],
)
def test_unreadable_signature_is_refused(art: Path, document: str, message: str) -> None:
    (art / SIGNATURE).write_text(document)
    with pytest.raises(ArtifactSignatureError, match=message):
        load_router(art, environ={KEY_ENV: KEY})


def test_sign_artifact_signs_an_existing_artifact(art: Path) -> None:
    signature = sign_artifact(art, KEY.encode())
    assert json.loads((art / SIGNATURE).read_text()) == {
        "algorithm": "hmac-sha256",
        "signature": signature,
    }
    assert load_router(art, environ={KEY_ENV: KEY})[0].models == MODELS
    assert sorted(p.name for p in art.iterdir()) == [MANIFEST, VALUES, ARRAYS, SIGNATURE]


def test_sign_artifact_refuses_a_changed_artifact(art: Path) -> None:
    (art / ARRAYS).write_bytes((art / ARRAYS).read_bytes()[:-5])
    with pytest.raises(ArtifactError, match="does not match the manifest's"):
        sign_artifact(art, KEY.encode())
    assert not (art / SIGNATURE).exists()


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param({}, None, id="unset"),
        pytest.param({KEY_ENV: ""}, None, id="empty"),
        pytest.param({KEY_ENV: KEY}, KEY.encode(), id="set"),
    ],
)
def test_artifact_key(environ: dict[str, str], expected: bytes | None) -> None:
    assert artifact_key(environ) == expected


def test_short_key_is_a_config_error(art: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_router(art, environ={KEY_ENV: "short"})
    assert info.value.field == KEY_ENV
    assert "the key is 5 characters; use at least 16" in str(info.value)


def test_key_defaults_to_the_process_environment(
    art: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with pytest.raises(ArtifactSignatureError):
        load_router(art)
    sign_artifact(art, KEY.encode())
    assert load_router(art)[0].models == MODELS


# --------------------------------------------------------------------------- location
@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    for name in ("v1", "v2"):
        _save(root / name)
    (root / "team").mkdir()
    _save(root / "team" / "v3")
    _save(tmp_path / "outside")
    return root


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("v1", "v1", id="name"),
        pytest.param("team/v3", "team/v3", id="relative"),
        pytest.param("team/../v2", "v2", id="dotdot-staying-inside"),
        pytest.param("{root}/v2", "v2", id="absolute-inside"),
        pytest.param("{root}/./team/../v1", "v1", id="absolute-unnormalised"),
    ],
)
def test_resolve_artifact_accepts_names_and_paths_inside(root: Path, value: str, expected: str):
    assert resolve_artifact(root, value.format(root=root)) == (root / expected).resolve()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("../outside", id="dotdot"),
        pytest.param("{tmp}/outside", id="absolute-outside"),
        pytest.param("/etc", id="etc"),
        pytest.param(".", id="the-directory-itself"),
        pytest.param("{root}", id="the-directory-absolute"),
        pytest.param("link-out", id="symlink-out"),
        pytest.param("{root}-evil/x", id="prefix-sibling"),
    ],
)
def test_resolve_artifact_refuses_anything_outside(root: Path, tmp_path: Path, value: str):
    (root / "link-out").symlink_to(tmp_path / "outside")
    value = value.format(root=root, tmp=tmp_path)
    with pytest.raises(ArtifactLocationError) as info:
        resolve_artifact(root, value)
    assert str(info.value) == (
        f"artifact: {value!r} is not inside the artifacts directory {root.resolve()}; "
        "name one of its artifacts (known: v1, v2)"
    )
    assert (info.value.value, info.value.artifacts_dir) == (value, str(root.resolve()))


def test_symlink_inside_to_inside_is_fine(root: Path) -> None:
    (root / "current").symlink_to(root / "v2")
    assert resolve_artifact(root, "current") == (root / "v2").resolve()


@pytest.mark.parametrize(
    "value",
    [pytest.param("bad\x00name", id="nul"), pytest.param("../" + "x" * 5000, id="long")],
)
def test_resolve_artifact_quotes_values_short(root: Path, value: str) -> None:
    with pytest.raises(ArtifactLocationError) as info:
        resolve_artifact(root, value)
    message = str(info.value)
    assert len(message) < 400 and "\x00" not in message


def test_resolve_artifact_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtifactLocationError, match="cannot be resolved inside the artifacts"):
        resolve_artifact(tmp_path / "nope", "v1")


@pytest.fixture(scope="module")
def fixed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resolve") / "artifacts"
    (root / "a").mkdir(parents=True)
    (root / "a" / "up").symlink_to(root.parent)
    return root.resolve()


@settings(max_examples=200, deadline=None)
@given(value=st.text(alphabet="./ab~-_\\\x00", max_size=20))
def test_resolve_artifact_result_is_always_inside(fixed_root: Path, value: str) -> None:
    root = fixed_root
    try:
        target = resolve_artifact(root, value)
    except ArtifactLocationError:
        return
    assert target != root and target.is_relative_to(root)
