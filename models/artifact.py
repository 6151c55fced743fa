"""Save and load trained routers as a folder you can inspect before you trust it.

    ARTIFACT/
      manifest.json    format and feature versions, models, catalog snapshot, training-data
                       sha256 and counts, CV metrics, library versions, payload file sha256s
      router.json      the router's plain values; each array is a reference {"__ndarray__": …}
      router.npz       the arrays (a zip of .npy files, read with allow_pickle=False)
      signature.json   optional: HMAC-SHA256 over the manifest and payload (`sign_artifact`)

Nothing in an artifact is code: the payload is JSON and raw numeric arrays (`models.payload`),
so loading a hostile artifact can fail but cannot run anything. `load_router` reads the whole
payload into memory once, checks those bytes against the manifest's sha256s and parses the same
bytes (no window for the files to change in between). When an artifact key is configured
(`PROMPTROUTE_ARTIFACT_KEY`, kept outside the artifact folder) only artifacts signed with it load:
the manifest's hashes prove the files match each other, the signature proves who wrote them.
Writing goes to a temporary folder that is renamed into place, so a crash never leaves a
half-written artifact under the real name. Format 1 (a pickled ``router.joblib``) is refused
with a "retrain" message and never unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from features.extractor import FEATURE_VERSION
from models import payload as _payload
from models.errors import (
    ArtifactError,
    ArtifactLocationError,
    ArtifactSignatureError,
    ConfigError,
    OldArtifactFormatError,
)
from models.router import Router

__all__ = [
    "ARRAYS",
    "FORMAT_VERSION",
    "KEY_ENV",
    "MANIFEST",
    "MIN_KEY_CHARS",
    "SIGNATURE",
    "VALUES",
    "artifact_key",
    "file_sha256",
    "load_router",
    "read_manifest",
    "resolve_artifact",
    "save_router",
    "sign_artifact",
]

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
VALUES = "router.json"
ARRAYS = "router.npz"
SIGNATURE = "signature.json"
KEY_ENV = "PROMPTROUTE_ARTIFACT_KEY"
MIN_KEY_CHARS = 16
_PAYLOAD_FILES = (VALUES, ARRAYS)
_OLD_PAYLOAD = "router.joblib"  # format 1: a pickle, which this module never opens
_SIGNED_CONTEXT = b"promptroute-artifact-signature-v1\n"
_CHUNK = 1 << 20
_RETRAIN = "retrain it with `promptroute train --logs LOGS --out {folder}`"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The artifact signing key from `PROMPTROUTE_ARTIFACT_KEY` (None when unset or empty).

    Raises ConfigError for a key shorter than `MIN_KEY_CHARS`: a short HMAC key can be guessed
    offline from any signed artifact.
    """
    env = os.environ if environ is None else environ
    key = env.get(KEY_ENV) or None
    if key is None:
        return None
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(
            KEY_ENV,
            f"the key is {len(key)} characters; use at least {MIN_KEY_CHARS} "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)",
        )
    return key.encode("utf-8")


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("promptroute")
    except PackageNotFoundError:
        own = "unknown"
    return {"promptroute": own, "python": platform.python_version(), "numpy": np.__version__}


def _combined_digest(files: Mapping[str, str]) -> str:
    """One sha256 naming the whole payload: over "NAME SHA256" lines in name order."""
    return _sha256("".join(f"{name} {files[name]}\n" for name in sorted(files)).encode())


def _signature(key: bytes, manifest_bytes: bytes, files: Mapping[str, str]) -> str:
    # The manifest's exact bytes plus every payload file's hash: a change to any file, or to any
    # manifest field (even whitespace), changes the message.
    message = _SIGNED_CONTEXT + _sha256(manifest_bytes).encode() + b"\n"
    message += "".join(f"{name} {files[name]}\n" for name in sorted(files)).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _signature_document(signature: str) -> bytes:
    return (
        json.dumps({"algorithm": "hmac-sha256", "signature": signature}, indent=2) + "\n"
    ).encode()


