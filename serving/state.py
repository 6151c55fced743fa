"""What the running service holds: the loaded model and the live, mutable parts around it.

    ServiceState
    ├── model: LoadedModel       one verified artifact + the arrays the hot path reads;
    │                            immutable, replaced as a whole by `reload` (one reference swap)
    ├── variants                 experiment arms that route with another artifact
    ├── catalog                  fixed for the life of the process
    ├── breakers, stats          per catalog model (they describe upstream models, not a router,
    │                            so they survive reloads)
    ├── live: LiveStats          observed latency and success rate as arrays, for the filters
    ├── pending                  decisions waiting for feedback (bounded)
    ├── decision_log             decisions joined with feedback, as training rows
    └── experiments, rules, metrics

`ServiceState(settings)` does all the loading and checking; any problem raises `ConfigError` or
`ArtifactError` before the service accepts a request, so it never runs half-configured.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.breakers import BreakerBoard, BreakerState, CircuitBreaker
from serving.config import Settings
from serving.decision_log import DecisionLog
from serving.errors import ApiError
from serving.experiments import Assignment, Experiments
from serving.metrics import Metrics
from serving.pending import PendingDecisions
from serving.rules import RuleSet
from serving.stats import StatsBoard
from models.artifact import load_router
from models.catalog import Catalog, load_catalog
from models.errors import ArtifactError, ConfigError
from models.router import Router

__all__ = [
    "Feedback",
    "LiveStats",
    "LoadedModel",
    "PendingDecision",
    "ServiceState",
    "build_loaded_model",
]

_log = logging.getLogger("promptroute.service")
_Clock = Callable[[], float]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One verified router and everything derived from it at load time, in its model order.

    The arrays are read-only: a request never changes them, a reload replaces the whole object.
    """

    router: Router
    manifest: Mapping[str, Any]
    path: str
    names: tuple[str, ...]
    universe: frozenset[str]  # catalog ∩ router.models: what this model may route to
    routable: np.ndarray  # bool, True for models in the catalog
    context_window: np.ndarray  # float64, 0 for models outside the catalog
    min_context_window: float  # the smallest routable window, and the smallest window minus
    min_context_slack: float  # the learned output tokens: prompts within it fit everywhere
    vision: np.ndarray  # bool
    catalog_index: np.ndarray  # int64 positions in LiveStats' (catalog-order) arrays
    breakers: tuple[CircuitBreaker | None, ...]

    @property
    def version(self) -> str:
        return self.router.version

    def mask_of(self, names: Iterable[str]) -> np.ndarray:
        """Boolean mask of the given names (names this model does not know are ignored)."""
        mask = np.zeros(len(self.names), dtype=bool)
        index = self.router.index
        for name in names:
            i = index.get(name)
            if i is not None:
                mask[i] = True
        return mask & self.routable


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def build_loaded_model(
    router: Router,
    manifest: Mapping[str, Any],
    path: str,
    catalog: Catalog,
    breakers: BreakerBoard,
    live: LiveStats,
) -> LoadedModel:
    """Precompute the hot path's arrays for `router`; ArtifactError if it can route nowhere."""
    specs = [catalog.get(name) for name in router.models]
    universe = frozenset(name for name, spec in zip(router.models, specs, strict=True) if spec)
    if not universe:
        raise ArtifactError(
            f"{path}: none of the artifact's models ({', '.join(router.models)}) is in the "
            f"catalog ({', '.join(catalog.names)}); nothing could be routed"
        )
    window = np.array([s.context_window if s else 0 for s in specs], dtype=np.float64)
    routable = np.array([s is not None for s in specs], dtype=bool)
    return LoadedModel(
        router=router,
        manifest=manifest,
        path=path,
        names=router.models,
        universe=universe,
        routable=_frozen(routable),
        context_window=_frozen(window),
        min_context_window=float(window[routable].min()),
        min_context_slack=float((window - router.output_tokens)[routable].min()),
        vision=_frozen(np.array([bool(s and "vision" in s.capabilities) for s in specs])),
        catalog_index=_frozen(
            np.array([live.index.get(name, 0) for name in router.models], dtype=np.int64)
        ),
        breakers=tuple(
            breakers[name] if spec else None
            for name, spec in zip(router.models, specs, strict=True)
        ),
    )


