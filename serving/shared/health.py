"""`Health` shared through Redis: one breaker and one statistics window per model for every
worker and replica.

Writes (an outcome, a probe slot, a reset) are one atomic script each, group-committed with the
request's other commands (`serving.shared.store`). Reads never wait: they come from a local
snapshot that a background task refreshes every `state.refresh_seconds` with one script call
for all models, and that each write of this process updates at once. So a breaker opened by
one replica is seen by every other within `refresh_seconds` plus one round trip (100 ms plus
well under a millisecond on a LAN, with the defaults), and a half-open breaker's probe slots
are counted in Redis, for all processes together.

While Redis is unreachable the process goes on with what it has: the last snapshot, combined
with a `LocalHealth` that takes this process's outcomes meanwhile (a model either one holds
unavailable is unavailable). When Redis answers again the local board starts afresh and the
snapshot is the truth again; outcomes seen only locally during the outage are not replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.catalog import Catalog
from models.errors import UnknownModelError
from serving.breakers import BreakerSettings, BreakerState
from serving.health import Health, HealthView, LocalHealth
from serving.metrics import Metrics
from serving.shared.store import RedisStore, StateUnavailable, now_arg
from serving.stats import StatsSettings

__all__ = ["FIELDS", "RedisHealth", "decode_state"]

_log = logging.getLogger("promptroute.state")
_Clock = Callable[[], float]
FIELDS = 15  # values per model in a script's reply (see scripts.model_state)


@dataclass(slots=True)
class _Seen:
    """One model's shared state as last read."""

    state: str = "closed"
    opened_at: float | None = None
    cooldown: float = 0.0
    trips: int = 0
    consecutive: int = 0
    probes: int = 0
    calls_in_window: int = 0
    failures_in_window: int = 0
    calls: int = 0
    rate: float | None = None
    latency: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean_quality: float | None = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    text = _text(value)
    return float(text) if text else None


def decode_state(values: list[Any]) -> _Seen:
    """One model's state from a script's reply (FIELDS values)."""
    t = [_text(v) for v in values]
    return _Seen(
        state=t[0],
        opened_at=_float(t[1]),
        cooldown=float(t[2]),
        trips=int(t[3]),
        consecutive=int(t[4]),
        probes=int(t[5]),
        calls_in_window=int(t[6]),
        failures_in_window=int(t[7]),
        calls=int(t[8]),
        rate=_float(t[9]),
        latency=_float(t[10]),
        p50=_float(t[11]),
        p95=_float(t[12]),
        p99=_float(t[13]),
        mean_quality=_float(t[14]),
    )


