"""Admin endpoints (API key required): hot reload of the artifact, breaker reset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from models.artifact import resolve_artifact
from models.errors import ArtifactError, ArtifactLocationError, ConfigError
from models.paths import default_artifact_path
from serving.config import Settings
from serving.deps import AdminDep, CatalogDep, HealthDep, ModelsDep, SettingsDep
from serving.errors import ApiError
from serving.redact import quote
from serving.schemas import ErrorResponse, ReloadRequest, ReloadResponse

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or wrong API key."},
    403: {"model": ErrorResponse, "description": "Admin endpoints disabled (no key set)."},
}


def _artifacts_dir(settings: Settings) -> Path:
    """The configured `artifacts_dir`, else the directory holding the configured artifact."""
    if settings.artifacts_dir is not None:
        return Path(settings.artifacts_dir)
    return Path(settings.artifact or default_artifact_path()).parent


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        **_AUTH,
        400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
        413: {"model": ErrorResponse, "description": "The body is over the size limit."},
        422: {
            "model": ErrorResponse,
            "description": "Not loaded (outside the artifacts directory, unsigned, damaged or "
            "incompatible); the old model serves on.",
        },
    },
)
def reload_artifact(
    models: ModelsDep, settings: SettingsDep, body: ReloadRequest | None = None
) -> ReloadResponse:
    """Load and verify an artifact, then swap it in atomically; on failure nothing changes."""
    # A plain `def`: loading runs in the thread pool while requests keep being served.
    path = body.artifact if body is not None else None
    if path is not None:
        # Only from the artifacts directory: the admin key alone must not reach any folder on
        # disk the service's user can read.
        try:
            path = str(resolve_artifact(_artifacts_dir(settings), path))
        except ArtifactLocationError as exc:
            raise ApiError(
                422,
                "artifact_outside_dir",
                f"{exc}; still serving router {models.current.version}",
                field="artifact",
            ) from None
    try:
        old, new = models.reload(path)
    except (ArtifactError, ConfigError) as exc:
        raise ApiError(
            422,
            "reload_failed",
            f"{exc}; still serving router {models.current.version}",
            field="artifact",
        ) from None
    return ReloadResponse(
        artifact=new.path,
        router_version=new.version,
        previous_version=old.version,
        models=sorted(new.scored),
    )


@router.post(
    "/breakers/{model:path}/reset",
    responses={**_AUTH, 404: {"model": ErrorResponse, "description": "Unknown model."}},
)
async def reset_breaker(model: str, health: HealthDep, catalog: CatalogDep) -> dict[str, Any]:
    """Close a model's circuit now, with an empty window and the base cooldown."""
    if model not in health:
        known = sorted(catalog.names)
        raise ApiError(
            404,
            "unknown_model",
            f"unknown model {quote(model)}; known: {', '.join(known)}",
            known=known,
        )
    return {"model": model, "breaker": await health.reset_breaker(model)}
