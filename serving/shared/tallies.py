"""Experiment tallies shared through Redis: one hash per variant.

Counting never waits: an assignment is an HINCRBY-like script call queued with the request's
other commands (`RedisStore.send`), an outcome a script that updates Welford's running mean
and M2 atomically. `refresh` reads every variant's hash in one round trip before a summary.
Counts queued when Redis fails are lost (counted in ``promptroute_state_dropped``); the
decision log keeps the full record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from serving.config import ExperimentConfig
from serving.experiments import Tallies, VariantTally, Welford
from serving.shared.store import RedisStore, StateUnavailable

__all__ = ["RedisTallies", "outcome_args"]

_FIELDS = (
    "assigned",
    "feedback",
    "successes",
    "lat_n",
    "lat_mean",
    "lat_m2",
    "q_n",
    "q_mean",
    "q_m2",
    "c_n",
    "c_mean",
    "c_m2",
    "escalated",
)


def _num(value: Any, kind: type = float) -> Any:
    if value is None:
        return kind(0)
    text = value.decode() if isinstance(value, bytes) else str(value)
    return kind(float(text)) if kind is int else kind(text)


def outcome_args(
    success: bool,
    latency_ms: float | None,
    quality: float | None,
    cost_usd: float | None,
    escalated: bool,
) -> list[str]:
    """The tally script's outcome arguments: '' for an unknown value (a cost that is not
    finite counts as unknown, as in `serving.experiments.Experiments.record_outcome`)."""
    return [
        "1" if success else "0",
        "" if latency_ms is None else repr(float(latency_ms)),
        "" if quality is None else repr(float(quality)),
        "" if cost_usd is None or not math.isfinite(cost_usd) else repr(float(cost_usd)),
        "1" if escalated else "0",
    ]


class RedisTallies(Tallies):
    """`Tallies` in Redis under `store`'s prefix; `get` answers from the last `refresh`."""

    def __init__(self, configs: Sequence[ExperimentConfig], store: RedisStore) -> None:
        self._store = store
        self._pairs = [(c.name, v.name) for c in configs for v in c.variants]
        self._seen = {pair: VariantTally() for pair in self._pairs}

    def _key(self, experiment: str, variant: str) -> str:
        return self._store.key("experiment", experiment, variant)

    def add_assignment(self, experiment: str, variant: str) -> None:
        # The tally script with no outcome fields would count feedback; an assignment is a
        # plain increment, sent as a one-line script of its own.
        self._store.send("tally", [self._key(experiment, variant)], ["assign", "", "", "", ""])

    def add_outcome(
        self,
        experiment: str,
        variant: str,
        *,
        success: bool,
        latency_ms: float | None,
        quality: float | None,
        cost_usd: float | None = None,
        escalated: bool = False,
    ) -> None:
        self._store.send(
            "tally",
            [self._key(experiment, variant)],
            outcome_args(success, latency_ms, quality, cost_usd, escalated),
        )

    def get(self, experiment: str, variant: str) -> VariantTally:
        return self._seen[(experiment, variant)]

    async def refresh(self) -> None:
        if not self._pairs:
            return
        keys = [self._key(*pair) for pair in self._pairs]
        try:
            reply = await self._store.call("tallies", keys, list(_FIELDS))
        except StateUnavailable:
            return  # the last figures stand
        for pair, values in zip(self._pairs, reply, strict=True):
            v = dict(zip(_FIELDS, values, strict=True))
            t = VariantTally()
            t.assigned = _num(v["assigned"], int)
            t.feedback = _num(v["feedback"], int)
            t.successes = _num(v["successes"], int)
            t.latency = Welford.of(_num(v["lat_n"], int), _num(v["lat_mean"]), _num(v["lat_m2"]))
            t.quality = Welford.of(_num(v["q_n"], int), _num(v["q_mean"]), _num(v["q_m2"]))
            t.cost = Welford.of(_num(v["c_n"], int), _num(v["c_mean"]), _num(v["c_m2"]))
            t.escalated = _num(v["escalated"], int)
            self._seen[pair] = t
