"""Save and load trained routers as a folder you can inspect before you trust it.

    ARTIFACT/
      manifest.json   format and feature versions, models, catalog snapshot, training-data
                      sha256 and counts, CV metrics, library versions, payload sha256
      router.joblib   the payload: numpy arrays and plain values only (no estimator objects)

A joblib file is a pickle, so `load_router` reads the manifest first, checks the format and
feature versions and the numpy major version, and verifies the payload's sha256 before it
unpickles anything. Writing goes to temporary names that are renamed into place, so a crash
never leaves a half-written artifact under the real name.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from features.extractor import FEATURE_VERSION, PromptFeaturizer
from models.errors import ArtifactError
from models.router import LinearHead, Router
from models.verifier import Verifier

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "PAYLOAD",
    "file_sha256",
    "load_router",
    "read_manifest",
    "save_router",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PAYLOAD = "router.joblib"
_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("promptroute")
    except PackageNotFoundError:
        own = "unknown"
    return {
        "promptroute": own,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "joblib": joblib.__version__,
    }


def save_router(
    router: Router,
    path: str | Path,
    *,
    catalog: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Write `router` to the folder `path` (replaced atomically if it exists); return the manifest."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "models": list(router.models),
        "featurizer_params": router.featurizer.get_params(),
        "heads": {name: head.to_payload() for name, head in router.heads.items()},
        "input_price": router.input_price,
        "output_price": router.output_price,
        "output_tokens": router.output_tokens,
        "cost_ref": float(router.cost_ref),
        "default_strategy": router.default_strategy,
        "default_knob": float(router.default_knob),
    }
    if router.verifiers:
        payload["verifiers"] = {m: v.to_payload() for m, v in router.verifiers.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the artifact is read by the service user
    try:
        joblib.dump(payload, tmp / PAYLOAD, compress=3)
        digest = file_sha256(tmp / PAYLOAD)
        manifest = {
            "format_version": FORMAT_VERSION,
            "feature_version": FEATURE_VERSION,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "router_version": f"{FORMAT_VERSION}.{FEATURE_VERSION}.{digest[:12]}",
            "models": list(router.models),
            "default_strategy": router.default_strategy,
            "default_knob": float(router.default_knob),
            "strategies": sorted(router.heads),
            "verifiers": {m: v.report for m, v in router.verifiers.items()},
            "catalog": catalog,
            "training": training,
            "metrics": metrics,
            "libraries": _library_versions(),
            "payload": {"file": PAYLOAD, "sha256": digest, "bytes": (tmp / PAYLOAD).stat().st_size},
        }
        (tmp / MANIFEST).write_text(
            json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
        )
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact folder `path`, checked for format and versions (no unpickling)."""
    folder = Path(path)
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(
            f"{folder}: not an artifact folder (expected a directory with {MANIFEST} and {PAYLOAD})"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{mpath}: missing manifest") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    fmt = manifest.get("format_version")
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder}: artifact format {fmt!r}, this promptroute reads format {FORMAT_VERSION}; retrain it"
        )
    feat = manifest.get("feature_version")
    if feat != FEATURE_VERSION:
        raise ArtifactError(
            f"{folder}: trained with feature version {feat!r}, this promptroute extracts version "
            f"{FEATURE_VERSION!r}; retrain it with `promptroute train`"
        )
    libs = manifest.get("libraries") or {}
    saved_np = str(libs.get("numpy", "")).split(".")[0]
    if saved_np != np.__version__.split(".")[0]:
        raise ArtifactError(
            f"{folder}: saved with numpy {libs.get('numpy')!r}, running numpy {np.__version__}; "
            "numpy major versions differ, retrain it"
        )
    payload = manifest.get("payload")
    if not isinstance(payload, dict) or not isinstance(payload.get("sha256"), str):
        raise ArtifactError(f"{mpath}: manifest has no payload sha256")
    return manifest


def load_router(path: str | Path) -> tuple[Router, dict[str, Any]]:
    """Verify and load an artifact folder; returns the router and its manifest."""
    folder = Path(path)
    manifest = read_manifest(folder)
    ppath = folder / PAYLOAD
    if not ppath.is_file():
        raise ArtifactError(f"{ppath}: missing payload")
    digest = file_sha256(ppath)
    if digest != manifest["payload"]["sha256"]:
        raise ArtifactError(
            f"{ppath}: sha256 {digest[:16]}… does not match the manifest's "
            f"{manifest['payload']['sha256'][:16]}…; the file was changed or truncated — refusing to load it"
        )
    try:
        data = joblib.load(ppath)  # safe: the bytes are exactly the ones this code wrote
        featurizer = PromptFeaturizer(**data["featurizer_params"]).fit([])
        router = Router(
            models=tuple(data["models"]),
            featurizer=featurizer,
            heads={k: LinearHead.from_payload(v) for k, v in data["heads"].items()},
            input_price=np.asarray(data["input_price"], dtype=np.float64),
            output_price=np.asarray(data["output_price"], dtype=np.float64),
            output_tokens=np.asarray(data["output_tokens"], dtype=np.float64),
            cost_ref=float(data["cost_ref"]),
            default_strategy=str(data["default_strategy"]),
            default_knob=float(data["default_knob"]),
            version=str(manifest.get("router_version", "")),
            verifiers={
                m: Verifier.from_payload(v) for m, v in (data.get("verifiers") or {}).items()
            },
        )
    except ArtifactError:
        raise
    except Exception as exc:  # a verified payload that still does not fit this code
        raise ArtifactError(
            f"{ppath}: payload does not match this promptroute ({type(exc).__name__}: {exc})"
        ) from None
    width = router.n_dense + int(router.featurizer.n_hash_features)
    for name, head in router.heads.items():
        if (
            head.dense_w.shape[0] != router.n_dense
            or head.dense_w.shape[0] + head.hashed_w.shape[0] != width
        ):
            raise ArtifactError(
                f"{folder}: head {name!r} does not fit the features of this promptroute; retrain it"
            )
    if list(router.models) != list(manifest.get("models", [])):
        raise ArtifactError(f"{folder}: payload models differ from the manifest's")
    return router, manifest
