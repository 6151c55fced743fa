"""POST /v1/chat/completions and GET /v1/models: promptroute behind the OpenAI client.

The `model` field says what to do:

    auto                      route with the default priority
    auto:quality|balanced|cost|speed    route with that priority
    auto:<number ≥ 0>         route with that cost knob λ
    a model of /v1/models     call it directly (the caller chose; no fallbacks)

Routing constraints ride in the extension field ``promptroute`` (``candidates``,
``max_cost_usd``, ``max_latency_ms``, ``expected_output_tokens``, ``task_type``, ``user_id``,
``metadata``; OpenAI's ``user`` is the default ``user_id``), and so does ``escalate`` (verify the
answer and call a stronger model when it fails: `serving.gateway.escalation`). Everything else in the body goes to
the upstream unchanged. The same decision pipeline as ``POST /route`` chooses the model and the
same feedback path as ``POST /feedback`` records the outcome (`serving.gateway.completions`).
Errors on these endpoints have OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, plus promptroute's details (``removed``, ``attempts``) where there are some.
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, get_args

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from features.text import PromptError
from models.catalog import Catalog, estimate_tokens
from serving.auth import Caller
from serving.config import Priority
from serving.deps import CallerDep, CatalogDep, HealthDep, ModelsDep, PipelineDep
from serving.errors import AmbiguousBody, ApiError, render_loc
from serving.gateway import ChatPlan, Gateway
from serving.gateway.escalation import policy_for
from serving.health import Health
from serving.loaded_model import ModelSlot
from serving.pipeline import Pipeline
from serving.redact import quote
from serving.routes.route import build_query, check_json
from serving.schemas import RouteRequest, Text

__all__ = [
    "ChatCompletionRequest",
    "GatewayDep",
    "get_gateway",
    "openai_error",
    "router",
]

_PRIORITIES = frozenset(get_args(Priority))
_EXTENSION = (
    "candidates",
    "max_cost_usd",
    "max_latency_ms",
    "expected_output_tokens",
    "task_type",
    "user_id",
    "metadata",
    "escalate",
)
_ROUTING_ONLY = ("candidates", "max_cost_usd", "max_latency_ms", "escalate")
_HTTP_ERROR_CODE = {400: "invalid_json", 408: "body_timeout", 413: "body_too_large"}
_ERROR_TYPE = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable_error",
}


def openai_error(
    status: int, code: str, message: str, *, param: str | None = None, **extra: Any
) -> dict[str, Any]:
    """An error body in OpenAI's shape; `extra` keys are added to the error object."""
    kind = _ERROR_TYPE.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


class _OpenAIRoute(APIRoute):
    """A route whose errors, validation included, come out in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def with_openai_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                body = openai_error(exc.status, exc.code, exc.message, param=exc.field, **exc.extra)
                return JSONResponse(body, status_code=exc.status, headers=exc.headers)
            except PromptError as exc:
                body = openai_error(422, "invalid_request", str(exc), param=exc.field)
                return JSONResponse(body, status_code=422)
            except RequestValidationError as exc:
                return _validation_error(exc)
            except StarletteHTTPException as exc:  # an undecodable, ambiguous or oversized body
                message = exc.detail if isinstance(exc.detail, str) else "request refused"
                if isinstance(exc, AmbiguousBody):
                    body = openai_error(400, "duplicate_key", message, param=exc.field)
                else:
                    code = _HTTP_ERROR_CODE.get(exc.status_code, "http_error")
                    body = openai_error(exc.status_code, code, message)
                return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

        return with_openai_errors


router = APIRouter(prefix="/v1", tags=["openai"], route_class=_OpenAIRoute)


async def get_gateway(request: Request) -> Gateway:
    """The app's gateway; 503 until the lifespan has started it."""
    gateway = getattr(request.app.state, "gateway", None)
    if gateway is None:
        raise ApiError(503, "not_ready", "the gateway has not started yet")
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


