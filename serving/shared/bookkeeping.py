"""`Bookkeeping` shared through Redis: a decision served by one worker or replica takes its
feedback at any other.

A pending decision is a small JSON value (model, fallbacks, caller, experiment, time: no
prompt; the prompt went to this process's decision log when the decision was served) in one
hash, with its time in a sorted set: one script call stores it and evicts the expired and the
overflow (`pending.max_items`, `pending.max_bytes`), one script call claims an outcome with
every rule checked atomically (see `serving.bookkeeping`). Both are group-committed with the
request's other commands.

While Redis is unreachable, decisions are kept in this process (a `LocalBookkeeping`'s store),
so feedback that reaches the same process still counts; feedback for them that reaches another
process is a 404. The decision log is written either way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from serving.bookkeeping import (
    Bookkeeping,
    PendingDecision,
    already_answered,
    check_claim,
    not_offered,
    unknown_request,
)
from serving.decision_log import DecisionLog, DecisionLogSettings
from serving.experiments import Assignment
from serving.metrics import Metrics
from serving.pending import PendingDecisions, PendingSettings
from serving.shared.store import RedisStore, StateUnavailable, now_arg

__all__ = ["RedisBookkeeping", "decode_decision", "text"]

_Clock = Callable[[], float]


def text(value: Any) -> str:
    """A reply value as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _encode(d: PendingDecision) -> str:
    e = d.experiment
    return json.dumps(
        {
            "m": d.model,
            "f": list(d.fallbacks),
            "c": d.caller or "",
            "e": [e.experiment, e.variant] if e is not None else None,
            "t": d.ts,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def decode_decision(raw: str) -> PendingDecision:
    """A pending decision from its stored JSON."""
    v = json.loads(raw)
    e = v.get("e")
    return PendingDecision(
        model=v["m"],
        fallbacks=tuple(v["f"]),
        caller=v["c"] or None,
        experiment=Assignment(e[0], e[1], None, None, None) if e else None,
        ts=v["t"],
    )


class RedisBookkeeping(Bookkeeping):
    """`Bookkeeping` with pending decisions in Redis and the log in this process's file."""

    def __init__(
        self,
        pending: PendingSettings,
        log: DecisionLogSettings | None,
        *,
        metrics: Metrics,
        store: RedisStore,
        clock: _Clock = time.time,
        local_clock: _Clock = time.monotonic,
        wall_clock: _Clock = time.time,
    ) -> None:
        self._metrics = metrics
        self._store = store
        self._settings = pending
        self.clock = clock
        self.wall_clock = wall_clock
        self.decision_log = DecisionLog(log, clock=wall_clock) if log is not None else None
        self.keeps_text = self.decision_log is not None
        self.max_age_seconds = pending.max_age_seconds
        self.keys = [store.key("pending", part) for part in ("data", "times", "answered", "bytes")]
        # Decisions served while Redis was unreachable.
        self.local = PendingDecisions(
            pending, clock=local_clock, sizeof=PendingDecision.approx_bytes
        )
        self._count = 0
        metrics.track_pending(self.pending_count)
        self._closed = False

    async def remember(
        self,
        request_id: str,
        decision: PendingDecision,
        *,
        prompt: str | None = None,
        messages: list[Any] | None = None,
    ) -> None:
        self.log_decision(request_id, decision, prompt, messages)
        s = self._settings
        try:
            reply = await self._store.call(
                "remember",
                self.keys,
                [
                    request_id,
                    _encode(decision),
                    now_arg(self.clock),
                    repr(float(s.max_age_seconds)),
                    str(s.max_items),
                    str(s.max_bytes),
                ],
            )
        except StateUnavailable:
            self.local.put(request_id, decision)
            return
        self._count = int(reply[1])

    async def claim(
        self, request_id: str, model: str | None, caller: str | None
    ) -> tuple[PendingDecision, str]:
        held = self.local.get(request_id) if len(self.local) else None
        if held is not None:
            return self._claim_local(request_id, held, model, caller)
        try:
            reply = await self._store.call(
                "claim",
                self.keys,
                [
                    request_id,
                    model or "",
                    caller or "",
                    now_arg(self.clock),
                    repr(float(self.max_age_seconds)),
                ],
            )
        except StateUnavailable:
            raise unknown_request(request_id, self.max_age_seconds) from None
        code, chosen, raw = (text(v) for v in reply)
        if code == "unknown":
            raise unknown_request(request_id, self.max_age_seconds)
        decision = decode_decision(raw)
        if code == "not_offered":
            raise not_offered(chosen, decision.model, decision.fallbacks)
        if code == "answered":
            raise already_answered(request_id, chosen)
        return decision, chosen

    def holds_locally(self, request_id: str) -> bool:
        """Whether the decision was kept in this process (served while Redis was down)."""
        return bool(len(self.local)) and self.local.get(request_id) is not None

    def _claim_local(
        self, request_id: str, decision: PendingDecision, model: str | None, caller: str | None
    ) -> tuple[PendingDecision, str]:
        chosen = check_claim(request_id, decision, model, caller, self.max_age_seconds)
        decision.answered.add(chosen)
        if len(decision.answered) == 1 + len(decision.fallbacks):
            self.local.pop(request_id)
        return decision, chosen

    def pending_count(self) -> int:
        """As of this process's last write (Redis's count) plus those held locally."""
        return self._count + len(self.local)

    def expire(self) -> int:
        self._store.send(
            "expire", self.keys, [now_arg(self.clock), repr(float(self.max_age_seconds))]
        )
        return self.local.expire()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.local.drain()
        if self.decision_log is not None:
            self.decision_log.close()
