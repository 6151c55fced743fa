"""GET /artifact: the loaded router — version, models, cross-validated curve, the knobs in use."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.deps import ModelsDep, SettingsDep

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/artifact")
async def loaded_artifact(models: ModelsDep, settings: SettingsDep) -> dict[str, Any]:
    """What is serving: router version, its models, the cross-validated cost–quality curve of its
    default head, and the knob each priority maps to now."""
    loaded = models.current
    manifest = loaded.manifest
    metrics = manifest.get("metrics") or {}
    router = loaded.router
    priorities = settings.priorities
    balanced = priorities.balanced if priorities.balanced is not None else router.default_knob
    return {
        "router_version": loaded.version,
        "path": loaded.path,
        "created_at": manifest.get("created_at"),
        "models": list(loaded.router.models),  # the ones it has learned scores for
        "scored": sorted(loaded.scored),  # of those, the ones in the catalog: it ranks them
        "catalog_models": len(loaded.names),
        "default_strategy": router.default_strategy,
        "default_knob": router.default_knob,
        "knobs": {
            "quality": priorities.quality,
            "balanced": balanced,
            "cost": priorities.cost,
        },
        "default_priority": settings.default_priority,
        "cv_curve": [
            {"knob": p["knob"], "quality": p["quality"], "cost": p["cost"]}
            for p in metrics.get("cv_curve") or []
        ],
        "default_knob_cv_point": metrics.get("default_knob_cv_point"),
        "training": {
            key: (manifest.get("training") or {}).get(key)
            for key in ("files", "split", "records_used", "data_sha256")
        },
    }
