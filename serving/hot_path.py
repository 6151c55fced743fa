"""POST /route and POST /feedback answered ahead of FastAPI's router, without its per-request tax.

On a /route request FastAPI spent more than the decision itself: matching the path against every
route (asking each included router for its version, 17 calls), solving the dependency graph for
two parameters, building a `Request`, and a contextvars copy per layer. `HotPath` is the
innermost middleware — inside the request metrics and the body limit, so both behave as before —
and answers the two hot endpoints itself, with the steps FastAPI would take, in its order:

    1 read the body            a body over the limit raises BodyTooLarge → 413, as before
    2 decode it                FastAPI's rules (Content-Type, json.loads): 400 invalid_json;
                               and a key repeated in one object: 400 duplicate_key
    3 the service              503 not_ready until the lifespan has loaded it
    4 validate                 the same pydantic model: 422 naming the field
    5 the endpoint's own work  `route_answer` / `feedback_answer`, shared with the FastAPI routes

Every error response is built by `serving.errors.error_response`, the function behind the app's
exception handlers, so bodies and status codes are those of the router's path; an unexpected
exception propagates to the same 500 handler. The FastAPI routes stay declared: they make
/openapi.json and /docs, and they serve both endpoints whenever ``app.dependency_overrides`` is
not empty (tests replace dependencies that way). Everything else goes on to FastAPI, with a JSON
body checked for repeated keys as FastAPI reads it (`AmbiguousBody`, rendered by the endpoint's
own error handling: 400 ``duplicate_key``, in OpenAI's shape on /v1/*), since FastAPI's decoding
would let the last value win.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.auth import caller_of
from serving.errors import AmbiguousBody, ApiError, error_response
from serving.json_body import MISSING, DuplicateKeyError, declares_json, decode_body, loads
from serving.routes import feedback, route
from serving.schemas import FeedbackRequest, RouteRequest
from serving.service import Service

__all__ = ["HotPath"]

_Endpoint = Callable[[Service, Any, str | None], Awaitable[bytes]]
_JSON_HEADERS = [(b"content-type", b"application/json")]
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


async def _route(service: Service, value: Any, caller: str | None) -> bytes:
    return await route.route_answer(service.pipeline, _validated(RouteRequest, value), caller)


async def _feedback(service: Service, value: Any, caller: str | None) -> bytes:
    body = _validated(FeedbackRequest, value)
    answer = await feedback.feedback_answer(service.outcomes, body, caller)
    return orjson.dumps(answer.model_dump())


def _declared(path: str) -> APIRoute:
    """The FastAPI route declared for POST `path`: the router would put it in ``scope["route"]``,
    where the request metrics read their endpoint label."""
    for declared in (*route.router.routes, *feedback.router.routes):
        if isinstance(declared, APIRoute) and declared.path == path and "POST" in declared.methods:
            return declared
    raise LookupError(f"no POST {path} route is declared")


class HotPath:
    """ASGI middleware: answers POST /route and /feedback itself; see the module docstring."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner
        self.endpoints: dict[str, tuple[APIRoute, _Endpoint]] = {
            "/route": (_declared("/route"), _route),
            "/feedback": (_declared("/feedback"), _feedback),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _BODY_METHODS:
            hit = self.endpoints.get(scope["path"]) if scope["method"] == "POST" else None
            if (
                hit is not None
                and not scope.get("root_path")
                and not self.owner.dependency_overrides
            ):
                scope["route"] = hit[0]
                await self._serve(hit[1], scope, receive, send)
                return
            content_type = _content_type(scope)
            if content_type is not None and declares_json(content_type):
                receive = _refusing_repeated_keys(receive)
        await self.app(scope, receive, send)

    async def _serve(self, endpoint: _Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            value = await _decoded(scope, receive)
            service = self.owner.state.service
            if service is None:
                raise ApiError(503, "not_ready", "the service has not loaded a model yet")
            # `ClientAuth`, outside, has already refused a missing or wrong client key; as in
            # `serving.deps.get_caller`, the key is checked here when it has not.
            found = caller_of(scope)
            if found is None and service.clients.enabled:
                found = service.clients.authenticate(Headers(scope=scope))
            payload = await endpoint(service, value, found.name if found is not None else None)
        except Exception as exc:
            response = error_response(exc)
            if response is None:
                raise  # the app's 500 handler logs it and answers internal_error
            await response(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(payload)).encode()), *_JSON_HEADERS],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def _content_type(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole body, as Starlette's `Request.body()` reads it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


async def _decoded(scope: Scope, receive: Receive) -> Any:
    """The body as FastAPI would validate it, or the exception its handlers would answer."""
    try:
        return decode_body(await _read_body(receive), _content_type(scope))
    except StarletteHTTPException:  # BodyTooLarge from the body limit's receive
        raise
    except DuplicateKeyError as exc:
        raise AmbiguousBody(exc.field, exc.message) from None
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ]
        ) from exc
    except Exception as exc:  # FastAPI's words for every other decoding failure
        raise StarletteHTTPException(400, "There was an error parsing the body") from exc


def _validated(model: type[BaseModel], value: Any) -> Any:
    """`model` validated as FastAPI validates a body parameter, its errors located in ``body``."""
    if value is MISSING:
        raise RequestValidationError(
            [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
        )
    try:
        return model.model_validate(value, from_attributes=True)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def _refusing_repeated_keys(receive: Receive) -> Receive:
    """`receive`, raising `AmbiguousBody` when the whole body has arrived and repeats a key.

    Raised from the body reader, so FastAPI hands it to the endpoint's error handling (it
    re-raises HTTPExceptions met while reading), after routing, like any undecodable body.
    """
    chunks: list[bytes] = []

    async def checked() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = b"".join(chunks)
                chunks.clear()
                try:
                    loads(body)
                except DuplicateKeyError as exc:
                    raise AmbiguousBody(exc.field, exc.message) from None
                except (ValueError, RecursionError):
                    pass  # not JSON: FastAPI reports it in the endpoint's own words
        return message

    return checked
