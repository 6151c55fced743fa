"""Decision bookkeeping: decisions waiting for their outcomes, and the decision log.

`Bookkeeping` is the interface; `LocalBookkeeping` keeps pending decisions in this process's
memory (bounded by count, bytes and age); `serving.shared.RedisBookkeeping` keeps them in Redis
so that feedback may reach any worker or replica. Both write the log through
`serving.decision_log`, in this process's own file.

    Bookkeeping
    ├── remember(id, decision, prompt=, messages=)   hold a served decision; its log row now
    ├── claim(id, model, caller)   the decision, with `model`'s one outcome reserved (or an
    │                              ApiError: 404 unknown/expired/another caller's, 422 a model
    │                              the decision did not offer, 409 an outcome already in)
    ├── log_outcome(id, model, fb) the outcome's own log row
    ├── expire(), pending_count(), close()

A decision's log row is written when it is served, before `/route` answers, and each outcome
as its own row when it arrives (`models.decision_rows` joins them), so a crash loses nothing
that was acknowledged, and a pending decision holds no prompt: only what the outcome rules
need (model, fallbacks, caller, experiment), a few hundred bytes.

The rules for an outcome, the same in every implementation: the model must be the decision's
or one of its fallbacks; each of those models takes one outcome; feedback from another caller
than the one the decision was made for is answered exactly like an unknown request id (404),
so a caller cannot learn which ids exist.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.decision_rows import DECISION, OUTCOME
from serving.decision_log import DecisionLog, DecisionLogSettings
from serving.errors import ApiError
from serving.experiments import Assignment
from serving.metrics import Metrics
from serving.pending import PendingDecisions, PendingSettings
from serving.redact import quote

__all__ = [
    "Bookkeeping",
    "Feedback",
    "LocalBookkeeping",
    "PendingDecision",
    "already_answered",
    "decision_row",
    "not_offered",
    "outcome_row",
    "unknown_request",
]

_log = logging.getLogger("promptroute.service")
_Clock = Callable[[], float]


@dataclass(slots=True)
class PendingDecision:
    """A served decision as its outcomes need it: what was offered, to whom, in which arm.

    `answered` holds the models whose outcome is in. Read-only by convention otherwise (not
    frozen: one is built per request, and frozen ones build slowly).
    """

    model: str
    fallbacks: tuple[str, ...] = ()
    caller: str | None = None
    experiment: Assignment | None = None
    ts: float = 0.0
    input_tokens: int = 0
    task_type: str | None = None
    router_version: str = ""
    answered: set[str] = field(default_factory=set)
    # The probability that the service's policy chose `model` (only with exploration on).
    propensity: float | None = None

    def offers(self, model: str) -> bool:
        """Whether `model` is the decision's model or one of its fallbacks."""
        return model == self.model or model in self.fallbacks

    def approx_bytes(self) -> int:
        """Roughly what this holds in memory (for the pending store's byte bound)."""
        fallbacks = self.fallbacks
        size = (
            200
            + len(self.model)
            + len(self.caller or "")
            + len(self.task_type or "")
            + len(self.router_version)
            + 60 * len(fallbacks)
            + sum(map(len, fallbacks))  # C-speed: a decision lists every eligible model
        )
        if self.experiment is not None:
            size += 150 + len(self.experiment.experiment) + len(self.experiment.variant)
        return size + 60 * len(self.answered)


@dataclass(frozen=True, slots=True)
class Feedback:
    """The outcome of a routed call, as reported by the caller (or the gateway)."""

    request_id: str
    success: bool
    model: str | None = None
    latency_ms: float | None = None
    quality: float | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    input_tokens: int | None = None  # from the upstream's usage, when the gateway made the call
    output_tokens: int | None = None
    caller: str | None = None  # the client key's name (None: no client keys configured)
    response: str | None = None  # the answer text (gateway; only when the log keeps texts)
    # Answers the gateway discarded for a stronger model's: model, reason, cost_usd, latency_ms.
    # cost_usd and latency_ms above already include them.
    escalations: tuple[dict[str, Any], ...] = ()


