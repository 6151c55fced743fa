"""Config-defined A/B experiments: sticky assignment of users to variants, and their statistics.

Assignment is a pure function of (experiment name, user id), so every replica and every restart
puts a user in the same variant without shared state. The counters live in a `Tallies` store:
`LocalTallies` in this process's memory, behind one lock, or `serving.shared.RedisTallies`,
shared by every worker and replica (writes are queued with the request's other Redis commands;
`refresh` reads the shared figures before a summary). The statistics are plain Python (a Wilson interval, Welford means, a pooled two-proportion
z-test), so the service needs no scipy at request time.
"""

from __future__ import annotations

import abc
import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from serving.config import ExperimentConfig, VariantConfig

__all__ = ["Assignment", "Experiments", "LocalTallies", "Tallies", "VariantTally", "Welford"]

_Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class Assignment:
    """The variant a request was put in; model/knob/artifact all None means the normal router."""

    experiment: str
    variant: str
    model: str | None
    knob: float | None
    artifact: str | None


def _unit(key: str) -> float:
    """A uniform number in [0, 1] from the first 60 bits of sha256(`key`)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:15], 16) / 16**15


def _wilson_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion; None when there are no trials."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _two_proportion_p_value(s1: int, n1: int, s2: int, n2: int) -> float | None:
    """Two-sided p-value of a pooled two-proportion z-test; None when it is undefined."""
    if n1 == 0 or n2 == 0:
        return None
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:  # both all-success or both all-failure: no variance to test against
        return None
    z = (s1 / n1 - s2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


class Welford:
    """Running mean and variance in one pass, stable for large offsets."""

    __slots__ = ("n", "mean", "_m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self._m2 = 0.0

    @classmethod
    def of(cls, n: int, mean: float, m2: float) -> Welford:
        """A running state from its three numbers (as a shared store keeps them)."""
        w = cls()
        w.n, w.mean, w._m2 = n, mean, m2
        return w

    @property
    def m2(self) -> float:
        return self._m2

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self._m2 += delta * (x - self.mean)

    @property
    def variance(self) -> float | None:
        """Sample variance (n - 1 denominator); None below two observations."""
        return self._m2 / (self.n - 1) if self.n > 1 else None

    def summary(self) -> tuple[float | None, list[float] | None]:
        """The mean and its normal-approximation 95% interval."""
        if self.n == 0:
            return None, None
        variance = self.variance
        if variance is None:
            return self.mean, None
        half = _Z95 * math.sqrt(variance / self.n)
        return self.mean, [self.mean - half, self.mean + half]


class VariantTally:
    """One variant's counters: assignments, feedback, successes, latency, quality and cost."""

    __slots__ = ("assigned", "feedback", "successes", "latency", "quality", "cost", "escalated")

    def __init__(self) -> None:
        self.assigned = 0
        self.feedback = 0
        self.successes = 0
        self.latency = Welford()
        self.quality = Welford()
        self.cost = Welford()
        self.escalated = 0


class Tallies(abc.ABC):
    """Where the experiments' counters live. Writes never wait (a shared store queues them);
    reads see the figures as of the last `refresh`."""

    @abc.abstractmethod
    def add_assignment(self, experiment: str, variant: str) -> None:
        """Count one served decision."""

    @abc.abstractmethod
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
        """Count one outcome (values already validated)."""

    @abc.abstractmethod
    def get(self, experiment: str, variant: str) -> VariantTally:
        """The variant's counters as last known (a copy or a live object: read-only)."""

    async def refresh(self) -> None:  # noqa: B027 - nothing to do for a local store
        """Bring `get`'s figures up to date with a shared store."""


class LocalTallies(Tallies):
    """Counters in this process's memory."""

    def __init__(self, configs: Sequence[ExperimentConfig]) -> None:
        self._stats = {c.name: {v.name: VariantTally() for v in c.variants} for c in configs}
        self._lock = threading.Lock()

    def add_assignment(self, experiment: str, variant: str) -> None:
        stats = self._stats[experiment][variant]
        with self._lock:
            stats.assigned += 1

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
        stats = self._stats[experiment][variant]
        with self._lock:
            stats.feedback += 1
            stats.successes += bool(success)
            if latency_ms is not None:
                stats.latency.add(float(latency_ms))
            if quality is not None:
                stats.quality.add(float(quality))
            if cost_usd is not None:
                stats.cost.add(float(cost_usd))
            stats.escalated += bool(escalated)

    def get(self, experiment: str, variant: str) -> VariantTally:
        return self._stats[experiment][variant]


@dataclass(frozen=True)
class _Experiment:
    config: ExperimentConfig
    task_types: frozenset[str] | None
    bounds: tuple[float, ...]  # cumulative normalised weights, last one exactly 1
    assignments: tuple[Assignment, ...]

    @classmethod
    def build(cls, config: ExperimentConfig) -> _Experiment:
        total = sum(v.weight for v in config.variants)
        bounds = [c / total for c in accumulate(v.weight for v in config.variants)]
        bounds[-1] = 1.0
        assignments = tuple(
            Assignment(config.name, v.name, v.model, v.knob, v.artifact) for v in config.variants
        )
        task_types = frozenset(config.task_types) if config.task_types is not None else None
        return cls(config, task_types, tuple(bounds), assignments)

    def admits(self, user_id: str, task_type: str | None) -> bool:
        if not self.config.enabled:
            return False
        if self.task_types is not None and task_type not in self.task_types:
            return False
        share = self.config.traffic_share
        return share >= 1.0 or _unit(f"{self.config.name}\0{user_id}\0traffic") < share

    def variant_for(self, user_id: str) -> Assignment:
        u = _unit(f"{self.config.name}\0{user_id}")
        for bound, assignment in zip(self.bounds, self.assignments, strict=True):
            if u < bound:
                return assignment
        return self.assignments[-1]  # u can round to exactly 1.0