def save_router(
    router: Router,
    path: str | Path,
    *,
    catalog: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write `router` to the folder `path` (replaced atomically if it exists); return the manifest.

    Signed with the key in `environ` (default ``os.environ``) when `KEY_ENV` is set there.
    """
    key = artifact_key(environ)
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Deflated: as small as the old joblib payload, and still faster to load (bench/artifact_io.py).
    values, arrays = _payload.encode(router.to_payload(), compress=True)
    files = {VALUES: _sha256(values), ARRAYS: _sha256(arrays)}
    digest = _combined_digest(files)
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
        "payload": {
            "sha256": digest,
            "files": {
                VALUES: {"sha256": files[VALUES], "bytes": len(values)},
                ARRAYS: {"sha256": files[ARRAYS], "bytes": len(arrays)},
            },
        },
    }
    manifest_bytes = (
        json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    ).encode()
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the artifact is read by the service user
    try:
        (tmp / VALUES).write_bytes(values)
        (tmp / ARRAYS).write_bytes(arrays)
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        if key is not None:
            (tmp / SIGNATURE).write_bytes(
                _signature_document(_signature(key, manifest_bytes, files))
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


def _old_format(folder: Path, fmt: object) -> OldArtifactFormatError:
    return OldArtifactFormatError(
        str(folder),
        fmt,
        f"{folder}: this artifact uses the old format {fmt} (a pickled {_OLD_PAYLOAD}, which "
        f"promptroute no longer opens); {_RETRAIN.format(folder=folder)}",
    )


def _read_manifest_bytes(folder: Path) -> tuple[dict[str, Any], bytes]:
    mpath = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(
            f"{folder}: not an artifact folder (expected a directory with {MANIFEST}, "
            f"{VALUES} and {ARRAYS})"
        )
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        if (folder / _OLD_PAYLOAD).exists():
            raise _old_format(folder, 1) from None
        raise ArtifactError(f"{mpath}: missing manifest") from None
    except OSError as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    fmt = manifest.get("format_version")
    if fmt == 1:
        raise _old_format(folder, fmt)
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{folder}: artifact format {fmt!r}, this promptroute reads format {FORMAT_VERSION}; "
            f"{_RETRAIN.format(folder=folder)}"
        )
    feat = manifest.get("feature_version")
    if feat != FEATURE_VERSION:
        raise ArtifactError(
            f"{folder}: trained with feature version {feat!r}, this promptroute extracts version "
            f"{FEATURE_VERSION!r}; {_RETRAIN.format(folder=folder)}"
        )
    payload = manifest.get("payload")
    files = payload.get("files") if isinstance(payload, dict) else None
    if (
        not isinstance(files, dict)
        or set(files) != set(_PAYLOAD_FILES)
        or not all(isinstance(f, dict) and isinstance(f.get("sha256"), str) for f in files.values())
        or not isinstance(payload.get("sha256"), str)
    ):
        raise ArtifactError(f"{mpath}: manifest has no payload sha256 for {VALUES} and {ARRAYS}")
    return manifest, raw


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the artifact folder `path`, checked for format and versions.

    Reads only ``manifest.json``: the payload's hashes and the signature are checked by
    `load_router`, so what this returns is a claim, not a verified fact.
    """
    return _read_manifest_bytes(Path(path))[0]


def _read_payload(
    folder: Path, manifest: Mapping[str, Any]
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Each payload file's bytes, checked against the manifest; also their sha256s."""
    data: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    for name in _PAYLOAD_FILES:
        fpath = folder / name
        try:
            data[name] = fpath.read_bytes()
        except FileNotFoundError:
            raise ArtifactError(f"{fpath}: missing payload file") from None
        except OSError as exc:
            raise ArtifactError(f"{fpath}: unreadable payload file ({exc})") from None
        digests[name] = _sha256(data[name])
        expected = manifest["payload"]["files"][name]["sha256"]
        if digests[name] != expected:
            raise ArtifactError(
                f"{fpath}: sha256 {digests[name][:16]}… does not match the manifest's "
                f"{expected[:16]}…; the file was changed or truncated — refusing to load it"
            )
    if _combined_digest(digests) != manifest["payload"]["sha256"]:
        raise ArtifactError(
            f"{folder / MANIFEST}: the payload sha256 does not match its files' — refusing to load it"
        )
    return data, digests


def _check_signature(
    folder: Path, key: bytes, manifest_bytes: bytes, digests: Mapping[str, str]
) -> None:
    spath = folder / SIGNATURE
    hint = f"sign it with `promptroute sign {folder}` (with the key in {KEY_ENV})"
    try:
        document = json.loads(spath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactSignatureError(
            f"{folder}: unsigned artifact, and {KEY_ENV} is set, so only artifacts signed with "
            f"that key load; {hint}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactSignatureError(f"{spath}: unreadable signature ({exc})") from None
    claimed = document.get("signature") if isinstance(document, dict) else None
    if not isinstance(document, dict) or document.get("algorithm") != "hmac-sha256":
        raise ArtifactSignatureError(f"{spath}: not an hmac-sha256 signature; {hint}")
    expected = _signature(key, manifest_bytes, digests)
    if not isinstance(claimed, str) or not hmac.compare_digest(claimed, expected):
        raise ArtifactSignatureError(
            f"{folder}: the signature does not match (signed with another key, or changed after "
            f"signing) — refusing to load it; {hint} if you trust its contents"
        )


def _check_shapes(folder: Path, router: Router) -> None:
    k = len(router.models)
    width = router.n_dense + int(router.featurizer.n_hash_features)
    for name in ("input_price", "output_price", "output_tokens"):
        if getattr(router, name).shape != (k,):
            raise ArtifactError(f"{folder}: {name} does not have one value per model")
    for name, head in router.heads.items():
        if (
            head.dense_w.shape != (router.n_dense, k)
            or head.hashed_w.shape != (width - router.n_dense, k)
            or head.bias.shape != (k,)
        ):
            raise ArtifactError(
                f"{folder}: head {name!r} does not fit the features of this promptroute; "
                f"{_RETRAIN.format(folder=folder)}"
            )


def load_router(
    path: str | Path, *, environ: Mapping[str, str] | None = None
) -> tuple[Router, dict[str, Any]]:
    """Verify and load an artifact folder; returns the router and its manifest.

    With `KEY_ENV` set in `environ` (default ``os.environ``), the artifact must carry a valid
    signature made with that key (`ArtifactSignatureError` otherwise).
    """
    key = artifact_key(environ)
    folder = Path(path)
    manifest, manifest_bytes = _read_manifest_bytes(folder)
    data, digests = _read_payload(folder, manifest)
    if key is not None:
        _check_signature(folder, key, manifest_bytes, digests)
    try:
        tree = _payload.decode(data[VALUES], data[ARRAYS])
        router = Router.from_payload(tree, version=str(manifest.get("router_version", "")))
    except Exception as exc:  # a verified payload that still does not fit this code
        raise ArtifactError(
            f"{folder}: payload does not match this promptroute ({type(exc).__name__}: {exc})"
        ) from None
    _check_shapes(folder, router)
    if list(router.models) != list(manifest.get("models", [])):
        raise ArtifactError(f"{folder}: payload models differ from the manifest's")
    return router, manifest


def sign_artifact(path: str | Path, key: bytes) -> str:
    """Sign the artifact folder `path` with `key` (its files verified first); returns the signature.

    The signature file is written to a temporary name and renamed, so a reader sees the old
    signature or the new one.
    """
    folder = Path(path)
    manifest, manifest_bytes = _read_manifest_bytes(folder)
    _, digests = _read_payload(folder, manifest)
    signature = _signature(key, manifest_bytes, digests)
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_signature_document(signature))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, folder / SIGNATURE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return signature


def _shown(value: str) -> str:
    # Quoted short and escaped: the value may be a caller's, and error bodies must not echo
    # kilobytes or control characters back.
    return repr(value if len(value) <= 80 else value[:77] + "...")


def resolve_artifact(artifacts_dir: str | Path, name_or_path: str) -> Path:
    """The artifact folder `name_or_path` names inside `artifacts_dir`, resolved.

    A relative value is taken inside `artifacts_dir` (``"v2"``, ``"team/v2"``); an absolute one
    must lie inside it. Both are resolved (symlinks, ``..``) before the check, so neither a
    symlink nor ``../`` leads out. Raises `ArtifactLocationError` otherwise, listing the
    artifacts the directory holds.
    """
    root_given = Path(artifacts_dir)
    try:
        root = root_given.resolve(strict=True)
        target = (root / name_or_path).resolve()  # an absolute value replaces `root`
    except (OSError, ValueError, RuntimeError) as exc:  # missing dir, NUL byte, symlink loop
        raise ArtifactLocationError(
            name_or_path,
            str(root_given),
            f"artifact: {_shown(name_or_path)} cannot be resolved inside the artifacts directory "
            f"{root_given} ({type(exc).__name__})",
        ) from None
    if target == root or not target.is_relative_to(root):
        try:
            known = sorted(
                p.name
                for p in root.iterdir()
                if (p / MANIFEST).is_file() and p.resolve().is_relative_to(root)
            )
        except OSError:
            known = []
        choices = ", ".join(known[:20]) + (" …" if len(known) > 20 else "") or "none"
        raise ArtifactLocationError(
            name_or_path,
            str(root),
            f"artifact: {_shown(name_or_path)} is not inside the artifacts directory {root}; "
            f"name one of its artifacts (known: {choices})",
        )
    return target
