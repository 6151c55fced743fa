"""What the running service holds, by concern, and the one place that builds it.

    Service
    ├── models: ModelSlot          the verified router serving now (+ experiment arms); reload
    ├── health: Health             breakers and rolling statistics per catalog model
    ├── book: Bookkeeping          decisions waiting for feedback, and the decision log
    ├── experiments: Experiments   sticky assignments and per-variant outcomes
    ├── rules: RuleSet             static rules, compiled
    ├── clients: ClientKeys        who may call /route, /feedback, /v1/* (optional)
    ├── store: RedisStore | None   the shared-state connection (``state.backend: redis``)
    ├── catalog, settings, metrics fixed for the life of the process
    ├── pipeline: Pipeline         the decision, wired to exactly the parts it uses
    └── outcomes: Outcomes         feedback, wired to the parts it changes

`Service.load(settings)` does all the loading and checking; any problem raises `ConfigError` or
`ArtifactError` before the service accepts a request, so it never runs half-configured. No
route or stage reaches into `Service`: each takes the parts it uses (see `serving.deps`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifact import load_router
from models.catalog import Catalog, load_catalog
from serving.auth import ClientKeys
from serving.bookkeeping import Bookkeeping, LocalBookkeeping
from serving.config import Settings
from serving.experiments import Experiments
from serving.health import Health, LocalHealth
from serving.loaded_model import ModelSlot
from serving.metrics import Metrics
from serving.outcomes import Outcomes
from serving.pipeline import Pipeline
from serving.rules import RuleSet

__all__ = ["Service"]

_Clock = Callable[[], float]


@dataclass(eq=False)
class Service:
    """Everything the service holds; built by `Service.load`."""

    settings: Settings
    catalog: Catalog
    metrics: Metrics
    models: ModelSlot
    health: Health
    book: Bookkeeping
    experiments: Experiments
    rules: RuleSet
    pipeline: Pipeline
    outcomes: Outcomes
    admin_key: str | None
    clients: ClientKeys
    clock: _Clock
    wall_clock: _Clock
    store: Any = None  # serving.shared.RedisStore when the state is shared

    @classmethod
    def load(
        cls,
        settings: Settings,
        *,
        clock: _Clock = time.monotonic,
        wall_clock: _Clock = time.time,
        metrics: Metrics | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Service:
        """Load and check everything.

        Parameters
        ----------
        settings : the validated configuration
        clock : monotonic seconds for breakers, statistics and pending decisions (fake in tests)
        wall_clock : unix seconds for the decision log's "ts"
        metrics : the app's metrics (a fresh registry when None)
        environ : where the admin and client API keys are read from (``os.environ`` by default)

        Raises
        ------
        ConfigError, ArtifactError
            A bad catalog, artifact, or config that names models the service cannot route to.
        """
        metrics = metrics if metrics is not None else Metrics()
        env = os.environ if environ is None else environ
        admin_key = env.get(settings.admin_api_key_env) or None
        clients = ClientKeys.from_config(
            [(c.name, c.key_env) for c in settings.client_keys],
            settings.client_keys_env,
            env,
            admin_key=admin_key,
        )
        artifact = str(settings.artifact or _default_artifact())
        router, manifest = load_router(artifact)
        catalog = _service_catalog(settings, manifest, artifact)
        metrics.bind_models(catalog.names)
        models = ModelSlot(
            catalog,
            artifact,
            variant_artifacts=[
                v.artifact for e in settings.experiments for v in e.variants if v.artifact
            ],
            check_models=settings.check_models,
            metrics=metrics,
            loaded=(router, manifest),
        )
        # After every check: the decision log's file is created only for a service that runs.
        store, health, book, experiments = _state(settings, catalog, metrics, clock, wall_clock)
        rules = RuleSet.compile(settings.rules)
        pipeline = Pipeline(
            settings=settings,
            models=models,
            health=health,
            book=book,
            experiments=experiments,
            rules=rules,
            metrics=metrics,
        )
        return cls(
            settings=settings,
            catalog=catalog,
            metrics=metrics,
            models=models,
            health=health,
            book=book,
            experiments=experiments,
            rules=rules,
            pipeline=pipeline,
            outcomes=_outcomes(store, models, health, experiments, book),
            admin_key=admin_key,
            clients=clients,
            clock=clock,
            wall_clock=wall_clock,
            store=store,
        )

    async def start(self) -> None:
        """Start the background work of the state backend (inside the serving event loop)."""
        if self.store is not None:
            await self.store.start()
        await self.health.start()

    async def close(self) -> None:
        """Close the decision log, the health backend and the shared-state connection."""
        await self.book.close()
        await self.health.close()
        if self.store is not None:
            await self.store.close()

    def state_status(self) -> dict[str, Any]:
        """Which state backend serves, and whether it is degraded (for /readyz)."""
        if self.store is None:
            return {"backend": "memory", "degraded": False}
        return self.store.status()

    def describe(self) -> dict[str, Any]:
        """One line's worth of what is loaded, for start-up logs."""
        current = self.models.current
        return {
            "artifact": self.models.artifact_path,
            "router_version": current.version,
            "routable_models": len(current.universe),
        }


def _outcomes(
    store: Any, models: ModelSlot, health: Health, experiments: Experiments, book: Bookkeeping
) -> Outcomes:
    if store is None:
        return Outcomes(models, health, experiments, book)
    from serving.shared.outcomes import SharedOutcomes

    return SharedOutcomes(models, health, experiments, book, store=store)


def _state(
    settings: Settings, catalog: Catalog, metrics: Metrics, clock: _Clock, wall_clock: _Clock
) -> tuple[Any, Health, Bookkeeping, Experiments]:
    """The live-state parts for ``settings.state.backend``: (store or None, health, book,
    experiments)."""
    breakers = settings.breakers.to_settings()
    stats = settings.stats.to_settings()
    pending = settings.pending.to_settings()
    log = settings.decision_log.to_settings()
    percentile = settings.stats.latency_percentile
    if settings.state.backend == "memory":
        health: Health = LocalHealth(
            catalog,
            breakers=breakers,
            stats=stats,
            percentile=percentile,
            metrics=metrics,
            clock=clock,
        )
        book: Bookkeeping = LocalBookkeeping(
            pending, log, metrics=metrics, clock=clock, wall_clock=wall_clock
        )
        return None, health, book, Experiments(settings.experiments)
    # Imported here: the redis client is needed only by the shared backend.
    from serving.shared import RedisBookkeeping, RedisHealth, RedisStore, RedisTallies

    store = RedisStore(settings.state, metrics=metrics)
    # Shared timestamps are unix time (every replica reads the same clock); in tests the
    # wall clock is the fake one all instances share.
    health = RedisHealth(
        catalog,
        breakers=breakers,
        stats=stats,
        percentile=percentile,
        metrics=metrics,
        store=store,
        clock=wall_clock,
        local_clock=clock,
    )
    book = RedisBookkeeping(
        pending,
        log,
        metrics=metrics,
        store=store,
        clock=wall_clock,
        local_clock=clock,
        wall_clock=wall_clock,
    )
    experiments = Experiments(settings.experiments, RedisTallies(settings.experiments, store))
    return store, health, book, experiments


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
