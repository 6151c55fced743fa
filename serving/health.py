"""Live health of the upstream models: circuit breakers and rolling success/latency statistics.

`Health` is the interface the pipeline, the gateway and the routes use; `LocalHealth` keeps
everything in this process (the embedded default). A shared implementation (several workers
or replicas agreeing through Redis) stands behind the same interface.

    Health
    ├── view()             the arrays the filters read, refreshed cheaply (no I/O per request)
    ├── is_available(m)    may `m` be called now (closed, or half-open with a free probe slot)
    ├── take_slot(m)       commit a call to `m`: a half-open circuit hands out one probe slot;
    │                      False when none is left (another request took the last one)
    ├── record_outcome(m)  one call's outcome: statistics, breaker, view, metrics
    ├── breaker_state(m), breakers_snapshot(), stats_snapshot(), reset_breaker(m)
    └── close()

Breakers and statistics describe upstream models, not a router, so they live as long as the
process and survive artifact reloads.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from models.catalog import Catalog
from serving.breakers import BreakerBoard, BreakerSettings, BreakerState
from serving.metrics import Metrics
from serving.stats import StatsBoard, StatsSettings

__all__ = ["Health", "HealthView", "LocalHealth"]

_Clock = Callable[[], float]


class HealthView:
    """Observed latency and reliability of every catalog model, as arrays the filters gather from.

    Attributes (catalog order): ``latency`` the observed latency percentile in ms, the catalog's
    estimate until something is observed; ``observed`` whether it was; ``factor`` the observed
    success rate once at least `min_calls` outcomes are in the window, else 1 (and
    ``any_unreliable`` whether any factor is below 1); ``calls`` outcomes in the window;
    ``not_closed`` the models whose circuit was not closed at its last transition. A closed
    circuit is always available, so only those need asking per request.
    """

    def __init__(self, catalog: Catalog) -> None:
        self.names = catalog.names
        self.index = {name: i for i, name in enumerate(self.names)}
        self.catalog_latency = np.array([m.latency_ms for m in catalog.models], dtype=np.float64)
        self.latency = self.catalog_latency.copy()
        self.observed = np.zeros(len(self.names), dtype=bool)
        self.factor = np.ones(len(self.names), dtype=np.float64)
        self.calls = np.zeros(len(self.names), dtype=np.int64)
        self.any_unreliable = False
        self.not_closed: set[str] = set()

    def set_model(
        self, i: int, *, calls: int, rate: float | None, latency: float | None, min_calls: int
    ) -> None:
        """Store model `i`'s figures (rate and latency None while nothing is observed)."""
        self.calls[i] = calls
        self.factor[i] = rate if rate is not None and calls >= min_calls else 1.0
        self.observed[i] = latency is not None
        self.latency[i] = self.catalog_latency[i] if latency is None else latency
        self.any_unreliable = bool((self.factor < 1.0).any())