class LiveStats:
    """Observed latency and reliability of every catalog model, as arrays the filters gather from.

    Reading a model's rolling window costs a lock and a few list operations, too much for every
    model on every request; so the arrays are recomputed for one model right after its feedback
    (`touch`) and for all models at most every `refresh_seconds` (outcomes leaving the window by
    age alone).

    Attributes (catalog order): ``latency`` the observed latency percentile in ms, the catalog's
    estimate until something is observed; ``observed`` whether it was; ``factor`` the observed
    success rate once at least `min_calls` outcomes are in the window, else 1 (and
    ``any_unreliable`` whether any factor is below 1); ``not_closed`` the models whose circuit was
    not closed at its last transition (`breaker_transition` is the breakers' hook). A closed
    circuit is always available, so only those need asking per request.
    """

    def __init__(
        self,
        catalog: Catalog,
        stats: StatsBoard,
        *,
        percentile: float,
        min_calls: int,
        clock: _Clock = time.monotonic,
        refresh_seconds: float = 1.0,
    ) -> None:
        self.names = catalog.names
        self.index = {name: i for i, name in enumerate(self.names)}
        self._stats = stats
        self._percentile = percentile
        self._min_calls = min_calls
        self._clock = clock
        self._refresh_seconds = refresh_seconds
        self._catalog_latency = np.array([m.latency_ms for m in catalog.models], dtype=np.float64)
        self.latency = self._catalog_latency.copy()
        self.observed = np.zeros(len(self.names), dtype=bool)
        self.factor = np.ones(len(self.names), dtype=np.float64)
        self.calls = np.zeros(len(self.names), dtype=np.int64)
        self.any_unreliable = False
        self.not_closed: set[str] = set()
        self._lock = threading.Lock()
        self._refreshed_at = clock()

    def breaker_transition(self, model: str, _old: Any, new: BreakerState, _reason: str) -> None:
        """A `serving.breakers.TransitionHook`."""
        if new is BreakerState.CLOSED:
            self.not_closed.discard(model)
        else:
            self.not_closed.add(model)

    def touch(self, model: str) -> None:
        """Recompute `model`'s entries now (after its feedback)."""
        with self._lock:
            self._update(self.index[model])

    def current(self) -> LiveStats:
        """Self, refreshed first when the last full refresh is older than `refresh_seconds`."""
        now = self._clock()
        if now - self._refreshed_at >= self._refresh_seconds:
            with self._lock:
                for i in range(len(self.names)):
                    self._update(i)
                self._refreshed_at = now
        return self

    def _update(self, i: int) -> None:
        stats = self._stats[self.names[i]]
        calls = stats.snapshot()["calls"]
        rate = stats.success_rate()
        observed = stats.latency_ms(self._percentile)
        self.calls[i] = calls
        self.factor[i] = rate if rate is not None and calls >= self._min_calls else 1.0
        self.observed[i] = observed is not None
        self.latency[i] = self._catalog_latency[i] if observed is None else observed
        self.any_unreliable = bool((self.factor < 1.0).any())


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


@dataclass(frozen=True, slots=True)
class Feedback:
    """The outcome of a routed call, as reported by the caller."""

    request_id: str
    success: bool
    model: str | None = None
    latency_ms: float | None = None
    quality: float | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    input_tokens: int | None = None  # from the upstream's usage, when the gateway made the call
    output_tokens: int | None = None


