"""GET /activity: where the recent decisions went — share, estimated spend, decision time."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from serving.metrics import Metrics

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/activity")
async def recent_activity(
    request: Request,
    minutes: Annotated[float, Query(gt=0, le=15, description="How far back to look.")] = 15.0,
) -> dict[str, Any]:
    """Decisions per model (share, estimated spend, stage) over the last minutes, decision-time
    percentiles, totals since start (equal to /metrics' counters) and recent breaker transitions."""
    metrics: Metrics = request.app.state.metrics
    return metrics.activity.summary(minutes)