class Health(abc.ABC):
    """What the service knows, live, about each catalog model's availability and performance.

    Reads (`view`, `is_available`, snapshots) never wait on I/O, so the hot path stays cheap;
    writes (`take_slot`, `record_outcome`, `reset_breaker`) are coroutines, because a shared
    implementation makes one round trip for them.
    """

    names: tuple[str, ...]

    @abc.abstractmethod
    def view(self) -> HealthView:
        """The current arrays (recomputed at most every refresh interval)."""

    @abc.abstractmethod
    def is_available(self, model: str) -> bool:
        """Whether `model` may be called now: closed, or half-open with a free probe slot."""

    @abc.abstractmethod
    async def take_slot(self, model: str) -> bool:
        """Commit one call to `model`. False when its circuit is open or its probe slots are
        taken (then nothing was taken)."""

    @abc.abstractmethod
    async def record_outcome(
        self, model: str, *, success: bool, latency_ms: float | None, quality: float | None = None
    ) -> None:
        """One call's outcome on `model`: rolling statistics, its breaker, the view, metrics."""

    @abc.abstractmethod
    def breaker_state(self, model: str) -> BreakerState:
        """The circuit's state as last seen."""

    @abc.abstractmethod
    def breakers_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per model: state, window counts, cooldown (the /models ``breaker`` field)."""

    @abc.abstractmethod
    def stats_snapshot(self) -> dict[str, dict[str, Any]]:
        """Per model: calls, success rate, latency percentiles (the /models ``stats`` field)."""

    @abc.abstractmethod
    async def reset_breaker(self, model: str) -> dict[str, Any]:
        """Close `model`'s circuit now with an empty window; its new snapshot."""

    def __contains__(self, model: object) -> bool:
        return model in self.names

    async def start(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Start what the implementation runs in the background (inside the event loop)."""

    async def close(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release what the implementation holds (connections, tasks)."""


class LocalHealth(Health):
    """`Health` kept in this process: one breaker and one rolling window per catalog model.

    Reading a model's rolling window costs a lock and a few list operations, too much for every
    model on every request; so the view is recomputed for one model right after its outcome and
    for all models at most every `refresh_seconds` (outcomes leaving the window by age alone).
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        breakers: BreakerSettings,
        stats: StatsSettings,
        percentile: float,
        metrics: Metrics,
        clock: _Clock = time.monotonic,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.names = catalog.names
        self._metrics = metrics
        self._clock = clock
        self._percentile = percentile
        self._min_calls = breakers.min_calls
        self._refresh_seconds = refresh_seconds
        self._view = HealthView(catalog)
        self.stats = StatsBoard(self.names, stats, clock=clock)
        self.breakers = BreakerBoard(
            self.names, breakers, clock=clock, on_transition=self._transition
        )
        self._lock = threading.Lock()
        self._refreshed_at = clock()

    def _transition(self, model: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        if new is BreakerState.CLOSED:
            self._view.not_closed.discard(model)
        else:
            self._view.not_closed.add(model)
        self._metrics.breaker_transition(model, old, new, reason)

    def view(self) -> HealthView:
        now = self._clock()
        if now - self._refreshed_at >= self._refresh_seconds:
            with self._lock:
                for i in range(len(self.names)):
                    self._update(i)
                self._refreshed_at = now
        return self._view

    def _update(self, i: int) -> None:
        stats = self.stats[self.names[i]]
        self._view.set_model(
            i,
            calls=stats.snapshot()["calls"],
            rate=stats.success_rate(),
            latency=stats.latency_ms(self._percentile),
            min_calls=self._min_calls,
        )

    def is_available(self, model: str) -> bool:
        return self.breakers[model].available()

    async def take_slot(self, model: str) -> bool:
        breaker = self.breakers[model]
        if not breaker.available():
            return False
        breaker.on_routed()
        return True

    async def record_outcome(
        self, model: str, *, success: bool, latency_ms: float | None, quality: float | None = None
    ) -> None:
        self.record_outcome_now(model, success=success, latency_ms=latency_ms, quality=quality)

    def record_outcome_now(
        self, model: str, *, success: bool, latency_ms: float | None, quality: float | None = None
    ) -> None:
        """`record_outcome` without the coroutine (this implementation never waits)."""
        self.stats[model].record(success=success, latency_ms=latency_ms, quality=quality)
        breaker = self.breakers[model]
        if success:
            breaker.record_success()
        else:
            breaker.record_failure()
        with self._lock:
            self._update(self._view.index[model])
        self._metrics.feedback(model, success)

    def breaker_state(self, model: str) -> BreakerState:
        return self.breakers[model].state

    def breakers_snapshot(self) -> dict[str, dict[str, Any]]:
        return self.breakers.snapshot()

    def stats_snapshot(self) -> dict[str, dict[str, Any]]:
        return self.stats.snapshot()

    async def reset_breaker(self, model: str) -> dict[str, Any]:
        self.breakers.reset(model)
        return self.breakers[model].snapshot()
