"""Feedback in one Redis round trip: the outcome rules, the model's statistics and breaker,
and the experiment's tally, in one atomic script (`scripts.FEEDBACK`).

Same answers as `serving.outcomes.apply_feedback` (404, 422, 409 alike); while Redis is
unreachable, or for a decision this process kept locally during an outage, it is that
function, on the local fallbacks.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving.bookkeeping import (
    Feedback,
    PendingDecision,
    already_answered,
    not_offered,
    unknown_request,
)
from serving.outcomes import Outcomes, check_model
from serving.shared.bookkeeping import RedisBookkeeping, decode_decision, text
from serving.shared.health import FIELDS, RedisHealth, decode_state
from serving.shared.store import RedisStore, StateUnavailable, now_arg
from serving.shared.tallies import outcome_args

__all__ = ["SharedOutcomes"]


@dataclass(frozen=True, eq=False)
class SharedOutcomes(Outcomes):
    """`Outcomes` whose feedback makes one round trip to Redis."""

    store: RedisStore | None = None

    async def apply(self, fb: Feedback) -> tuple[PendingDecision, str]:
        book, health, store = self.book, self.health, self.store
        assert isinstance(book, RedisBookkeeping) and isinstance(health, RedisHealth)
        assert store is not None
        if store.degraded or book.holds_locally(fb.request_id):
            return await super().apply(fb)
        check_model(fb, self.models)
        future = store.call(
            "feedback",
            book.keys,
            [
                fb.request_id,
                fb.model or "",
                fb.caller or "",
                now_arg(book.clock),
                repr(float(book.max_age_seconds)),
                store.prefix,
                health.cfg,
                *outcome_args(
                    fb.success, fb.latency_ms, fb.quality, fb.cost_usd, bool(fb.escalations)
                ),
            ],
        )
        try:
            reply = await future
        except StateUnavailable:
            return await super().apply(fb)  # Redis went away meanwhile: the local path
        code, model, raw = (text(v) for v in reply[:3])
        if code == "unknown":
            raise unknown_request(fb.request_id, book.max_age_seconds)
        decision = decode_decision(raw)
        if code == "not_offered":
            raise not_offered(model, decision.model, decision.fallbacks)
        if code == "answered":
            raise already_answered(fb.request_id, model)
        health.seen_write(model, reply[4], decode_state(reply[5 : 5 + FIELDS]))
        health.count_feedback(model, fb.success)
        await book.log_outcome(fb.request_id, model, fb)
        return decision, model