class Experiments:
    """The configured experiments: assign requests to variants and summarise their outcomes.

    >>> from serving.config import ExperimentConfig, VariantConfig
    >>> variants = [{"name": "control", "weight": 1}, {"name": "cheap", "weight": 1, "knob": 2.0}]
    >>> exp = ExperimentConfig(name="knob", variants=variants)
    >>> experiments = Experiments([exp])
    >>> a = experiments.assign(user_id="alice", task_type=None)
    >>> a == experiments.assign(user_id="alice", task_type=None)
    True
    >>> experiments.assign(user_id=None, task_type=None) is None
    True
    """

    def __init__(self, configs: Sequence[ExperimentConfig], tallies: Tallies | None = None) -> None:
        self._experiments = {c.name: _Experiment.build(c) for c in configs}
        if len(self._experiments) != len(configs):
            raise ValueError("experiment names must be unique")
        self._variants = {c.name: [v.name for v in c.variants] for c in configs}
        self.tallies = tallies if tallies is not None else LocalTallies(configs)

    def assign(self, *, user_id: str | None, task_type: str | None) -> Assignment | None:
        """The variant of the first enabled experiment that admits this request, or None.

        An experiment admits a request when its `task_types` (if any) include `task_type` and
        the user falls within its `traffic_share`. Without a `user_id` nothing is assigned:
        stickiness needs one. Assignment does not count; call `record_assignment` when the
        decision is actually served.
        """
        if not user_id:
            return None
        for experiment in self._experiments.values():
            if experiment.admits(user_id, task_type):
                return experiment.variant_for(user_id)
        return None

    def record_assignment(self, a: Assignment) -> None:
        """Count one served decision for `a`'s variant; KeyError if it is not configured."""
        self._check(a.experiment, a.variant)
        self.tallies.add_assignment(a.experiment, a.variant)

    def record_outcome(
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
        """Add one feedback outcome; None latency, quality or cost leaves that mean unchanged.

        `escalated` counts requests the gateway answered with a stronger model after a failed
        check (their cost and latency include both calls).

        Raises
        ------
        KeyError
            When the experiment or variant is not configured.
        ValueError
            When `latency_ms` is negative or not finite, or `quality` is not finite.
        """
        if latency_ms is not None and not (math.isfinite(latency_ms) and latency_ms >= 0):
            raise ValueError(f"latency_ms must be a finite number >= 0, got {latency_ms!r}")
        if quality is not None and not math.isfinite(quality):
            raise ValueError(f"quality must be a finite number, got {quality!r}")
        self._check(experiment, variant)
        self.tallies.add_outcome(
            experiment,
            variant,
            success=success,
            latency_ms=latency_ms,
            quality=quality,
            cost_usd=cost_usd if cost_usd is not None and math.isfinite(cost_usd) else None,
            escalated=escalated,
        )

    def summary(self, name: str) -> dict[str, Any]:
        """Counts, rates, means with 95% intervals and p-values vs the first variant.

        Raises KeyError for an unknown experiment (the HTTP layer turns that into a 404).
        """
        config = self._experiments[name].config  # KeyError for the caller
        stats = {v.name: self.tallies.get(name, v.name) for v in config.variants}
        control = stats[config.variants[0].name]
        rows = [
            self._row(v, stats[v.name], control if i else None)
            for i, v in enumerate(config.variants)
        ]
        return {
            "name": config.name,
            "enabled": config.enabled,
            "traffic_share": config.traffic_share,
            "task_types": list(config.task_types) if config.task_types is not None else None,
            "variants": rows,
        }

    def summaries(self) -> list[dict[str, Any]]:
        """`summary` of every experiment, in config order."""
        return [self.summary(name) for name in self._experiments]

    def names(self) -> list[str]:
        """Experiment names in config order (disabled ones included)."""
        return list(self._experiments)

    def _check(self, experiment: str, variant: str) -> None:
        variants = self._variants.get(experiment)
        if variants is None:
            known = ", ".join(self._variants)
            raise KeyError(f"unknown experiment {experiment!r}; known: {known}")
        if variant not in variants:
            known = ", ".join(variants)
            raise KeyError(f"unknown variant {variant!r} of {experiment!r}; known: {known}")

    @staticmethod
    def _row(
        variant: VariantConfig, stats: VariantTally, control: VariantTally | None
    ) -> dict[str, Any]:
        rate = stats.successes / stats.feedback if stats.feedback else None
        interval = _wilson_interval(stats.successes, stats.feedback)
        latency, latency_ci = stats.latency.summary()
        quality, quality_ci = stats.quality.summary()
        cost, cost_ci = stats.cost.summary()
        return {
            "name": variant.name,
            "weight": variant.weight,
            "model": variant.model,
            "knob": variant.knob,
            "artifact": variant.artifact,
            "assigned": stats.assigned,
            "feedback": stats.feedback,
            "success_rate": rate,
            "success_rate_ci95": list(interval) if interval is not None else None,
            "mean_latency_ms": latency,
            "mean_latency_ms_ci95": latency_ci,
            "mean_quality": quality,
            "mean_quality_ci95": quality_ci,
            "mean_cost_usd": cost,
            "mean_cost_usd_ci95": cost_ci,
            "escalated": stats.escalated,
            "p_value_vs_control": None
            if control is None
            else _two_proportion_p_value(
                control.successes, control.feedback, stats.successes, stats.feedback
            ),
        }
