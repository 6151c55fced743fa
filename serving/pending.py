"""Routing decisions waiting for their feedback, in bounded memory.

Feedback may never come, so every decision leaves either through `pop` (its feedback arrived) or
through `on_evict` — exactly once either way — with the reason: "expired" (older than
`max_age_seconds`), "capacity" (pushed out by newer ones beyond `max_items`, or beyond
`max_bytes` as the `sizeof` callable measures them), "replaced" (a newer decision was put under
the same request id) or "shutdown" (`drain`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["EvictHook", "PendingDecisions", "PendingSettings"]

_log = logging.getLogger("promptroute.pending")

_Clock = Callable[[], float]
EvictHook = Callable[[str, Any, str], None]


@dataclass(frozen=True)
class PendingSettings:
    """Bounds on the pending decisions; a bad value raises ValueError naming the field."""

    max_items: int = 100_000
    max_age_seconds: float = 3600.0
    max_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_items", "max_bytes"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {n!r}")
        age = self.max_age_seconds
        if (
            isinstance(age, bool)
            or not isinstance(age, int | float)
            or not math.isfinite(age)
            or age <= 0
        ):
            raise ValueError(f"max_age_seconds: must be a finite number > 0, got {age!r}")


class PendingDecisions:
    """Decisions by request id, oldest first. Thread-safe; `on_evict` runs outside the lock.

    An exception from `on_evict` is logged and does not stop the other evictions.

    Examples
    --------
    >>> p = PendingDecisions(PendingSettings())
    >>> p.put("r1", {"model": "a"})
    >>> p.pop("r1"), p.pop("r1")
    ({'model': 'a'}, None)
    """

    def __init__(
        self,
        settings: PendingSettings = PendingSettings(),  # noqa: B008 - frozen, safe to share
        *,
        clock: _Clock = time.monotonic,
        on_evict: EvictHook | None = None,
        sizeof: Callable[[Any], int] | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._on_evict = on_evict
        self._sizeof = sizeof if sizeof is not None else _no_size
        self._lock = threading.Lock()
        # request_id -> (put time, value, size); insertion order is time order, oldest first.
        self._items: OrderedDict[str, tuple[float, Any, int]] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        """The held values' total size, as `sizeof` measures them (0 without one)."""
        return self._bytes

    def put(self, request_id: str, value: Any) -> None:
        """Hold `value` until `pop(request_id)`; evicts expired and over-capacity decisions."""
        evicted: list[tuple[str, Any, str]] = []
        size = self._sizeof(value)
        with self._lock:
            now = self._clock()
            old = self._items.pop(request_id, None)
            if old is not None:
                self._bytes -= old[2]
                evicted.append((request_id, old[1], "replaced"))
            self._items[request_id] = (now, value, size)
            self._bytes += size
            # Expiring here too keeps memory bounded by age even if nobody calls `expire`.
            self._expire_locked(now, evicted)
            s = self.settings
            # The newest value always stays, even alone over max_bytes: it was just served.
            while len(self._items) > s.max_items or (
                self._bytes > s.max_bytes and len(self._items) > 1
            ):
                rid, (_, v, n) = self._items.popitem(last=False)
                self._bytes -= n
                evicted.append((rid, v, "capacity"))
        self._notify(evicted)

    def get(self, request_id: str) -> Any | None:
        """The decision for `request_id`, left in place; None if unknown or expired (then
        evicted)."""
        return self._take(request_id, remove=False)

    def pop(self, request_id: str) -> Any | None:
        """The decision for `request_id`, removed; None if unknown or expired (then evicted)."""
        return self._take(request_id, remove=True)

    def _take(self, request_id: str, *, remove: bool) -> Any | None:
        evicted: list[tuple[str, Any, str]] = []
        with self._lock:
            item = self._items.get(request_id)
            if item is None:
                return None
            ts, value, size = item
            fresh = self._clock() - ts < self.settings.max_age_seconds
            if fresh and not remove:
                return value
            del self._items[request_id]
            self._bytes -= size
            if fresh:
                return value
            evicted.append((request_id, value, "expired"))
        self._notify(evicted)
        return None

    def expire(self) -> int:
        """Evict every decision at least `max_age_seconds` old; returns how many."""
        evicted: list[tuple[str, Any, str]] = []
        with self._lock:
            self._expire_locked(self._clock(), evicted)
        self._notify(evicted)
        return len(evicted)

    def drain(self) -> int:
        """Evict everything with reason "shutdown"; returns how many."""
        with self._lock:
            evicted = [(rid, v, "shutdown") for rid, (_, v, _n) in self._items.items()]
            self._items.clear()
            self._bytes = 0
        self._notify(evicted)
        return len(evicted)

    def _expire_locked(self, now: float, evicted: list[tuple[str, Any, str]]) -> None:
        cutoff = now - self.settings.max_age_seconds
        items = self._items
        while items:
            rid, (ts, value, size) = next(iter(items.items()))
            if ts > cutoff:
                break
            del items[rid]
            self._bytes -= size
            evicted.append((rid, value, "expired"))

    def _notify(self, evicted: list[tuple[str, Any, str]]) -> None:
        if self._on_evict is None:
            return
        for rid, value, why in evicted:
            try:
                self._on_evict(rid, value, why)
            except Exception:
                _log.exception("on_evict failed for request %s (%s)", rid, why)


def _no_size(_value: Any) -> int:
    return 0
