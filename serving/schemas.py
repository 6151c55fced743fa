"""Request and response bodies of the HTTP API, with the examples `/docs` shows.

Requests are strict (`extra="forbid"`, no type coercion, finite numbers only), so a typo in a
field name or a quoted number is a 422 naming the field rather than a silently ignored value.
Limits that depend on the configuration (prompt length, metadata depth) are checked by the
route, not here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from features.text import has_surrogates

__all__ = [
    "ErrorResponse",
    "ExperimentRef",
    "FEEDBACK_EXAMPLES",
    "FeedbackRequest",
    "FeedbackResponse",
    "ModelInfo",
    "ModelsResponse",
    "Reason",
    "ReloadRequest",
    "ReloadResponse",
    "Removal",
    "ROUTE_EXAMPLES",
    "RouteRequest",
    "RouteResponse",
    "Status",
    "Text",
]


def _utf8(value: str) -> str:
    if has_surrogates(value):
        raise ValueError("must be valid Unicode text (it contains a lone surrogate)")
    return value


Text = Annotated[str, AfterValidator(_utf8)]
_ModelName = Annotated[Text, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class RouteRequest(_Strict):
    """Which model should answer this? Give exactly one of `prompt` or `messages`."""

    prompt: Text | None = Field(None, description="The prompt as one string.")
    messages: list[dict[str, Any]] | None = Field(
        None,
        description="OpenAI chat messages; `image_url` content parts mean vision is needed.",
    )
    task_type: Text | None = Field(
        None, min_length=1, max_length=100, description="The caller's task label, if known."
    )
    candidates: list[_ModelName] | None = Field(
        None, min_length=1, max_length=1000, description="Route only among these models."
    )
    max_cost_usd: float | None = Field(
        None, ge=0, description="Ceiling on the estimated cost of this request, in USD."
    )
    max_latency_ms: float | None = Field(
        None, gt=0, description="Ceiling on the model's observed (else catalog) latency."
    )
    expected_output_tokens: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Answer length for cost and context checks; default: learned per model.",
    )
    priority: Literal["quality", "balanced", "cost", "speed"] | None = Field(
        None, description="Maps to a cost knob; default: the service's `default_priority`."
    )
    knob: float | None = Field(
        None, ge=0, description="Explicit cost weight λ (instead of `priority`): 0 = quality only."
    )
    user_id: Text | None = Field(
        None, min_length=1, max_length=256, description="Sticky experiment assignment key."
    )
    metadata: dict[str, Any] | None = Field(
        None, description="Free-form; static rules can match on its string values."
    )


ROUTE_EXAMPLES: dict[str, dict[str, Any]] = {
    "prompt": {
        "summary": "A prompt, default priority",
        "value": {"prompt": "Write a haiku about the sea."},
    },
    "constrained": {
        "summary": "Budget, latency and candidates",
        "value": {
            "prompt": "Prove that the square root of 2 is irrational.",
            "task_type": "math",
            "candidates": ["gpt-4-1106-preview", "claude-v2", "gpt-3.5-turbo-1106"],
            "max_cost_usd": 0.05,
            "max_latency_ms": 3000,
            "expected_output_tokens": 400,
            "priority": "quality",
            "user_id": "user-42",
        },
    },
    "messages": {
        "summary": "Chat messages with metadata and an explicit knob",
        "value": {
            "messages": [
                {"role": "system", "content": "You are a SQL expert."},
                {"role": "user", "content": "SELECT the top 5 customers FROM orders by revenue."},
            ],
            "knob": 1.0,
            "metadata": {"team": "data"},
        },
    },
    "vision": {
        "summary": "An image part (needs a vision model)",
        "value": {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                }
            ]
        },
    },
}


class Removal(BaseModel):
    filter: Literal["candidates", "capability", "cost", "latency", "breaker", "rule"]
    detail: str


class Reason(BaseModel):
    stage: Literal[
        "rule", "experiment", "classifier", "catalog_preference", "degraded", "exploration"
    ]
    detail: str
    removed: dict[str, Removal]


class ExperimentRef(BaseModel):
    name: str
    variant: str


class RouteResponse(BaseModel):
    request_id: str = Field(description="Quote it in POST /feedback.")
    model: str
    fallbacks: list[str] = Field(description="The other eligible models, best first.")
    scores: dict[str, float] = Field(
        description="Predicted quality (or P(best)) per eligible model, before live scaling; "
        "models the router has no learned scores for are absent."
    )
    estimated_cost_usd: float
    reason: Reason
    experiment: ExperimentRef | None
    router_version: str
    knob: float
    priority: str | None
    degraded: bool
    input_tokens: int

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "request_id": "3f2b8c1e9d7a4b6c8e0f1a2b3c4d5e6f",
                    "model": "gpt-3.5-turbo-1106",
                    "fallbacks": ["claude-instant-v1", "gpt-4-1106-preview"],
                    "scores": {
                        "gpt-3.5-turbo-1106": 0.81,
                        "claude-instant-v1": 0.78,
                        "gpt-4-1106-preview": 0.9,
                    },
                    "estimated_cost_usd": 0.00061,
                    "reason": {
                        "stage": "classifier",
                        "detail": "quality head ranked 3 eligible model(s) at knob 0.5",
                        "removed": {
                            "meta/llama-2-70b-chat": {
                                "filter": "latency",
                                "detail": "catalog (none observed) latency 1,500 ms exceeds "
                                "max_latency_ms 1,000",
                            }
                        },
                    },
                    "experiment": None,
                    "router_version": "1.3.0a1b2c3d4e5f",
                    "knob": 0.5,
                    "priority": "balanced",
                    "degraded": False,
                    "input_tokens": 9,
                }
            ]
        }
    )


class FeedbackRequest(_Strict):
    """The outcome of the call a decision led to."""

    request_id: Text = Field(min_length=1, max_length=200)
    success: bool
    model: _ModelName | None = Field(
        None, description="The model actually called, when it was a fallback."
    )
    latency_ms: float | None = Field(None, ge=0)
    quality: float | None = Field(None, ge=0, le=1)
    cost_usd: float | None = Field(None, ge=0)
    error_type: Text | None = Field(None, min_length=1, max_length=200)


FEEDBACK_EXAMPLES: dict[str, dict[str, Any]] = {
    "success": {
        "summary": "The routed model answered well",
        "value": {
            "request_id": "3f2b8c1e9d7a4b6c8e0f1a2b3c4d5e6f",
            "success": True,
            "latency_ms": 840,
            "quality": 0.9,
            "cost_usd": 0.0006,
        },
    },
    "fallback-failed": {
        "summary": "A fallback was called and failed",
        "value": {
            "request_id": "3f2b8c1e9d7a4b6c8e0f1a2b3c4d5e6f",
            "model": "claude-instant-v1",
            "success": False,
            "latency_ms": 30000,
            "error_type": "timeout",
        },
    },
}


class FeedbackResponse(BaseModel):
    request_id: str
    model: str = Field(description="The model the outcome was recorded for.")
    breaker: str = Field(description="That model's circuit state after the outcome.")


class ReloadRequest(_Strict):
    artifact: Text | None = Field(
        None,
        min_length=1,
        description="An artifact in `artifacts_dir`: its name, or a path inside it; "
        "default: the configured artifact.",
    )


class ReloadResponse(BaseModel):
    artifact: str
    router_version: str
    previous_version: str
    models: list[str]


class ModelInfo(BaseModel):
    name: str
    provider: str
    input_price_per_1m: float
    output_price_per_1m: float
    latency_ms: float
    context_window: int
    capabilities: list[str]
    routable: bool = Field(
        description="The loaded router has learned scores for this model and ranks it."
    )
    why_not_routable: str | None = Field(
        None,
        description="When not routable: why, and how a request can still reach the model "
        "(rules, experiments, `candidates`, or the catalog-preference fallback).",
    )
    stats: dict[str, Any]
    breaker: dict[str, Any]


class ModelsResponse(BaseModel):
    router_version: str
    models: list[ModelInfo]


class StateStatus(BaseModel):
    backend: str
    degraded: bool
    error: str | None = None


class Status(BaseModel):
    status: str
    router_version: str | None = None
    state: StateStatus | None = None


class _ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    """Every error: a stable `code`, a message, the request `field` when one is at fault."""

    error: _ErrorDetail
