"""The HTTP endpoints, one module per resource; `api_router` includes them all."""

from fastapi import APIRouter

from serving.routes import activity, admin, artifact, experiments, feedback, health, models, route

__all__ = ["api_router"]

api_router = APIRouter()
for _module in (route, feedback, models, experiments, activity, artifact, admin, health):
    api_router.include_router(_module.router)
