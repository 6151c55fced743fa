"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.errors import error_body
from serving.metrics import CONTENT_TYPE, Metrics
from serving.schemas import Status

__all__ = ["router"]

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Status, response_model_exclude_none=True)
async def healthz() -> Status:
    """The process is up (always 200 while it runs)."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"description": "No model yet."}})
async def readyz(request: Request) -> Response:
    """200 once a verified model is loaded and serving, else 503."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        body = error_body("not_ready", "the service has not loaded a model yet")
        return JSONResponse(body, status_code=503)
    # Degraded shared state still serves (from local state), so it stays ready: taking every
    # replica out of the load balancer because Redis is down would turn a fault into an outage.
    return JSONResponse(
        {
            "status": "ready",
            "router_version": service.models.current.version,
            "state": service.state_status(),
        }
    )


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)
