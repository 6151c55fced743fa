"""POST /feedback: the outcome of a routed call updates statistics, breaker, experiment, log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body

from serving.bookkeeping import Feedback
from serving.deps import CallerDep, OutcomesDep
from serving.outcomes import Outcomes
from serving.schemas import FEEDBACK_EXAMPLES, ErrorResponse, FeedbackRequest, FeedbackResponse

__all__ = ["feedback_answer", "router"]

router = APIRouter(tags=["routing"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body is not valid JSON."},
    404: {"model": ErrorResponse, "description": "Unknown, answered or expired request_id."},
    413: {"model": ErrorResponse, "description": "The body is over the size limit."},
    422: {"model": ErrorResponse, "description": "Invalid field, or a model not routable."},
}


@router.post("/feedback", response_model=FeedbackResponse, responses=_ERRORS)
async def post_feedback(
    body: Annotated[FeedbackRequest, Body(openapi_examples=FEEDBACK_EXAMPLES)],
    outcomes: OutcomesDep,
    caller: CallerDep,
) -> FeedbackResponse:
    """Report how the routed call went (once per request_id)."""
    # Declared for the OpenAPI document; `serving.hot_path` serves it without FastAPI's routing
    # and dependency solving, except while tests override dependencies.
    return await feedback_answer(outcomes, body, caller.name if caller is not None else None)


async def feedback_answer(
    outcomes: Outcomes, body: FeedbackRequest, caller: str | None
) -> FeedbackResponse:
    """Apply a validated feedback from `caller` (a client key's name, or None); ApiError
    (403/404/409/422) as `Outcomes.apply` raises it."""
    _decision, model = await outcomes.apply(Feedback(**body.model_dump(), caller=caller))
    return FeedbackResponse(
        request_id=body.request_id,
        model=model,
        breaker=outcomes.health.breaker_state(model).value,
    )
