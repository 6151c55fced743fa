"""Damaged or incompatible artifacts are refused at start-up and by /admin/reload.

`tests/test_artifact.py` checks `load_router` refuses each kind of damage before unpickling, and
`tests/test_serving_ops.py` reloads a byte-flipped and a missing artifact. This takes the other
kinds through the service: a truncated payload, an edited manifest hash, wrong format or feature
versions, an unreadable manifest, and payloads that would run code if unpickled (an old-format
pickle, a pickle in place of the arrays, each with a manifest that vouches for it).
Each reload is a 422 naming the reason while the old model keeps serving, even under traffic;
each start-up is exit 2 with the reason, before uvicorn runs.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import uvicorn
from fakes import TestClient

from models.artifact import ARRAYS, MANIFEST, file_sha256
from serving import create_app, load_settings, serve

KEY = "refusal-admin-key"
ADMIN = {"X-API-Key": KEY}


class _RunsCode:
    """Unpickling this creates the file `path`: proof that a payload was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _edit_manifest(art: Path, change: Callable[[dict], None]) -> None:
    manifest = json.loads((art / MANIFEST).read_text())
    change(manifest)
    (art / MANIFEST).write_text(json.dumps(manifest))


def _truncate(art: Path) -> None:
    data = (art / ARRAYS).read_bytes()
    (art / ARRAYS).write_bytes(data[: len(data) // 2])


def _hash_edited(art: Path) -> None:
    _edit_manifest(art, lambda m: m["payload"]["files"][ARRAYS].update(sha256="0" * 64))


def _format(art: Path) -> None:
    _edit_manifest(art, lambda m: m.update(format_version=99))


def _features(art: Path) -> None:
    _edit_manifest(art, lambda m: m.update(feature_version="0"))


def _manifest_cut(art: Path) -> None:
    text = (art / MANIFEST).read_text()
    (art / MANIFEST).write_text(text[: len(text) // 2])


def _manifest_gone(art: Path) -> None:
    (art / MANIFEST).unlink()


def _code_in_payload(art: Path) -> None:
    (art / ARRAYS).write_bytes(pickle.dumps(_RunsCode(art.parent / "pwned")))


def _vouch(art: Path, **fields) -> None:
    """Recompute the manifest's hashes for the files as they now are (what a forger does)."""
    files = {ARRAYS: file_sha256(art / ARRAYS), "router.json": file_sha256(art / "router.json")}
    lines = "".join(f"{n} {files[n]}\n" for n in sorted(files))

    def change(manifest: dict) -> None:
        for name, digest in files.items():
            manifest["payload"]["files"][name]["sha256"] = digest
        manifest["payload"]["sha256"] = hashlib.sha256(lines.encode()).hexdigest()
        manifest.update(fields)

    _edit_manifest(art, change)


def _code_with_matching_hash(art: Path) -> None:
    _code_in_payload(art)
    _vouch(art)


def _code_with_matching_hash_but_old_features(art: Path) -> None:
    # The manifest is checked first: old features are refused before the payload is read.
    _code_in_payload(art)
    _vouch(art, feature_version="0")


def _negative_column_weights(art: Path) -> None:
    # A forged payload that parses: the n-gram weights a crafted artifact could use to turn
    # every row's norm into a division by zero or a sign flip. They are checked on load.
    from models.payload import decode, encode

    tree = decode((art / "router.json").read_bytes(), (art / ARRAYS).read_bytes())
    assert tree["column_weights"] is not None  # tiny_artifact is trained with idf weights
    tree["column_weights"] = -tree["column_weights"]
    values, arrays = encode(tree)
    (art / "router.json").write_bytes(values)
    (art / ARRAYS).write_bytes(arrays)
    _vouch(art)


def _old_format_pickle(art: Path) -> None:
    # A format-1 artifact as issue 11 built it: router.joblib runs a command when unpickled,
    # and the manifest's sha256 is recomputed to match.
    for name in (ARRAYS, "router.json", MANIFEST):
        (art / name).unlink()
    (art / "router.joblib").write_bytes(pickle.dumps(_RunsCode(art.parent / "pwned")))
    manifest = {
        "format_version": 1,
        "payload": {"file": "router.joblib", "sha256": file_sha256(art / "router.joblib")},
    }
    (art / MANIFEST).write_text(json.dumps(manifest))


DAMAGE = [
    pytest.param(
        _truncate, "the file was changed or truncated — refusing to load it", id="truncated"
    ),
    pytest.param(_hash_edited, "does not match the manifest's 0000000000000000…", id="hash-edited"),
    pytest.param(
        _format, "artifact format 99, this promptroute reads format 2; retrain it", id="format"
    ),
    pytest.param(_features, "trained with feature version '0'", id="feature-version"),
    pytest.param(_manifest_cut, "unreadable manifest", id="manifest-cut"),
    pytest.param(_manifest_gone, "missing manifest", id="manifest-missing"),
    pytest.param(_code_in_payload, "refusing to load it", id="code-in-payload"),
    pytest.param(_code_with_matching_hash, "arrays: not an npz archive", id="code-vouched-for"),
    pytest.param(
        _negative_column_weights,
        "column_weights: every weight must be finite and > 0",
        id="negative-column-weights",
    ),
    pytest.param(
        _old_format_pickle,
        "this artifact uses the old format 1 (a pickled router.joblib, which promptroute no "
        "longer opens); retrain it with `promptroute train --logs LOGS --out",
        id="old-format-pickle",
    ),
    pytest.param(
        _code_with_matching_hash_but_old_features,
        "trained with feature version '0'",
        id="code-with-matching-hash",
    ),
]


@pytest.fixture
def damaged(tiny_artifact, tmp_path) -> Callable[[Callable[[Path], None]], Path]:
    def make(damage: Callable[[Path], None]) -> Path:
        art = tmp_path / "models" / "bad"
        shutil.copytree(tiny_artifact, art)
        damage(art)
        return art

    return make


@pytest.fixture
def admin(tiny_artifact, catalog_path, tmp_path):
    config = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        artifacts_dir=str(tmp_path / "models"),
    )
    with TestClient(create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": KEY})) as client:
        yield client


@pytest.mark.parametrize(("damage", "reason"), DAMAGE)
def test_reload_refuses_and_the_old_model_serves_on(admin, damaged, damage, reason):
    art = damaged(damage)
    state = admin.app.state.service
    before, version = state.models.current, state.models.current.version
    response = admin.post("/admin/reload", json={"artifact": str(art)}, headers=ADMIN)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("reload_failed", "artifact")
    assert reason in error["message"]
    assert error["message"].endswith(f"; still serving router {version}")
    assert not (art.parent / "pwned").exists()  # nothing was unpickled
    assert state.models.current is before and state.models.artifact_path != str(art)
    routed = admin.post("/route", json={"prompt": "Is the old model still here?"})
    assert (routed.status_code, routed.json()["router_version"]) == (200, version)
    metrics = admin.get("/metrics").text
    assert 'promptroute_reloads_total{result="failed"} 1.0' in metrics
    # A reload without a body goes back to the configured artifact, not the refused one.
    assert admin.post("/admin/reload", headers=ADMIN).json()["artifact"] == before.path


def test_failing_reloads_under_traffic_never_interrupt_routing(admin, damaged):
    art = damaged(_truncate)
    version = admin.app.state.service.models.current.version
    statuses: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            r = admin.post("/route", json={"prompt": "Write a limerick about cats."})
            statuses.append((r.status_code, r.json().get("router_version")))

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        for _ in range(20):
            response = admin.post("/admin/reload", json={"artifact": str(art)}, headers=ADMIN)
            assert response.status_code == 422
    finally:
        stop.set()
        worker.join(timeout=30)
    assert statuses and set(statuses) == {(200, version)}


@pytest.mark.parametrize(("damage", "reason"), DAMAGE)
def test_start_up_refuses_before_serving(damaged, capsys, monkeypatch, tmp_path, damage, reason):
    def refuse(*_args, **_kwargs):
        pytest.fail("serve() started uvicorn with a refused artifact")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    art = damaged(damage)
    log = tmp_path / "decisions.jsonl"
    config = tmp_path / "config.yaml"
    config.write_text(f"decision_log: {{path: {log}}}\n")
    assert serve(config=str(config), model=str(art)) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptroute: error: ") and reason in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (art.parent / "pwned").exists()
    assert not log.exists()