class ChatCompletionRequest(BaseModel):
    """An OpenAI chat-completions body; fields promptroute does not read go upstream as they are."""

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: Text = Field(
        min_length=1,
        max_length=200,
        description="`auto`, `auto:<priority>`, `auto:<knob>`, or a model of GET /v1/models.",
    )
    messages: list[dict[str, Any]] = Field(min_length=1, description="OpenAI chat messages.")
    stream: bool = Field(False, description="Relay the upstream's server-sent events.")
    user: Text | None = Field(None, description="The default `promptroute.user_id`.")
    promptroute: dict[str, Any] | None = Field(
        None, description="Routing constraints: " + ", ".join(_EXTENSION) + "."
    )


_CHAT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The body is not valid JSON."},
    401: {"description": "Client keys are configured and none, or a wrong one, was sent."},
    404: {"description": "`model` is neither `auto…` nor a model of GET /v1/models."},
    413: {"description": "The body is over the size limit."},
    422: {"description": "Invalid field (`param` names it), or no eligible model (`removed`)."},
    502: {"description": "Every upstream attempt failed (`attempts` lists them)."},
    503: {"description": "No `upstreams:` are configured, or the service is starting."},
}


@router.post("/chat/completions", responses=_CHAT_ERRORS)
async def chat_completions(
    body: ChatCompletionRequest,
    pipeline: PipelineDep,
    health: HealthDep,
    catalog: CatalogDep,
    gateway: GatewayDep,
    caller: CallerDep,
) -> Response:
    """Answer with the routed model (or the one named), falling back when an upstream fails."""
    payload = body.model_dump(exclude={"promptroute"}, exclude_unset=True)
    try:  # what goes upstream must be strict JSON
        json.dumps(payload, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise ApiError(
            422, "invalid_request", "the body must hold only finite numbers and valid text"
        ) from None
    plan = await _plan(body, payload, pipeline, health, catalog, gateway, caller)
    reply = await gateway.complete(plan)
    if reply.stream is not None:
        return StreamingResponse(
            reply.stream,
            media_type=reply.media_type,
            headers={**reply.headers, "cache-control": "no-cache"},
        )
    return Response(
        reply.body, status_code=reply.status, media_type=reply.media_type, headers=reply.headers
    )


@router.get("/models")
async def list_models(
    models: ModelsDep, catalog: CatalogDep, gateway: GatewayDep, _caller: CallerDep
) -> dict[str, Any]:
    """`auto` and every routable model with an upstream, in OpenAI's list format."""
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": owner}
            for name, owner in _listed(models, catalog, gateway)
        ],
    }


def _listed(models: ModelSlot, catalog: Catalog, gateway: Gateway) -> list[tuple[str, str]]:
    routable = models.routable_names()
    names = gateway.callable_models([n for n in catalog.names if n in routable])
    return [("auto", "promptroute")] + [(n, catalog[n].provider or "promptroute") for n in names]


async def _plan(
    body: ChatCompletionRequest,
    payload: dict[str, Any],
    pipeline: Pipeline,
    health: Health,
    catalog: Catalog,
    gateway: Gateway,
    caller: Caller | None,
) -> ChatPlan:
    limits = pipeline.settings.limits
    # The whole payload is forwarded upstream (tools, response_format…), so all of it must be
    # strict JSON of bounded depth, not just the messages.
    check_json(payload, "body")
    caller_name = caller.name if caller is not None else None
    mode = _routing_mode(body.model)
    if mode is not None:
        priority, knob = mode
        escalation = policy_for((body.promptroute or {}).get("escalate"), gateway.config.escalation)
        with _extension_fields():
            query = build_query(_route_request(body, priority, knob), limits)
        _check_upstreams(gateway)  # a valid request, and nothing to call: before routing
        query.caller = caller_name
        with _extension_fields():
            decision = await pipeline.route(query)
        models = (decision.model, *decision.fallbacks)
        return ChatPlan(
            decision.request_id,
            models,
            payload,
            body.stream,
            decision.input_tokens,
            escalation=escalation,
            scores=decision.scores,
            caller=caller_name,
        )
    name = body.model
    known = [n for n, _ in _listed(pipeline.models, catalog, gateway)]
    if name not in known:
        if name in pipeline.models.routable_names():
            _check_upstreams(gateway)
        why = (
            "has no upstream configured"
            if name in pipeline.models.routable_names()
            else "is not a routable model"
        )
        raise ApiError(
            404,
            "model_not_found",
            f"model: {quote(name)} {why}; available: {', '.join(known)}",
            field="model",
        )
    for key in _ROUTING_ONLY:
        if body.promptroute and key in body.promptroute:
            raise ApiError(
                422,
                "invalid_request",
                f"promptroute.{key}: applies only when the model is 'auto'",
                field=f"promptroute.{key}",
            )
    with _extension_fields():
        query = build_query(_route_request(body, None, None), limits)
    input_tokens = estimate_tokens(len(query.prompt.text))
    request_id = uuid.uuid4().hex
    # The caller chose the model: no filters and no breaker veto, but a half-open breaker still
    # counts this call as its probe, and the outcome is recorded like a routed one.
    await health.take_slot(name)
    await pipeline.remember(
        request_id,
        model=name,
        raw_prompt=None,
        raw_messages=query.raw_messages,
        input_tokens=input_tokens,
        task_type=query.task_type,
        router_version=pipeline.models.current.version,
        experiment=None,
        caller=caller_name,
    )
    return ChatPlan(request_id, (name,), payload, body.stream, input_tokens, caller_name)


