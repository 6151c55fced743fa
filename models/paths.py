"""Where the packaged catalog and the default model live.

The catalog ships inside this package (``models/catalog.yaml``). The default model is trained
into ``models/artifacts/default`` of the checkout on first use. ``PROMPTROUTE_HOME`` points both
elsewhere (a deployment folder with its own ``models/catalog.yaml`` and ``models/artifacts/``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["catalog_path", "default_artifact_path", "project_root"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    """PROMPTROUTE_HOME if set, else the folder that holds this package."""
    env = os.environ.get("PROMPTROUTE_HOME")
    if env:
        return Path(env)
    return _PACKAGE_DIR.parent


def catalog_path() -> Path:
    """PROMPTROUTE_HOME's ``models/catalog.yaml`` when it has one, else the packaged catalog."""
    env = os.environ.get("PROMPTROUTE_HOME")
    if env and (Path(env) / "models" / "catalog.yaml").is_file():
        return Path(env) / "models" / "catalog.yaml"
    return _PACKAGE_DIR / "catalog.yaml"


def default_artifact_path() -> Path:
    return project_root() / "models" / "artifacts" / "default"