def decision_row(
    request_id: str,
    d: PendingDecision,
    prompt: str | None,
    messages: list[Any] | None,
) -> dict[str, Any]:
    """The decision log's row for a served decision (see `models.decision_rows`)."""
    row: dict[str, Any] = {"id": request_id, "kind": DECISION}
    if messages is not None:
        row["messages"] = messages
    elif prompt is not None:
        row["prompt"] = prompt
    row["model"] = d.model
    row["fallbacks"] = list(d.fallbacks)
    row["input_tokens"] = d.input_tokens
    if d.task_type is not None:
        row["task_type"] = d.task_type
    row["ts"] = round(d.ts, 3)
    row["router_version"] = d.router_version
    if d.experiment is not None:
        row["experiment"] = {"name": d.experiment.experiment, "variant": d.experiment.variant}
    if d.caller is not None:
        row["caller"] = d.caller
    if d.propensity is not None:  # the routed model's; joined only onto that model's outcome
        row["propensity"] = d.propensity
    return row


def outcome_row(request_id: str, model: str, fb: Feedback, ts: float) -> dict[str, Any]:
    """The decision log's row for one outcome of a decision (see `models.decision_rows`)."""
    row: dict[str, Any] = {"id": request_id, "kind": OUTCOME, "model": model}
    row["success"] = fb.success
    for key in (
        "quality",
        "cost_usd",
        "latency_ms",
        "error_type",
        "input_tokens",
        "output_tokens",
    ):
        value = getattr(fb, key)
        if value is not None:
            row[key] = value
    if fb.response is not None:
        row["response"] = fb.response
    if fb.escalations:
        row["escalations"] = [dict(e) for e in fb.escalations]
    row["ts"] = round(ts, 3)
    return row


def unknown_request(request_id: str, max_age_seconds: float) -> ApiError:
    """404: unknown, expired, or another caller's decision (indistinguishable on purpose)."""
    return ApiError(
        404,
        "unknown_request_id",
        f"no pending decision with request_id {quote(request_id)}: it is unknown, has an outcome for "
        f"every model it offered, or is older than {max_age_seconds:g} s",
        field="request_id",
    )


def not_offered(model: str, decision_model: str, fallbacks: tuple[str, ...]) -> ApiError:
    """422: feedback for a model the decision did not offer."""
    offered = [decision_model, *fallbacks]
    return ApiError(
        422,
        "model_not_offered",
        f"model: {quote(model)} was neither the decision's model nor one of its fallbacks; "
        f"offered: {', '.join(offered)}",
        field="model",
        known=offered,
    )


def already_answered(request_id: str, model: str) -> ApiError:
    """409: a second outcome for the same model of the same decision."""
    return ApiError(
        409,
        "outcome_already_recorded",
        f"model: request {quote(request_id)} already has an outcome for {quote(model)}; each model a "
        "decision offered takes one outcome",
        field="model",
    )


def check_claim(
    request_id: str,
    decision: PendingDecision | None,
    model: str | None,
    caller: str | None,
    max_age_seconds: float,
) -> str:
    """Apply the outcome rules to `decision`; the model the outcome is for (ApiError if none)."""
    if decision is None or decision.caller != caller:
        raise unknown_request(request_id, max_age_seconds)
    model = model or decision.model
    if not decision.offers(model):
        raise not_offered(model, decision.model, decision.fallbacks)
    if model in decision.answered:
        raise already_answered(request_id, model)
    return model