class ServiceState:
    """Load and check everything the service needs; see the module docstring for the parts.

    Parameters
    ----------
    settings : Settings
    clock : monotonic seconds for breakers, statistics and pending decisions (fake in tests)
    wall_clock : unix seconds for the decision log's "ts"
    metrics : the app's metrics (a fresh registry when None)
    environ : where the admin API key is read from (``os.environ`` by default)

    Raises
    ------
    ConfigError, ArtifactError
        A bad catalog, artifact, or config that names models the service cannot route to.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: _Clock = time.monotonic,
        wall_clock: _Clock = time.time,
        metrics: Metrics | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.wall_clock = wall_clock
        self.metrics = metrics if metrics is not None else Metrics()
        env = os.environ if environ is None else environ
        self.admin_key: str | None = env.get(settings.admin_api_key_env) or None
        self.artifact_path = str(settings.artifact or _default_artifact())

        router, manifest = load_router(self.artifact_path)
        self.catalog = _service_catalog(settings, manifest, self.artifact_path)
        names = self.catalog.names
        self.stats = StatsBoard(names, settings.stats.to_settings(), clock=clock)
        self.live = LiveStats(
            self.catalog,
            self.stats,
            percentile=settings.stats.latency_percentile,
            min_calls=settings.breakers.min_calls,
            clock=clock,
        )
        self.breakers = BreakerBoard(
            names, settings.breakers.to_settings(), clock=clock, on_transition=self._transition
        )
        self.metrics.bind_models(names)
        self.model: LoadedModel = self._build(router, manifest, self.artifact_path)
        self.variants: dict[str, LoadedModel] = {}
        for experiment in settings.experiments:
            for variant in experiment.variants:
                if variant.artifact is not None and variant.artifact not in self.variants:
                    self.variants[variant.artifact] = self._build(
                        *load_router(variant.artifact), variant.artifact
                    )
        self.rules = RuleSet.compile(settings.rules)
        self.experiments = Experiments(settings.experiments)
        self.has_experiments = any(e.enabled for e in settings.experiments)
        log_settings = settings.decision_log.to_settings()
        self.decision_log = (
            DecisionLog(log_settings, clock=wall_clock) if log_settings is not None else None
        )
        self.pending = PendingDecisions(
            settings.pending.to_settings(), clock=clock, on_evict=self._on_evict
        )
        self.metrics.track_pending(lambda: len(self.pending))
        self._reload_lock = threading.Lock()
        self._closed = False
        _log.info(
            "loaded %s (router %s): %d routable models",
            self.artifact_path,
            self.model.version,
            len(self.model.universe),
        )

    def _transition(self, model: str, old: BreakerState, new: BreakerState, reason: str) -> None:
        self.live.breaker_transition(model, old, new, reason)
        self.metrics.breaker_transition(model, old, new, reason)

    def _build(self, router: Router, manifest: Mapping[str, Any], path: str) -> LoadedModel:
        loaded = build_loaded_model(router, manifest, path, self.catalog, self.breakers, self.live)
        try:
            self.settings.check_models(loaded.universe)
        except ConfigError as exc:
            raise ConfigError(
                exc.field, f"{exc.reason} (routable with artifact {path})", source=exc.source
            ) from None
        return loaded

    # -- admin ---------------------------------------------------------------------------------

    def reload(self, path: str | None = None) -> tuple[LoadedModel, LoadedModel]:
        """Load and verify `path` (default: the configured artifact), then swap it in.

        Returns (old, new). On any error the old model keeps serving and the error propagates.
        """
        target = str(path) if path is not None else self.artifact_path
        with self._reload_lock:
            try:
                router, manifest = load_router(target)
                new = self._build(router, manifest, target)
            except (ArtifactError, ConfigError):
                self.metrics.reload(False)
                raise
            old, self.model = self.model, new  # one reference swap: requests see old or new
            self.artifact_path = target
        self.metrics.reload(True)
        _log.info("reloaded %s: router %s -> %s", target, old.version, new.version)
        return old, new

    def routable_names(self) -> frozenset[str]:
        """Models any loaded router may route to (the current model and experiment arms)."""
        names = self.model.universe
        for variant in self.variants.values():
            names = names | variant.universe
        return names

    # -- decisions and feedback ----------------------------------------------------------------

    def remember(
        self,
        request_id: str,
        *,
        model: str,
        raw_prompt: str | None,
        raw_messages: list[Any] | None,
        input_tokens: int,
        task_type: str | None,
        loaded: LoadedModel,
        experiment: Assignment | None,
    ) -> None:
        """Keep a served decision until its feedback arrives (or it is evicted)."""
        keep_text = self.decision_log is not None  # no log, no reason to hold prompts in memory
        self.pending.put(
            request_id,
            PendingDecision(
                model=model,
                prompt=raw_prompt if keep_text and raw_messages is None else None,
                messages=raw_messages if keep_text else None,
                input_tokens=input_tokens,
                task_type=task_type,
                router_version=loaded.version,
                experiment=experiment,
                ts=self.wall_clock(),
            ),
        )

    def record_feedback(self, fb: Feedback) -> tuple[PendingDecision, str]:
        """Apply one feedback: statistics, breaker, experiment, decision log.

        Returns the decision and the model the outcome was recorded for.

        Raises
        ------
        ApiError
            422 ``unknown_model`` when `fb.model` is not routable (the decision stays pending,
            so a corrected retry still finds it); 404 ``unknown_request_id`` when the id is
            unknown, already answered or expired.
        """
        if fb.model is not None and fb.model not in self.routable_names():
            known = sorted(self.routable_names())
            raise ApiError(
                422,
                "unknown_model",
                f"model: {fb.model!r} is not a routable model; known: {', '.join(known)}",
                field="model",
                known=known,
            )
        decision = self.pending.pop(fb.request_id)
        if decision is None:
            raise ApiError(
                404,
                "unknown_request_id",
                f"no pending decision with request_id {fb.request_id!r}: it is unknown, already "
                f"has its feedback, or is older than {self.settings.pending.max_age_seconds:g} s",
                field="request_id",
            )
        model = fb.model or decision.model
        self.record_outcome(model, success=fb.success, latency_ms=fb.latency_ms, quality=fb.quality)
        if decision.experiment is not None:
            self.experiments.record_outcome(
                decision.experiment.experiment,
                decision.experiment.variant,
                success=fb.success,
                latency_ms=fb.latency_ms,
                quality=fb.quality,
            )
        self._log_row(fb.request_id, decision, model, fb, None)
        return decision, model

    def record_outcome(
        self, model: str, *, success: bool, latency_ms: float | None, quality: float | None = None
    ) -> None:
        """One call's outcome on `model`: rolling statistics, its breaker, live arrays, metrics.

        The per-model half of feedback; the gateway also calls it for failed attempts that a
        fallback answered (the request's experiment outcome and log row come from its result).
        """
        self.stats[model].record(success=success, latency_ms=latency_ms, quality=quality)
        breaker = self.breakers[model]
        if success:
            breaker.record_success()
        else:
            breaker.record_failure()
        self.live.touch(model)
        self.metrics.feedback(model, success)

    def _on_evict(self, request_id: str, decision: Any, why: str) -> None:
        # Feedback never came: the decision is still logged once, unlabelled.
        self._log_row(request_id, decision, decision.model, None, why)

    def _log_row(
        self,
        request_id: str,
        d: PendingDecision,
        model: str,
        fb: Feedback | None,
        evicted: str | None,
    ) -> None:
        if self.decision_log is None:
            return
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
        if d.task_type is not None:
            row["task_type"] = d.task_type
        row["ts"] = round(d.ts, 3)
        row["router_version"] = d.router_version
        if d.experiment is not None:
            row["experiment"] = {"name": d.experiment.experiment, "variant": d.experiment.variant}
        if model != d.model:
            row["routed_model"] = d.model
        if evicted is not None:
            row["evicted"] = evicted
        try:
            self.decision_log.append(row)
        except (OSError, ValueError):
            # The outcome is already counted; losing one training row must not fail the call.
            self.metrics.decision_log_errors.inc()
            _log.exception("could not write the decision-log row of request %s", request_id)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Log every pending decision as unanswered and close the log. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        drained = self.pending.drain()
        if drained:
            _log.info("shutdown: %d decision(s) ended without feedback", drained)
        if self.decision_log is not None:
            self.decision_log.close()


def _default_artifact() -> Path:
    from models.paths import default_artifact_path

    return default_artifact_path()


def _service_catalog(settings: Settings, manifest: Mapping[str, Any], artifact: str) -> Catalog:
    if settings.catalog is not None:
        return load_catalog(settings.catalog)
    snapshot = manifest.get("catalog")
    if isinstance(snapshot, Mapping):
        return Catalog.from_dict(snapshot, source=f"{artifact} (manifest catalog)")
    return load_catalog()