def _check_upstreams(gateway: Gateway) -> None:
    """503 when no upstream is configured at all: nothing could answer, so nothing is routed
    and no decision is left pending."""
    if not gateway.has_upstreams:
        raise ApiError(
            503,
            "no_upstreams",
            "no upstreams are configured: add an `upstreams:` section to the service config "
            "(for each catalog model: base_url, and api_key_env if it needs a key)",
        )


@contextlib.contextmanager
def _extension_fields() -> Iterator[None]:
    """Errors that name a routing field (``candidates[2]``) name it as the client sent it."""
    try:
        yield
    except ApiError as exc:
        if exc.field is not None and exc.field.partition("[")[0] in _EXTENSION:
            exc.field = f"promptroute.{exc.field}"
            exc.message = f"promptroute.{exc.message}"
        raise


def _routing_mode(model: str) -> tuple[Priority | None, float | None] | None:
    """(priority, knob) for ``auto…``; None for a concrete model name."""
    if model == "auto":
        return None, None
    head, colon, mode = model.partition(":")
    if head != "auto" or not colon:
        return None
    if mode in _PRIORITIES:
        return mode, None  # type: ignore[return-value]  # checked against Priority's values
    try:
        knob = float(mode)
    except ValueError:
        knob = math.nan
    if not (math.isfinite(knob) and knob >= 0):
        raise ApiError(
            422,
            "invalid_request",
            f"model: unknown routing mode {quote(mode)}; use auto, "
            "auto:quality|balanced|cost|speed or auto:<knob ≥ 0>",
            field="model",
        )
    return None, knob


def _route_request(
    body: ChatCompletionRequest, priority: Priority | None, knob: float | None
) -> RouteRequest:
    """The routing request the pipeline would get from POST /route, validated the same way."""
    extension = body.promptroute or {}
    for key in extension:
        if key not in _EXTENSION:
            raise ApiError(
                422,
                "invalid_request",
                f"promptroute.{key}: unknown field (expected one of: {', '.join(_EXTENSION)})",
                field=f"promptroute.{key}",
            )
    fields = {k: v for k, v in extension.items() if k != "escalate"}
    if "user_id" not in fields and body.user is not None:
        fields["user_id"] = body.user
    fields.update(messages=body.messages, priority=priority, knob=knob)
    try:
        return RouteRequest.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        where = render_loc(loc) or "promptroute"
        if loc and loc[0] in extension:
            where = f"promptroute.{where}"
        elif loc and loc[0] == "user_id":
            where = "user"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ApiError(422, "invalid_request", f"{where}: {message}", field=where) from None


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        body = openai_error(400, "invalid_json", f"the body is not valid JSON: {detail}")
        return JSONResponse(body, status_code=400)
    param = render_loc(first.get("loc", ()))
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if param is None and first.get("type") == "missing":
        message = "a JSON body is required"
    elif param is None:
        message = "the body must be a JSON object"
    text = f"{param}: {message}" if param else message
    return JSONResponse(openai_error(422, "invalid_request", text, param=param), status_code=422)
