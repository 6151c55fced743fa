"""POST /route: validate the request against the configured limits, then run the pipeline."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body
from fastapi.responses import Response

from features.text import normalize
from serving.config import LimitsConfig
from serving.deps import CallerDep, PipelineDep
from serving.errors import ApiError
from serving.pipeline import Pipeline, RouteQuery
from serving.schemas import ROUTE_EXAMPLES, ErrorResponse, RouteRequest, RouteResponse

__all__ = ["MAX_MESSAGES_DEPTH", "build_query", "check_json", "route_answer", "router"]

router = APIRouter(tags=["routing"])

# Chat messages nest a few levels (message, content parts, image_url); far below the recursion
# limit that json.dumps and the decision log run into.
MAX_MESSAGES_DEPTH = 64

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    413: {"model": ErrorResponse, "description": "Body, prompt, messages or metadata too big."},
    422: {
        "model": ErrorResponse,
        "description": "Invalid field (`field` names it), unknown candidate, or no eligible "
        "model (`no_eligible_model` with every removal).",
    },
}


@router.post("/route", response_model=RouteResponse, responses=_ERRORS)
async def route_request(
    body: Annotated[RouteRequest, Body(openapi_examples=ROUTE_EXAMPLES)],
    pipeline: PipelineDep,
    caller: CallerDep,
) -> Response:
    """Choose the model that should answer this prompt, with fallbacks and the reason."""
    # Declared for the OpenAPI document; `serving.hot_path` serves it without FastAPI's routing
    # and dependency solving, except while tests override dependencies.
    name = caller.name if caller is not None else None
    return Response(await route_answer(pipeline, body, name), media_type="application/json")


async def route_answer(pipeline: Pipeline, body: RouteRequest, caller: str | None) -> bytes:
    """The /route answer's JSON for a validated body from `caller` (a client key's name, or
    None); ApiError (413/422) naming the field."""
    query = build_query(body, pipeline.settings.limits)
    query.caller = caller
    decision = await pipeline.route(query)
    # orjson: a tenth of json.dumps's time on this hot path. The answer holds only str, finite
    # float, int, bool, None, lists and dicts, which both encode as the same JSON.
    return orjson.dumps(decision.to_response())


def build_query(body: RouteRequest, limits: LimitsConfig) -> RouteQuery:
    """The pipeline's input from a validated body; ApiError (413/422) naming the field."""
    if body.prompt is not None and len(body.prompt) > limits.max_prompt_chars:
        raise _too_large("prompt", f"longer than {limits.max_prompt_chars} characters")
    if body.messages is not None:
        if len(body.messages) > limits.max_messages:
            raise _too_large("messages", f"more than {limits.max_messages} messages")
        check_json(body.messages, "messages")
    if body.knob is not None and body.priority is not None:
        raise ApiError(
            422,
            "invalid_request",
            "knob: give either 'priority' or 'knob', not both",
            field="knob",
        )
    if body.metadata is not None:
        _check_metadata(body.metadata, limits)
    prompt = normalize(prompt=body.prompt, messages=body.messages)
    if body.messages is not None and len(prompt.text) > limits.max_prompt_chars:
        raise _too_large("messages", f"text longer than {limits.max_prompt_chars} characters")
    return RouteQuery(
        prompt=prompt,
        task_type=body.task_type,
        candidates=body.candidates,
        max_cost_usd=body.max_cost_usd,
        max_latency_ms=body.max_latency_ms,
        expected_output_tokens=body.expected_output_tokens,
        priority=body.priority,
        knob=body.knob,
        user_id=body.user_id,
        metadata=body.metadata,
        raw_prompt=body.prompt,
        raw_messages=body.messages,
    )


def _too_large(field: str, what: str) -> ApiError:
    return ApiError(413, "too_large", f"{field}: {what}", field=field)


def check_json(value: Any, field: str) -> None:
    """ApiError 422 naming `field` unless `value` is strict JSON nested at most MAX_MESSAGES_DEPTH."""
    # What is accepted must be writable to the decision log as strict JSON later, from any
    # stack depth: a value nested close to the recursion limit passed json.dumps here and then
    # failed when its feedback row was written (a 500, and the row lost).
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_MESSAGES_DEPTH:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"{field}: nested deeper than {MAX_MESSAGES_DEPTH} levels",
                    field=field,
                )
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError):
        raise ApiError(
            422,
            "invalid_request",
            f"{field}: must hold only finite numbers and valid Unicode text",
            field=field,
        ) from None


def _check_metadata(metadata: Mapping[str, Any], limits: LimitsConfig) -> None:
    # Depth first and without recursion, so a deep value is refused before anything walks it.
    stack: list[tuple[Any, int]] = [(metadata, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > limits.max_metadata_depth:
                raise ApiError(
                    422,
                    "invalid_request",
                    f"metadata: nested deeper than {limits.max_metadata_depth} levels",
                    field="metadata",
                )
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(
                422, "invalid_request", "metadata: numbers must be finite", field="metadata"
            )
    try:
        size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    except ValueError:
        raise ApiError(
            422, "invalid_request", "metadata: must be valid Unicode text", field="metadata"
        ) from None
    if size > limits.max_metadata_bytes:
        raise _too_large("metadata", f"larger than {limits.max_metadata_bytes} bytes as JSON")
