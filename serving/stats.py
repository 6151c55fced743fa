"""Rolling live statistics per model: success rate, latency percentiles, mean quality.

The window is the last `window_size` outcomes that are younger than `window_seconds`. Reads run
on every routed request, so derived numbers are cached and recomputed only after a new record or
when time pushes an entry out of the window; an idle read is O(1).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from models.errors import UnknownModelError

__all__ = ["ModelStats", "StatsBoard", "StatsSettings"]

_Clock = Callable[[], float]


@dataclass(frozen=True)
class StatsSettings:
    """The rolling window; a bad value raises ValueError naming the field."""

    window_size: int = 200
    window_seconds: float = 300.0

    def __post_init__(self) -> None:
        size = self.window_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"window_size: must be an integer >= 1, got {size!r}")
        secs = self.window_seconds
        if (
            isinstance(secs, bool)
            or not isinstance(secs, int | float)
            or not math.isfinite(secs)
            or secs <= 0
        ):
            raise ValueError(f"window_seconds: must be a finite number > 0, got {secs!r}")


class _Entry(NamedTuple):
    ts: float
    success: bool
    latency_ms: float | None
    quality: float | None


class _Derived(NamedTuple):
    calls: int
    success_rate: float | None
    latencies: list[float]  # sorted
    mean_quality: float | None


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    rank = q / 100.0 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def _check_percentile(q: float) -> None:
    if not (0.0 <= q <= 100.0):  # also rejects NaN
        raise ValueError(f"percentile: must be in [0, 100], got {q!r}")


class ModelStats:
    """The rolling statistics of one model. Thread-safe.

    Examples
    --------
    >>> s = ModelStats(StatsSettings())
    >>> for ms in (100.0, 200.0, 300.0):
    ...     s.record(success=True, latency_ms=ms)
    >>> s.latency_ms(50), s.success_rate()
    (200.0, 1.0)
    """

    def __init__(
        self,
        settings: StatsSettings = StatsSettings(),  # noqa: B008 - frozen, safe to share
        *,
        clock: _Clock = time.monotonic,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: deque[_Entry] = deque(maxlen=settings.window_size)
        self._derived: _Derived | None = None  # None: stale, recompute on the next read

    def record(
        self, *, success: bool, latency_ms: float | None = None, quality: float | None = None
    ) -> None:
        """Add one outcome. Latency must be finite and >= 0; quality finite (ValueError)."""
        if latency_ms is not None and not (0.0 <= latency_ms < math.inf):
            raise ValueError(f"latency_ms: must be a finite number >= 0, got {latency_ms!r}")
        if quality is not None and not math.isfinite(quality):
            raise ValueError(f"quality: must be a finite number, got {quality!r}")
        with self._lock:
            # Stamped under the lock so entries stay in time order, which pruning relies on.
            self._entries.append(_Entry(self._clock(), bool(success), latency_ms, quality))
            self._derived = None

    def success_rate(self) -> float | None:
        """Share of successful calls in the window; None when the window is empty."""
        return self._current().success_rate

    def latency_ms(self, percentile: float = 50.0) -> float | None:
        """The observed latency percentile in the window; None when no latency was recorded."""
        _check_percentile(percentile)
        ordered = self._current().latencies
        return _percentile(ordered, percentile) if ordered else None

    def snapshot(self) -> dict:
        """JSON-ready summary: calls, success_rate, latency_ms {p50, p95, p99}, mean_quality."""
        d = self._current()
        latency = (
            {f"p{q}": _percentile(d.latencies, q) for q in (50, 95, 99)} if d.latencies else None
        )
        return {
            "calls": d.calls,
            "success_rate": d.success_rate,
            "latency_ms": latency,
            "mean_quality": d.mean_quality,
        }

    def _current(self) -> _Derived:
        with self._lock:
            entries = self._entries
            cutoff = self._clock() - self.settings.window_seconds
            # Entries are in time order, so looking at the oldest one is enough when idle.
            while entries and entries[0].ts <= cutoff:
                entries.popleft()
                self._derived = None
            if self._derived is None:
                self._derived = _derive(entries)
            return self._derived


def _derive(entries: Iterable[_Entry]) -> _Derived:
    calls = successes = 0
    latencies: list[float] = []
    qualities: list[float] = []
    for e in entries:
        calls += 1
        successes += e.success
        if e.latency_ms is not None:
            latencies.append(e.latency_ms)
        if e.quality is not None:
            qualities.append(e.quality)
    latencies.sort()
    return _Derived(
        calls=calls,
        success_rate=successes / calls if calls else None,
        latencies=latencies,
        mean_quality=math.fsum(qualities) / len(qualities) if qualities else None,
    )


class StatsBoard:
    """The statistics of every catalog model, by name."""

    def __init__(
        self,
        models: Iterable[str],
        settings: StatsSettings = StatsSettings(),  # noqa: B008 - frozen, safe to share
        *,
        clock: _Clock = time.monotonic,
    ) -> None:
        self._stats = {m: ModelStats(settings, clock=clock) for m in models}

    def __getitem__(self, model: str) -> ModelStats:
        try:
            return self._stats[model]
        except KeyError:
            raise UnknownModelError(model, list(self._stats)) from None

    def __contains__(self, model: object) -> bool:
        return model in self._stats

    def __len__(self) -> int:
        return len(self._stats)

    def snapshot(self) -> dict[str, dict]:
        return {m: s.snapshot() for m, s in self._stats.items()}

    def latency_ms(self, model: str, percentile: float, default: float) -> float:
        """The observed latency percentile of `model`, or `default` when nothing was observed."""
        observed = self[model].latency_ms(percentile)
        return default if observed is None else observed
