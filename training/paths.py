"""Where the bundled catalog, datasets and default model live.

The product runs from a checkout (``pip install -e .``), so these are found next to the
packages; ``PROMPTROUTE_HOME`` points elsewhere (e.g. a deployment folder with its own
``models/`` and ``data/``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["bundled_data", "catalog_path", "default_artifact_path", "project_root"]

_PACKAGE_PARENT = Path(__file__).resolve().parent.parent


def project_root() -> Path:
    """PROMPTROUTE_HOME if set, else the checkout that holds these packages, else the cwd."""
    env = os.environ.get("PROMPTROUTE_HOME")
    if env:
        return Path(env)
    for candidate in (_PACKAGE_PARENT, Path.cwd()):
        if (candidate / "models" / "catalog.yaml").is_file():
            return candidate
    return _PACKAGE_PARENT


def catalog_path() -> Path:
    return project_root() / "models" / "catalog.yaml"


def default_artifact_path() -> Path:
    return project_root() / "models" / "artifacts" / "default"


def bundled_data() -> tuple[Path, ...]:
    data = project_root() / "data"
    return tuple(
        data / f
        for f in ("routellm.jsonl.gz", "routerbench.jsonl.gz", "llmrouter_dcrouter.jsonl.gz")
    )
