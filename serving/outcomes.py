"""Feedback: one routed call's outcome applied to health, the experiment and the decision log.

`POST /feedback` and the gateway (which sees the outcome itself) both come through here.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.bookkeeping import Bookkeeping, Feedback, PendingDecision
from serving.errors import ApiError
from serving.experiments import Experiments
from serving.health import Health
from serving.loaded_model import ModelSlot
from serving.redact import quote

__all__ = ["Outcomes", "apply_feedback", "check_model"]


def check_model(fb: Feedback, models: ModelSlot) -> None:
    """422 ``unknown_model`` when the feedback names a model that is not routable."""
    if fb.model is not None and fb.model not in models.routable_names():
        known = sorted(models.routable_names())
        raise ApiError(
            422,
            "unknown_model",
            f"model: {quote(fb.model)} is not a routable model; known: {', '.join(known)}",
            field="model",
            known=known,
        )


async def apply_feedback(
    fb: Feedback,
    *,
    models: ModelSlot,
    health: Health,
    experiments: Experiments,
    book: Bookkeeping,
) -> tuple[PendingDecision, str]:
    """Apply one feedback: statistics, breaker, experiment, decision log.

    Returns the decision and the model the outcome was recorded for.

    Raises
    ------
    ApiError
        422 ``unknown_model`` when `fb.model` is not routable (nothing is reserved, so a
        corrected retry still finds the decision); and from `Bookkeeping.claim`: 404
        ``unknown_request_id`` (unknown, expired, or another caller's decision), 422
        ``model_not_offered`` (neither the decision's model nor a fallback), 409
        ``outcome_already_recorded`` (that model's outcome is in already).
    """
    check_model(fb, models)
    decision, model = await book.claim(fb.request_id, fb.model, fb.caller)
    await health.record_outcome(
        model, success=fb.success, latency_ms=fb.latency_ms, quality=fb.quality
    )
    if decision.experiment is not None:
        experiments.record_outcome(
            decision.experiment.experiment,
            decision.experiment.variant,
            success=fb.success,
            latency_ms=fb.latency_ms,
            quality=fb.quality,
            cost_usd=fb.cost_usd,
            escalated=bool(fb.escalations),
        )
    await book.log_outcome(fb.request_id, model, fb)
    return decision, model


@dataclass(frozen=True, eq=False)
class Outcomes:
    """`apply_feedback` bound to the parts it changes: health, experiments, the decision log."""

    models: ModelSlot
    health: Health
    experiments: Experiments
    book: Bookkeeping

    async def apply(self, fb: Feedback) -> tuple[PendingDecision, str]:
        """See `apply_feedback`."""
        return await apply_feedback(
            fb,
            models=self.models,
            health=self.health,
            experiments=self.experiments,
            book=self.book,
        )
