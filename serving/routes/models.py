"""GET /models: the catalog with live statistics, breaker state and whether each is routable."""

from __future__ import annotations

from fastapi import APIRouter

from serving.deps import CatalogDep, HealthDep, ModelsDep
from serving.schemas import ModelInfo, ModelsResponse

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/models", response_model=ModelsResponse)
async def list_models(models: ModelsDep, health: HealthDep, catalog: CatalogDep) -> ModelsResponse:
    """Catalog entries with rolling stats and circuit state; `routable` = the router scores it."""
    loaded = models.current
    stats = health.stats_snapshot()
    breakers = health.breakers_snapshot()
    return ModelsResponse(
        router_version=loaded.version,
        models=[
            ModelInfo(
                **spec.model_dump(mode="json"),
                routable=spec.name in loaded.scored,
                why_not_routable=loaded.unscored_note(spec.name),
                stats=stats[spec.name],
                breaker=breakers[spec.name],
            )
            for spec in catalog.models
        ],
    )
