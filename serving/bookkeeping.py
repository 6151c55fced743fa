"""Decision bookkeeping: decisions waiting for their feedback, and the decision log.

`Bookkeeping` is the interface; `LocalBookkeeping` keeps pending decisions in this process's
memory (bounded by count and age) and writes the log through `serving.decision_log`. A shared
implementation (feedback answered by another worker or replica) stands behind the same
interface.

    Bookkeeping
    ├── remember(id, decision)   hold a served decision until its outcome (or eviction)
    ├── take(id)                 the decision, removed; None if unknown, answered or expired
    ├── log_outcome(id, d, ...)  one training row: the decision joined with its outcome
    ├── expire(), pending_count(), close()

A decision that never gets feedback is still logged once, unlabelled, when it is evicted
(expired, over capacity, or at shutdown).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serving.decision_log import DecisionLog, DecisionLogSettings
from serving.experiments import Assignment
from serving.metrics import Metrics
from serving.pending import PendingDecisions, PendingSettings

__all__ = ["Bookkeeping", "Feedback", "LocalBookkeeping", "PendingDecision", "decision_row"]

_log = logging.getLogger("promptroute.service")
_Clock = Callable[[], float]


@dataclass(slots=True)
class PendingDecision:
    """What the decision log needs to write a decision's row once its feedback arrives.

    Read-only by convention (not frozen: one is built per request, and frozen ones build slowly).
    """

    model: str
    prompt: str | None
    messages: list[Any] | None
    input_tokens: int
    task_type: str | None
    router_version: str
    experiment: Assignment | None
    ts: float
    # The probability that the service's policy chose `model` (only with exploration on).
    propensity: float | None = None


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
    model: str,
    fb: Feedback | None,
    evicted: str | None,
) -> dict[str, Any]:
    """The decision log's row for a decision and its outcome (None: evicted unanswered)."""
    row: dict[str, Any] = {"id": request_id}
    if d.messages is not None:
        row["messages"] = d.messages
    else:
        row["prompt"] = d.prompt
    row["model"] = model
    row["success"] = fb.success if fb is not None else None
    if fb is not None:
        for key in ("quality", "cost_usd", "latency_ms", "error_type"):
            value = getattr(fb, key)
            if value is not None:
                row[key] = value
    row["input_tokens"] = d.input_tokens
    if fb is not None and fb.input_tokens is not None:
        row["input_tokens"] = fb.input_tokens
    if fb is not None and fb.output_tokens is not None:
        row["output_tokens"] = fb.output_tokens
    if fb is not None and fb.response is not None:
        row["response"] = fb.response
    if fb is not None and fb.escalations:
        row["escalations"] = [dict(e) for e in fb.escalations]
    if d.task_type is not None:
        row["task_type"] = d.task_type
    row["ts"] = round(d.ts, 3)
    row["router_version"] = d.router_version
    if d.experiment is not None:
        row["experiment"] = {"name": d.experiment.experiment, "variant": d.experiment.variant}
    # The propensity is that of the routed model: a fallback that answered instead has none.
    if d.propensity is not None and model == d.model:
        row["propensity"] = d.propensity
    if model != d.model:
        row["routed_model"] = d.model
    if evicted is not None:
        row["evicted"] = evicted
    return row


class Bookkeeping(abc.ABC):
    """Decisions waiting for feedback, and the log that turns them into training rows."""

    keeps_text: bool
    """Whether decisions should carry their prompt (only when a log will write it)."""

    max_age_seconds: float
    """How long a decision waits for its feedback."""

    wall_clock: _Clock
    """Unix seconds, for a decision's ``ts``."""

    @abc.abstractmethod
    async def remember(self, request_id: str, decision: PendingDecision) -> None:
        """Hold `decision` until `take(request_id)`, evicting the expired and the overflow."""

    @abc.abstractmethod
    async def take(self, request_id: str) -> PendingDecision | None:
        """The decision, removed; None when unknown, already answered or expired."""

    @abc.abstractmethod
    async def log_outcome(
        self, request_id: str, decision: PendingDecision, model: str, fb: Feedback
    ) -> None:
        """Write the decision's row with its outcome (errors are counted, never raised)."""

    @abc.abstractmethod
    def pending_count(self) -> int:
        """Decisions waiting now (as last known)."""

    @abc.abstractmethod
    def expire(self) -> int:
        """Evict decisions past their age; how many."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Log every pending decision as unanswered and close the log. Safe to call twice."""


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
        self.keeps_text = self.decision_log is not None  # no log, no reason to hold prompts
        self.max_age_seconds = pending.max_age_seconds
        self.pending = PendingDecisions(pending, clock=clock, on_evict=self._on_evict)
        metrics.track_pending(lambda: len(self.pending))
        self._closed = False

    async def remember(self, request_id: str, decision: PendingDecision) -> None:
        self.pending.put(request_id, decision)

    async def take(self, request_id: str) -> PendingDecision | None:
        return self.pending.pop(request_id)

    async def log_outcome(
        self, request_id: str, decision: PendingDecision, model: str, fb: Feedback
    ) -> None:
        self._write(decision_row(request_id, decision, model, fb, None))

    def pending_count(self) -> int:
        return len(self.pending)

    def expire(self) -> int:
        return self.pending.expire()

    def _on_evict(self, request_id: str, decision: Any, why: str) -> None:
        # Feedback never came: the decision is still logged once, unlabelled.
        self._write(decision_row(request_id, decision, decision.model, None, why))

    def _write(self, row: dict[str, Any]) -> None:
        if self.decision_log is None:
            return
        try:
            self.decision_log.append(row)
        except (OSError, ValueError):
            # The outcome is already counted; losing one training row must not fail the call.
            self._metrics.decision_log_errors.inc()
            _log.exception("could not write the decision-log row of request %s", row["id"])

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """`close` without the coroutine (this implementation never waits)."""
        if self._closed:
            return
        self._closed = True
        drained = self.pending.drain()
        if drained:
            _log.info("shutdown: %d decision(s) ended without feedback", drained)
        if self.decision_log is not None:
            self.decision_log.close()
