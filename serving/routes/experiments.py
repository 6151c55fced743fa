"""GET /experiments and /experiments/{name}: per-variant outcomes with intervals and p-values."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from serving.deps import ExperimentsDep
from serving.errors import ApiError
from serving.redact import quote
from serving.schemas import ErrorResponse

__all__ = ["router"]

router = APIRouter(tags=["experiments"])


@router.get("/experiments")
async def list_experiments(experiments: ExperimentsDep) -> dict[str, Any]:
    """Every configured experiment with its per-variant statistics."""
    await experiments.tallies.refresh()
    return {"experiments": experiments.summaries()}


@router.get(
    "/experiments/{name}",
    responses={404: {"model": ErrorResponse, "description": "Unknown experiment."}},
)
async def get_experiment(name: str, experiments: ExperimentsDep) -> dict[str, Any]:
    """One experiment: counts, success rate, latency and quality means with 95% intervals."""
    if name in experiments.names():
        await experiments.tallies.refresh()
    try:
        return experiments.summary(name)
    except KeyError:
        known = experiments.names()
        raise ApiError(
            404,
            "unknown_experiment",
            f"no experiment named {quote(name)}; known: {', '.join(known) or '(none)'}",
            known=known,
        ) from None
