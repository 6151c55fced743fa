"""Artifact save and load: format 2 (JSON + npz, no pickle) against format 1 (joblib), one run.

The router comes from the artifact under test. Format 1 is what `models.artifact` did before
issue 11: the same payload tree pickled with ``joblib.dump(..., compress=3)`` next to a JSON
manifest holding its sha256; loading it read the manifest, hashed the file, ``joblib.load``-ed it
and built the router from the tree. That path is rebuilt here (the library no longer has it),
so both formats are measured on the same router, interleaved repeat by repeat, medians kept.
Format 2 is `save_router` / `load_router` themselves.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Target
from models.artifact import file_sha256, load_router, save_router
from models.router import Router

__all__ = ["run"]


def _save_v1(router: Router, folder: Path, manifest: dict[str, Any]) -> None:
    import joblib

    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(router.to_payload(), folder / "router.joblib", compress=3)
    old = dict(manifest, format_version=1)
    old["payload"] = {"file": "router.joblib", "sha256": file_sha256(folder / "router.joblib")}
    (folder / "manifest.json").write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


def _load_v1(folder: Path) -> Router:
    import joblib

    manifest = json.loads((folder / "manifest.json").read_text())
    assert file_sha256(folder / "router.joblib") == manifest["payload"]["sha256"]
    data = joblib.load(folder / "router.joblib")  # our own file, written just above
    return Router.from_payload(data, version="v1")


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def run(artifact: str | Path, *, repeats: int = 5) -> dict[str, Any]:
    """Median save and load seconds and bytes on disk for both formats; new/old ratios."""
    router, manifest = load_router(artifact)
    kept = {k: manifest[k] for k in ("catalog", "training", "metrics")}
    times: dict[str, list[float]] = {"v1_save": [], "v1_load": [], "v2_save": [], "v2_load": []}
    with tempfile.TemporaryDirectory(prefix="promptroute-bench-") as tmp:
        v1, v2 = Path(tmp) / "v1", Path(tmp) / "v2"
        for i in range(repeats):
            # Alternate which format goes first, so neither always gets the warmer cache.
            order = ("v1", "v2") if i % 2 == 0 else ("v2", "v1")
            for fmt in order:
                t0 = time.perf_counter()
                if fmt == "v1":
                    _save_v1(router, v1, manifest)
                else:
                    save_router(router, v2, environ={}, **kept)
                times[f"{fmt}_save"].append(time.perf_counter() - t0)
            for fmt in order:
                t0 = time.perf_counter()
                loaded = _load_v1(v1) if fmt == "v1" else load_router(v2, environ={})[0]
                times[f"{fmt}_load"].append(time.perf_counter() - t0)
                assert loaded.models == router.models
        size = {"v1": _bytes(v1), "v2": _bytes(v2)}
        files = {p.name: p.stat().st_size for p in sorted(v2.iterdir())}
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "load_v2_over_v1": round(med["v2_load"] / med["v1_load"], 3),
        "save_v2_over_v1": round(med["v2_save"] / med["v1_save"], 3),
        "bytes_v2_over_v1": round(size["v2"] / size["v1"], 3),
    }
    result: dict[str, Any] = {
        "params": {"artifact": str(artifact), "repeats": repeats},
        "median_seconds": {k: round(v, 4) for k, v in med.items()},
        "all_seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "bytes": size,
        "v2_files": files,
        "ratios": ratios,
    }
    result["targets"] = [
        Target(
            "artifact load time, format 2 / format 1",
            "≤ 1.2 (not materially worse)",
            f"{ratios['load_v2_over_v1']:.2f} ({med['v2_load']:.3f} s vs {med['v1_load']:.3f} s)",
            ratios["load_v2_over_v1"] <= 1.2,
        ).to_dict(),
        Target(
            "artifact save time, format 2 / format 1",
            "(no target)",
            f"{ratios['save_v2_over_v1']:.2f} ({med['v2_save']:.3f} s vs {med['v1_save']:.3f} s)",
            None,
        ).to_dict(),
        Target(
            "artifact size, format 2 / format 1",
            "(no target)",
            f"{ratios['bytes_v2_over_v1']:.2f} ({size['v2'] / 1e6:.2f} MB vs "
            f"{size['v1'] / 1e6:.2f} MB)",
            None,
        ).to_dict(),
    ]
    return result
