"""Dependencies of the route handlers, declared once as `Annotated` aliases.

Each resource has its own dependency, so a handler's signature says which parts of the service
it reads or changes. Tests can replace any of them with ``app.dependency_overrides[...]``.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from models.catalog import Catalog
from serving.auth import Caller, caller_of, presented_key
from serving.bookkeeping import Bookkeeping
from serving.config import Settings
from serving.errors import ApiError
from serving.experiments import Experiments
from serving.health import Health
from serving.loaded_model import ModelSlot
from serving.outcomes import Outcomes
from serving.pipeline import Pipeline
from serving.service import Service

__all__ = [
    "AdminDep",
    "BookDep",
    "CallerDep",
    "CatalogDep",
    "ExperimentsDep",
    "HealthDep",
    "ModelsDep",
    "OutcomesDep",
    "PipelineDep",
    "SettingsDep",
    "get_caller",
    "get_service",
    "require_admin",
]


# async: a sync dependency would cost every request a hop to the threadpool and back.
async def get_service(request: Request) -> Service:
    """The loaded service; 503 until the lifespan has loaded a model."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        raise ApiError(503, "not_ready", "the service has not loaded a model yet")
    return service


_ServiceDep = Annotated[Service, Depends(get_service)]


async def _pipeline(service: _ServiceDep) -> Pipeline:
    return service.pipeline


async def _outcomes(service: _ServiceDep) -> Outcomes:
    return service.outcomes


async def _models(service: _ServiceDep) -> ModelSlot:
    return service.models


async def _health(service: _ServiceDep) -> Health:
    return service.health


async def _book(service: _ServiceDep) -> Bookkeeping:
    return service.book


async def _experiments(service: _ServiceDep) -> Experiments:
    return service.experiments


async def _catalog(service: _ServiceDep) -> Catalog:
    return service.catalog


async def _settings(service: _ServiceDep) -> Settings:
    return service.settings


PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
OutcomesDep = Annotated[Outcomes, Depends(_outcomes)]
ModelsDep = Annotated[ModelSlot, Depends(_models)]
HealthDep = Annotated[Health, Depends(_health)]
BookDep = Annotated[Bookkeeping, Depends(_book)]
ExperimentsDep = Annotated[Experiments, Depends(_experiments)]
CatalogDep = Annotated[Catalog, Depends(_catalog)]
SettingsDep = Annotated[Settings, Depends(_settings)]


async def get_caller(request: Request, service: _ServiceDep) -> Caller | None:
    """Who is calling: the client key's name (None when no client keys are configured).

    `serving.auth.ClientAuth` has usually checked the key already, before the body was read;
    without it (an app built differently) the check happens here. 401 without a valid key.
    """
    caller = caller_of(request.scope)
    if caller is not None or not service.clients.enabled:
        return caller
    return service.clients.authenticate(request.headers)


CallerDep = Annotated[Caller | None, Depends(get_caller)]


async def require_admin(request: Request, service: _ServiceDep) -> None:
    """Admin endpoints need the key from the configured environment variable.

    No key configured: 403 ``admin_disabled`` (disabled, never open). A missing or wrong key:
    401. The comparison takes the same time however much of the key matches.
    """
    if service.admin_key is None:
        raise ApiError(
            403,
            "admin_disabled",
            f"admin endpoints are disabled: set the {service.settings.admin_api_key_env} "
            "environment variable to enable them",
        )
    presented = presented_key(request.headers)
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8"), service.admin_key.encode("utf-8")
    ):
        raise ApiError(
            401,
            "unauthorized",
            "a valid admin API key is required (header X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Depends(require_admin)
