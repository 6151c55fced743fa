"""Dependencies of the route handlers, declared once as `Annotated` aliases.

Tests can replace any of them with ``app.dependency_overrides[get_state] = ...``.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from serving.errors import ApiError
from serving.state import ServiceState

__all__ = ["AdminDep", "StateDep", "get_state", "require_admin"]


# async: a sync dependency would cost every request a hop to the threadpool and back.
async def get_state(request: Request) -> ServiceState:
    """The app's state; 503 until the lifespan has loaded a model."""
    state = getattr(request.app.state, "service", None)
    if state is None:
        raise ApiError(503, "not_ready", "the service has not loaded a model yet")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


async def require_admin(request: Request, state: StateDep) -> None:
    """Admin endpoints need the key from the configured environment variable.

    No key configured: 403 ``admin_disabled`` (disabled, never open). A missing or wrong key:
    401. The comparison takes the same time however much of the key matches.
    """
    if state.admin_key is None:
        raise ApiError(
            403,
            "admin_disabled",
            f"admin endpoints are disabled: set the {state.settings.admin_api_key_env} "
            "environment variable to enable them",
        )
    presented = _presented_key(request)
    if presented is None or not hmac.compare_digest(
        presented.encode("utf-8"), state.admin_key.encode("utf-8")
    ):
        raise ApiError(
            401,
            "unauthorized",
            "a valid admin API key is required (header X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


AdminDep = Depends(require_admin)