class RedisHealth(Health):
    """`Health` kept in Redis under `store`'s prefix, read from a local snapshot.

    `clock` is unix time (shared by all replicas; a fake in tests); the local fallback board
    runs on `local_clock` (monotonic).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        breakers: BreakerSettings,
        stats: StatsSettings,
        percentile: float,
        metrics: Metrics,
        store: RedisStore,
        clock: _Clock = time.time,
        local_clock: _Clock = time.monotonic,
    ) -> None:
        self.names = catalog.names
        self._catalog = catalog
        self._breakers = breakers
        self._stats = stats
        self._percentile = percentile
        self._metrics = metrics
        self._store = store
        self._clock = clock
        self._local_clock = local_clock
        self.cfg = ",".join(
            repr(float(v))
            for v in (
                breakers.window_size,
                breakers.window_seconds,
                breakers.min_calls,
                breakers.error_rate_threshold,
                breakers.consecutive_failures,
                breakers.cooldown_seconds,
                breakers.cooldown_multiplier,
                breakers.max_cooldown_seconds,
                breakers.half_open_max_probes,
                breakers.half_open_successes,
                breakers.probe_timeout_seconds,
                stats.window_size,
                stats.window_seconds,
                percentile,
            )
        )
        self._keys = {m: self._model_keys(m) for m in self.names}
        self._all_keys = [k for m in self.names for k in self._keys[m]]
        self._seen = {m: _Seen(cooldown=breakers.cooldown_seconds) for m in self.names}
        self._view = HealthView(catalog)
        self.local = self._new_local()
        self._refresher: asyncio.Task[None] | None = None
        self.refreshed_at: float | None = None  # unix time of the last snapshot read
        store.on_resume(self._resumed)

    def _model_keys(self, model: str) -> list[str]:
        k = self._store.key
        return [k("breaker", model), k("bwin", model), k("probes", model)] + [
            k("stats", model),
            k("derived", model),
        ]

    def _new_local(self) -> LocalHealth:
        return LocalHealth(
            self._catalog,
            breakers=self._breakers,
            stats=self._stats,
            percentile=self._percentile,
            metrics=self._metrics,
            clock=self._local_clock,
        )

    # -- background -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        every = self._store.config.refresh_seconds
        while True:
            await asyncio.sleep(every)
            if self._store.degraded:
                continue
            try:
                await self.refresh()
            except Exception:  # keep refreshing: one bad reply must not freeze the snapshot
                _log.exception("refreshing the shared health snapshot failed")

    async def refresh(self) -> bool:
        """Read every model's shared state now (one round trip); False when Redis is down."""
        try:
            reply = await self._store.call(
                "snapshot", self._all_keys, [now_arg(self._clock), self.cfg]
            )
        except StateUnavailable:
            return False
        for i, model in enumerate(self.names):
            self._apply(model, decode_state(reply[i * FIELDS : (i + 1) * FIELDS]))
        self.refreshed_at = self._clock()
        return True

    async def _resumed(self) -> None:
        self.local = self._new_local()
        await self.refresh()

    def _apply(self, model: str, seen: _Seen) -> None:
        old = self._seen[model]
        self._seen[model] = seen
        i = self._view.index[model]
        self._view.set_model(
            i,
            calls=seen.calls,
            rate=seen.rate,
            latency=seen.latency,
            min_calls=self._breakers.min_calls,
        )
        if seen.state == "closed":
            self._view.not_closed.discard(model)
        else:
            self._view.not_closed.add(model)
        if old.state != seen.state:
            self._metrics.breaker_level(model, seen.state)

    def _events(self, model: str, raw: Any) -> None:
        for event in filter(None, _text(raw).split(";")):
            old, new, reason = event.split(">", 2)
            level = logging.WARNING if new == "open" else logging.INFO
            _log.log(level, "breaker %s: %s -> %s (%s, shared)", model, old, new, reason)
            self._metrics.breaker_transition(model, BreakerState(old), BreakerState(new), reason)

    def _merge_local(self) -> None:
        self._view.not_closed |= self.local.view().not_closed

    # -- reads ------------------------------------------------------------------------------

    def view(self) -> HealthView:
        return self._view

    def _shared_state(self, model: str) -> tuple[BreakerState, int]:
        seen = self._seen[model]
        if seen.state == "open":
            opened = seen.opened_at if seen.opened_at is not None else self._clock()
            if self._clock() - opened >= seen.cooldown:
                return BreakerState.HALF_OPEN, 0  # the next script call makes it so
            return BreakerState.OPEN, seen.probes
        return BreakerState(seen.state), seen.probes

    def is_available(self, model: str) -> bool:
        state, probes = self._shared_state(model)
        if state is BreakerState.OPEN:
            ok = False
        elif state is BreakerState.HALF_OPEN:
            ok = probes < self._breakers.half_open_max_probes
        else:
            ok = True
        if self._store.degraded:
            ok = ok and self.local.is_available(model)
        return ok

    def breaker_state(self, model: str) -> BreakerState:
        if self._store.degraded:
            local = self.local.breaker_state(model)
            if local is not BreakerState.CLOSED:
                return local
        return self._shared_state(model)[0]

    def breakers_snapshot(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        local = self.local.breakers_snapshot() if self._store.degraded else {}
        for model in self.names:
            if model in local and local[model]["state"] != "closed":
                out[model] = local[model]
                continue
            seen = self._seen[model]
            calls = seen.calls_in_window
            snap: dict[str, Any] = {
                "state": self._shared_state(model)[0].value,
                "error_rate": seen.failures_in_window / calls if calls else None,
                "calls_in_window": calls,
                "consecutive_failures": seen.consecutive,
                "cooldown_seconds": seen.cooldown,
                "trips": seen.trips,
                "probes_in_flight": seen.probes,
            }
            if seen.opened_at is not None:
                snap["opened_at"] = seen.opened_at
            out[model] = snap
        return out

    def stats_snapshot(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for model in self.names:
            seen = self._seen[model]
            latency = (
                {"p50": seen.p50, "p95": seen.p95, "p99": seen.p99}
                if seen.p50 is not None
                else None
            )
            out[model] = {
                "calls": seen.calls,
                "success_rate": seen.rate,
                "latency_ms": latency,
                "mean_quality": seen.mean_quality,
            }
        return out

    # -- writes -----------------------------------------------------------------------------

    async def _script(self, model: str, *args: str) -> str:
        reply = await self._store.call(
            "breaker", self._keys[model], [args[0], now_arg(self._clock), self.cfg, *args[1:]]
        )
        self.seen_write(model, reply[1], decode_state(reply[2 : 2 + FIELDS]))
        return _text(reply[0])

    def seen_write(self, model: str, events: Any, seen: _Seen) -> None:
        """Take in what a script this process ran did to `model`: transitions, new state."""
        self._events(model, events)
        self._apply(model, seen)

    def count_feedback(self, model: str, success: bool) -> None:
        """Count one outcome in this process's metrics."""
        self._metrics.feedback(model, success)

    async def take_slot(self, model: str) -> bool:
        try:
            return await self._script(model, "slot") == "1"
        except StateUnavailable:
            taken = await self.local.take_slot(model)
            self._merge_local()
            return taken

    async def record_outcome(
        self, model: str, *, success: bool, latency_ms: float | None, quality: float | None = None
    ) -> None:
        if model not in self._keys:
            raise UnknownModelError(model, list(self.names))
        latency = "" if latency_ms is None else repr(float(latency_ms))
        q = "" if quality is None else repr(float(quality))
        try:
            await self._script(model, "record", "1" if success else "0", latency, q)
        except StateUnavailable:
            self.local.record_outcome_now(
                model, success=success, latency_ms=latency_ms, quality=quality
            )
            self._merge_local()
            return
        self.count_feedback(model, success)

    async def reset_breaker(self, model: str) -> dict[str, Any]:
        if model not in self._keys:
            return await self.local.reset_breaker(model)  # raises UnknownModelError
        try:
            await self._script(model, "reset")
        except StateUnavailable:
            pass
        await self.local.reset_breaker(model)
        self._view.not_closed.discard(model)
        return self.breakers_snapshot()[model]

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
