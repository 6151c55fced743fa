"""Prometheus metrics of one app, in its own registry (two apps in one process never collide).

With several worker processes (`serve --workers N` sets ``PROMETHEUS_MULTIPROC_DIR``),
prometheus-client's multiprocess mode keeps each worker's samples in files there, and
`render` adds up every worker's counters and histograms, whichever worker answers; gauges
take the most recent value written by a live worker (breaker state, pending decisions), or
the maximum (state degraded: 1 if any worker is).

Label children for the fixed label sets (model × stage, model × outcome, filter) are created once
when a model is loaded, so counting on the hot path is a dict lookup and an increment.
`RequestMetrics` is the ASGI middleware that counts every HTTP request by route and status.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.activity import Activity

__all__ = [
    "CONTENT_TYPE",
    "DECISION_BUCKETS",
    "FILTERS",
    "STAGES",
    "UPSTREAM_OUTCOMES",
    "Metrics",
    "RequestMetrics",
]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
STAGES = ("rule", "experiment", "classifier", "degraded", "exploration")
FILTERS = ("candidates", "capability", "cost", "latency", "breaker", "rule")
# A decision takes tens to hundreds of microseconds: fine buckets there, coarse ones beyond.
DECISION_BUCKETS = (
    25e-6,
    50e-6,
    75e-6,
    100e-6,
    150e-6,
    200e-6,
    300e-6,
    500e-6,
    750e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    100e-3,
    1.0,
)
# How a gateway call to an upstream ended; everything but "ok", "client_error" (the request's
# own fault, returned as is) and "cancelled" (the client left mid-stream) counts against the model.
UPSTREAM_OUTCOMES = (
    "ok",
    "client_error",
    "rate_limited",
    "server_error",
    "http_error",
    "provider_error",
    "timeout",
    "network_error",
    "malformed",
    "stream_error",
    "cancelled",
)
_BREAKER_LEVEL = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class Metrics:
    """Every metric the service exports; `render()` gives the Prometheus text format.

    `activity` keeps the recent decisions and breaker transitions for the dashboard (/activity);
    `clock` (unix seconds) dates them.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.activity = Activity(DECISION_BUCKETS, clock=clock)
        self.registry = CollectorRegistry()
        r = self.registry
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._gauge_functions: list[tuple[Gauge, Callable[[], float]]] = []
        self._requests = Counter(
            "promptroute_http_requests",
            "HTTP requests by route template and status code",
            ["endpoint", "status"],
            registry=r,
        )
        self._decisions = Counter(
            "promptroute_decisions",
            "Routing decisions by chosen model and deciding stage",
            ["model", "stage"],
            registry=r,
        )
        self._spend = Counter(
            "promptroute_estimated_spend_usd",
            "Estimated cost (USD) of the routed calls, by chosen model",
            ["model"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "promptroute_decision_seconds",
            "Time spent in the in-process decision pipeline",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self._removals = Counter(
            "promptroute_filter_removals",
            "Models removed from a request's candidates, by pipeline filter",
            ["filter"],
            registry=r,
        )
        self._breaker_state = Gauge(
            "promptroute_breaker_state",
            "Circuit breaker state per model: 0 closed, 1 half-open, 2 open",
            ["model"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._transitions = Counter(
            "promptroute_breaker_transitions",
            "Circuit breaker state changes",
            ["model", "from_state", "to_state"],
            registry=r,
        )
        self._feedback = Counter(
            "promptroute_feedback",
            "Feedback received, by the model called and the outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.no_eligible = Counter(
            "promptroute_no_eligible",
            "Requests answered 422 because no model was eligible",
            registry=r,
        )
        self._reloads = Counter(
            "promptroute_reloads", "Artifact reloads by result", ["result"], registry=r
        )
        self.decision_log_errors = Counter(
            "promptroute_decision_log_errors",
            "Decision-log rows that could not be written",
            registry=r,
        )
        self._pending = Gauge(
            "promptroute_pending_decisions",
            "Decisions that may still take an outcome (for their model or a fallback)",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._explored = Counter(
            "promptroute_exploration_decisions",
            "Decisions routed to another eligible model by exploration, by the model explored",
            ["model"],
            registry=r,
        )
        self.exploration_cost = Counter(
            "promptroute_exploration_estimated_cost_usd",
            "Estimated cost (USD) of the explored decisions, at the models explored",
            registry=r,
        )
        self.exploration_greedy_cost = Counter(
            "promptroute_exploration_greedy_estimated_cost_usd",
            "Estimated cost (USD) the same decisions would have had at the router's own pick",
            registry=r,
        )
        self._upstream = Counter(
            "promptroute_upstream_attempts",
            "Calls the /v1 gateway made to upstream models, by model and outcome",
            ["model", "outcome"],
            registry=r,
        )
        self._escalations = Counter(
            "promptroute_escalations",
            "Answers the /v1 gateway discarded for a stronger model's, by model and failed check",
            ["model", "check"],
            registry=r,
        )
        self._escalation_cost = Counter(
            "promptroute_escalation_discarded_cost_usd",
            "What the discarded answers of escalated requests cost, in USD",
            registry=r,
        )
        self._state_degraded = Gauge(
            "promptroute_state_degraded",
            "1 while the shared state backend (Redis) is unreachable and this process serves "
            "from local state, else 0",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.state_errors = Counter(
            "promptroute_state_errors",
            "Round trips to the shared state backend that failed or timed out",
            registry=r,
        )
        self.state_dropped = Counter(
            "promptroute_state_dropped",
            "Shared-state writes nobody waited for that were lost to a backend fault",
            registry=r,
        )
        self._removal_child = {f: self._removals.labels(filter=f) for f in FILTERS}
        self._decision_child: dict[tuple[str, str], Any] = {}
        self._spend_child: dict[str, Any] = {}
        self._feedback_child: dict[tuple[str, str], Any] = {}
        self._request_child: dict[tuple[str, int], Any] = {}

    def bind_models(self, models: Iterable[str]) -> None:
        """Create the per-model label children up front (and show every breaker as closed)."""
        for model in models:
            for stage in STAGES:
                self._decision_child[(model, stage)] = self._decisions.labels(model, stage)
            self._spend_child[model] = self._spend.labels(model)
            for outcome in ("success", "failure"):
                self._feedback_child[(model, outcome)] = self._feedback.labels(model, outcome)
            self._breaker_state.labels(model).set(0.0)

    def track_pending(self, size: Callable[[], int]) -> None:
        self._track(self._pending, lambda: float(size()))

    def track_state(self, degraded: Callable[[], bool]) -> None:
        self._track(self._state_degraded, lambda: float(degraded()))

    def _track(self, gauge: Gauge, value: Callable[[], float]) -> None:
        if self.multiprocess:
            # A function gauge lives in one process's memory: the files see only set().
            self._gauge_functions.append((gauge, value))
            gauge.set(value())
        else:
            gauge.set_function(value)

    # -- hot path -----------------------------------------------------------------------------

    def decision(self, model: str, stage: str, seconds: float, cost_usd: float = 0.0) -> None:
        child = self._decision_child.get((model, stage))
        if child is None:
            child = self._decision_child[(model, stage)] = self._decisions.labels(model, stage)
        child.inc()
        spend = self._spend_child.get(model)
        if spend is None:
            spend = self._spend_child[model] = self._spend.labels(model)
        spend.inc(cost_usd)
        self.decision_seconds.observe(seconds)
        self.activity.decision(model, stage, seconds, cost_usd)

    def explored(self, model: str, cost_usd: float, greedy_cost_usd: float) -> None:
        """One decision explored `model`; its estimated cost and that of the router's pick."""
        self._explored.labels(model).inc()
        self.exploration_cost.inc(max(cost_usd, 0.0))
        self.exploration_greedy_cost.inc(max(greedy_cost_usd, 0.0))

    def removed(self, filter_name: str, count: int = 1) -> None:
        self._removal_child[filter_name].inc(count)

    def request(self, endpoint: str, status: int) -> None:
        key = (endpoint, status)
        child = self._request_child.get(key)
        if child is None:
            child = self._request_child[key] = self._requests.labels(endpoint, str(status))
        child.inc()

    # -- rarer events -------------------------------------------------------------------------

    def feedback(self, model: str, success: bool) -> None:
        key = (model, "success" if success else "failure")
        child = self._feedback_child.get(key)
        if child is None:
            child = self._feedback_child[key] = self._feedback.labels(*key)
        child.inc()

    def breaker_transition(self, model: str, old: Any, new: Any, _reason: str) -> None:
        """A `serving.breakers.TransitionHook`."""
        old_v, new_v = getattr(old, "value", str(old)), getattr(new, "value", str(new))
        self._transitions.labels(model, old_v, new_v).inc()
        self._breaker_state.labels(model).set(_BREAKER_LEVEL.get(new_v, -1.0))
        self.activity.transition(model, old_v, new_v, _reason)

    def breaker_level(self, model: str, state: str) -> None:
        """Show `model`'s circuit as `state` (a change another process made, seen here)."""
        self._breaker_state.labels(model).set(_BREAKER_LEVEL.get(state, -1.0))

    def upstream_attempt(self, model: str, outcome: str) -> None:
        """One gateway call to `model`'s upstream ended with `outcome` (see UPSTREAM_OUTCOMES)."""
        self._upstream.labels(model, outcome).inc()

    def escalation(self, model: str, check: str) -> None:
        """The gateway escalated past `model`'s answer because `check` failed."""
        self._escalations.labels(model, check).inc()

    def escalation_cost(self, usd: float) -> None:
        """The cost of the answers one escalated request discarded."""
        self._escalation_cost.inc(max(usd, 0.0))

    def reload(self, ok: bool) -> None:
        self._reloads.labels("ok" if ok else "failed").inc()

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        for gauge, value in self._gauge_functions:
            gauge.set(value())
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)


class RequestMetrics:
    """ASGI middleware: count each HTTP request by its route template and response status.

    The route template (``/experiments/{name}``), not the raw path, is the label, so label
    cardinality stays bounded; paths that match no route count as ``other``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.request(endpoint, status)
