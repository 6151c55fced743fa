"""The loaded router: one verified artifact plus the arrays the hot path reads, and its slot.

`LoadedModel` is immutable: a request never changes it, a reload replaces the whole object
(one reference swap in `ModelSlot`), so a request sees the old model or the new one, never a mix.
`ModelSlot` also holds the experiment arms that route with another artifact.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.artifact import load_router
from models.catalog import Catalog
from models.errors import ArtifactError, ConfigError
from models.router import Router
from serving.metrics import Metrics

__all__ = ["LoadedModel", "ModelSlot", "build_loaded_model"]

_log = logging.getLogger("promptroute.service")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One verified router and everything derived from it at load time.

    The index space is the router's models first (``n_scored`` of them, in `Router.models`
    order: the ones it has learned scores for), then the catalog's other models in catalog
    order. Those *unscored* models are never ranked by the learned router: rules, experiments
    and `candidates` can pin them, and when they are the only eligible models the decision falls
    back to the catalog's order (its documented preference). Every array below is in this
    order. They are read-only: a reload replaces the whole object.
    """

    router: Router
    manifest: Mapping[str, Any]
    path: str
    names: tuple[str, ...]
    index: Mapping[str, int]
    n_scored: int
    universe: frozenset[str]  # every model this service may send requests to with this model
    scored: frozenset[str]  # catalog ∩ router.models: what the learned router ranks
    routable: np.ndarray  # bool, True for models in the catalog
    context_window: np.ndarray  # float64, 0 for models outside the catalog
    min_context_window: float  # the smallest routable window, and the smallest window minus
    min_context_slack: float  # the expected output tokens: prompts within it fit everywhere
    vision: np.ndarray  # bool
    catalog_index: np.ndarray  # int64 positions in the health view's (catalog-order) arrays
    input_price: np.ndarray  # USD per token: the router's for scored models, else the catalog's
    output_price: np.ndarray
    output_tokens: np.ndarray  # learned for scored models, the catalog's typical otherwise
    # unscored_tail's answers by mask (bounded; a cache, not part of the value)
    _tails: dict[bytes, tuple[tuple[int, ...], str]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @property
    def version(self) -> str:
        return self.router.version

    def mask_of(self, names: Iterable[str]) -> np.ndarray:
        """Boolean mask of the given names (names this model does not know are ignored)."""
        mask = np.zeros(len(self.names), dtype=bool)
        index = self.index
        for name in names:
            i = index.get(name)
            if i is not None:
                mask[i] = True
        return mask & self.routable

    def estimate_cost(self, input_tokens: int, expected_output_tokens: int | None) -> np.ndarray:
        """This request's estimated cost per model (USD)."""
        out = self.output_tokens if expected_output_tokens is None else expected_output_tokens
        return self.input_price * input_tokens + self.output_price * out

    def unscored_tail(self, mask: np.ndarray) -> tuple[tuple[int, ...], str]:
        """(the eligible unscored models' indices in catalog order, their names listed) for a
        mask over the index space. Requests mostly repeat a few masks (usually: all of them),
        so the answer is kept per mask: building it cost a decision several microseconds."""
        key = mask[self.n_scored :].tobytes()
        hit = self._tails.get(key)
        if hit is None:
            tail = tuple((np.flatnonzero(mask[self.n_scored :]) + self.n_scored).tolist())
            hit = (tail, ", ".join(self.names[i] for i in tail))
            if len(self._tails) < _MAX_TAILS:
                self._tails[key] = hit
        return hit

    def unscored_note(self, name: str) -> str | None:
        """Why `name` is not ranked by the learned router (None when it is)."""
        if name in self.scored:
            return None
        return (
            f"router {self.version} has no learned scores for {name}: it is used when a rule, "
            "an experiment or `candidates` pins it, or when no scored model can take the "
            "request (then the catalog's order decides)"
        )


_MAX_TAILS = 256


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


def build_loaded_model(
    router: Router, manifest: Mapping[str, Any], path: str, catalog: Catalog
) -> LoadedModel:
    """Precompute the hot path's arrays for `router`; ArtifactError if it can route nowhere."""
    specs = [catalog.get(name) for name in router.models]
    scored = frozenset(name for name, spec in zip(router.models, specs, strict=True) if spec)
    if not scored:
        raise ArtifactError(
            f"{path}: none of the artifact's models ({', '.join(router.models)}) is in the "
            f"catalog ({', '.join(catalog.names)}); nothing could be routed"
        )
    known = set(router.models)
    extras = [spec for spec in catalog.models if spec.name not in known]
    names = (*router.models, *(spec.name for spec in extras))
    all_specs = [*specs, *extras]
    window = np.array([s.context_window if s else 0 for s in all_specs], dtype=np.float64)
    routable = np.array([s is not None for s in all_specs], dtype=bool)
    typical = float(catalog.typical_output_tokens)
    output_tokens = np.concatenate(
        [np.asarray(router.output_tokens, dtype=np.float64), np.full(len(extras), typical)]
    )
    input_price = np.concatenate(
        [router.input_price, [s.input_price_per_1m / 1e6 for s in extras]]
    ).astype(np.float64)
    output_price = np.concatenate(
        [router.output_price, [s.output_price_per_1m / 1e6 for s in extras]]
    ).astype(np.float64)
    position = {name: i for i, name in enumerate(catalog.names)}
    return LoadedModel(
        router=router,
        manifest=manifest,
        path=path,
        names=names,
        index={name: i for i, name in enumerate(names)},
        n_scored=len(router.models),
        universe=scored | frozenset(spec.name for spec in extras),
        scored=scored,
        routable=_frozen(routable),
        context_window=_frozen(window),
        min_context_window=float(window[routable].min()),
        min_context_slack=float((window - output_tokens)[routable].min()),
        vision=_frozen(np.array([bool(s and "vision" in s.capabilities) for s in all_specs])),
        catalog_index=_frozen(np.array([position.get(name, 0) for name in names], dtype=np.int64)),
        input_price=_frozen(input_price),
        output_price=_frozen(output_price),
        output_tokens=_frozen(output_tokens),
    )


class ModelSlot:
    """The model that serves now, the experiment arms, and the reload that swaps the former.

    Parameters
    ----------
    catalog : the service's catalog (fixed for the life of the process)
    artifact : the configured artifact's path
    variant_artifacts : artifacts that experiment arms route with
    check_models : raises ConfigError when the config names a model the loaded router cannot
        route to (``Settings.check_models``)
    metrics : counts reloads
    """

    def __init__(
        self,
        catalog: Catalog,
        artifact: str,
        *,
        variant_artifacts: Iterable[str] = (),
        check_models: Callable[[frozenset[str]], None],
        metrics: Metrics,
        loaded: tuple[Router, Mapping[str, Any]] | None = None,
    ) -> None:
        self.catalog = catalog
        self._check_models = check_models
        self._metrics = metrics
        self.artifact_path = artifact
        router, manifest = loaded if loaded is not None else load_router(artifact)
        self.current: LoadedModel = self._build(router, manifest, artifact)
        self.variants: dict[str, LoadedModel] = {}
        for path in variant_artifacts:
            if path not in self.variants:
                self.variants[path] = self._build(*load_router(path), path)
        self._reload_lock = threading.Lock()

    def _build(self, router: Router, manifest: Mapping[str, Any], path: str) -> LoadedModel:
        loaded = build_loaded_model(router, manifest, path, self.catalog)
        try:
            self._check_models(loaded.universe)
        except ConfigError as exc:
            raise ConfigError(
                exc.field, f"{exc.reason} (routable with artifact {path})", source=exc.source
            ) from None
        return loaded

    def for_artifact(self, artifact: str | None) -> LoadedModel:
        """The experiment arm's model for `artifact`, or the current one for None."""
        return self.current if artifact is None else self.variants[artifact]

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
                self._metrics.reload(False)
                raise
            old, self.current = self.current, new  # one reference swap: old or new, never a mix
            self.artifact_path = target
        self._metrics.reload(True)
        _log.info("reloaded %s: router %s -> %s", target, old.version, new.version)
        return old, new

    def routable_names(self) -> frozenset[str]:
        """Models any loaded router may route to (the current model and experiment arms)."""
        names = self.current.universe
        for variant in self.variants.values():
            names = names | variant.universe
        return names