class Bookkeeping(abc.ABC):
    """Decisions waiting for feedback, and the log that turns them into training rows."""

    keeps_text: bool
    """Whether `remember` wants the prompt (only when a log will write it)."""

    max_age_seconds: float
    """How long a decision waits for its feedback."""

    wall_clock: _Clock
    """Unix seconds, for a decision's ``ts``."""

    decision_log: DecisionLog | None
    """This process's log file (None: no log)."""

    _metrics: Metrics

    @abc.abstractmethod
    async def remember(
        self,
        request_id: str,
        decision: PendingDecision,
        *,
        prompt: str | None = None,
        messages: list[Any] | None = None,
    ) -> None:
        """Write the decision's log row and hold it for its outcomes (evicting the expired and
        the overflow). `prompt`/`messages` go to the log only."""

    @abc.abstractmethod
    async def claim(
        self, request_id: str, model: str | None, caller: str | None
    ) -> tuple[PendingDecision, str]:
        """The decision and the model the outcome is for (`model`, else the decision's), that
        model's one outcome now reserved.

        Raises
        ------
        ApiError
            404 ``unknown_request_id`` (unknown, expired, or `caller` is not the decision's),
            422 ``model_not_offered``, 409 ``outcome_already_recorded``.
        """

    async def log_outcome(self, request_id: str, model: str, fb: Feedback) -> None:
        """Write the outcome's own log row (errors are counted, never raised)."""
        self._write(outcome_row(request_id, model, fb, self.wall_clock()))

    def log_decision(
        self,
        request_id: str,
        decision: PendingDecision,
        prompt: str | None,
        messages: list[Any] | None,
    ) -> None:
        """Write the decision's log row now (errors are counted, never raised)."""
        if self.decision_log is not None:
            self._write(decision_row(request_id, decision, prompt, messages))

    def _write(self, row: dict[str, Any]) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.append(row)
        except (OSError, ValueError):
            # The outcome is already counted; losing one training row must not fail the call.
            self._metrics.decision_log_errors.inc()
            _log.exception("could not write the decision-log row of request %s", row["id"])

    @abc.abstractmethod
    def pending_count(self) -> int:
        """Decisions waiting now (as last known)."""

    @abc.abstractmethod
    def expire(self) -> int:
        """Evict decisions past their age; how many."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the log and the store. Safe to call twice."""


class LocalBookkeeping(Bookkeeping):
    """`Bookkeeping` in this process's memory, with the decision log on local disk."""

    def __init__(
        self,
        pending: PendingSettings,
        log: DecisionLogSettings | None,
        *,
        metrics: Metrics,
        clock: _Clock = time.monotonic,
        wall_clock: _Clock = time.time,
    ) -> None:
        self._metrics = metrics
        self.wall_clock = wall_clock
        self.decision_log = DecisionLog(log, clock=wall_clock) if log is not None else None
        self.keeps_text = self.decision_log is not None  # no log, no reason to pass prompts
        self.max_age_seconds = pending.max_age_seconds
        self.pending = PendingDecisions(pending, clock=clock, sizeof=PendingDecision.approx_bytes)
        metrics.track_pending(lambda: len(self.pending))
        self._closed = False

    async def remember(
        self,
        request_id: str,
        decision: PendingDecision,
        *,
        prompt: str | None = None,
        messages: list[Any] | None = None,
    ) -> None:
        self.remember_now(request_id, decision, prompt=prompt, messages=messages)

    def remember_now(
        self,
        request_id: str,
        decision: PendingDecision,
        *,
        prompt: str | None = None,
        messages: list[Any] | None = None,
    ) -> None:
        """`remember` without the coroutine (this implementation never waits)."""
        self.log_decision(request_id, decision, prompt, messages)
        self.pending.put(request_id, decision)

    async def claim(
        self, request_id: str, model: str | None, caller: str | None
    ) -> tuple[PendingDecision, str]:
        decision = self.pending.get(request_id)
        chosen = check_claim(request_id, decision, model, caller, self.max_age_seconds)
        assert decision is not None
        decision.answered.add(chosen)
        if len(decision.answered) == 1 + len(decision.fallbacks):
            self.pending.pop(request_id)  # every offered model answered: nothing left to wait for
        return decision, chosen

    def pending_count(self) -> int:
        return len(self.pending)

    def expire(self) -> int:
        return self.pending.expire()

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """`close` without the coroutine (this implementation never waits)."""
        if self._closed:
            return
        self._closed = True
        left = self.pending.drain()
        if left:
            # Their rows are in the log already; they end unlabelled unless a later join
            # finds an outcome written by another process.
            _log.info("shutdown: %d decision(s) ended without feedback", left)
        if self.decision_log is not None:
            self.decision_log.close()
