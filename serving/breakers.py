"""One circuit breaker per model: stop routing to a model that keeps failing, then probe it back.

    CLOSED ──(error rate or K consecutive failures)──> OPEN
    OPEN ──(cooldown elapsed, noticed on the next read)──> HALF_OPEN
    HALF_OPEN ──(a probe fails)──> OPEN, with the cooldown multiplied (capped)
    HALF_OPEN ──(enough probes succeed)──> CLOSED, window cleared, cooldown back to base

While HALF_OPEN only outcomes that can belong to a probe (one is in flight) count; anything else
is late feedback of a call made before the trip, like everything recorded while OPEN.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from models.errors import UnknownModelError

__all__ = ["BreakerBoard", "BreakerSettings", "BreakerState", "CircuitBreaker", "TransitionHook"]

_log = logging.getLogger("promptroute.breakers")

_Clock = Callable[[], float]
TransitionHook = Callable[[str, "BreakerState", "BreakerState", str], None]


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerSettings:
    """When a breaker opens and how it comes back; a bad value raises ValueError naming it."""

    window_size: int = 20
    window_seconds: float = 60.0
    min_calls: int = 5
    error_rate_threshold: float = 0.5
    consecutive_failures: int = 5
    cooldown_seconds: float = 10.0
    cooldown_multiplier: float = 2.0
    max_cooldown_seconds: float = 300.0
    half_open_max_probes: int = 1
    half_open_successes: int = 2
    probe_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        for name in (
            "window_size",
            "min_calls",
            "consecutive_failures",
            "half_open_max_probes",
            "half_open_successes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        for name in ("window_seconds", "cooldown_seconds", "probe_timeout_seconds"):
            _check_number(name, getattr(self, name), low=0.0, low_open=True)
        _check_number("error_rate_threshold", self.error_rate_threshold, low=0.0, high=1.0)
        _check_number("cooldown_multiplier", self.cooldown_multiplier, low=1.0)
        _check_number("max_cooldown_seconds", self.max_cooldown_seconds, low=0.0)
        if self.max_cooldown_seconds < self.cooldown_seconds:
            raise ValueError(
                f"max_cooldown_seconds: must be >= cooldown_seconds ({self.cooldown_seconds}),"
                f" got {self.max_cooldown_seconds}"
            )
        if self.min_calls > self.window_size:
            # The error-rate rule could never fire: the window never holds that many outcomes.
            raise ValueError(
                f"min_calls: must be <= window_size ({self.window_size}), got {self.min_calls}"
            )


def _check_number(
    name: str, value: object, *, low: float, high: float = math.inf, low_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"> {low}" if low_open else f">= {low}"
        if high != math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name}: must be {bound}, got {value!r}")


class CircuitBreaker:
    """The breaker of one model. Thread-safe; `on_transition` is called outside the lock.

    Parameters
    ----------
    model : str
        The model's name, passed to `on_transition` and used in log messages.
    settings : BreakerSettings
    clock : callable returning seconds
        Monotonic time; inject a fake in tests.
    on_transition : callable(model, old, new, reason), optional
        Called after every state change.

    Examples
    --------
    >>> b = CircuitBreaker("m", BreakerSettings(consecutive_failures=2))
    >>> b.record_failure(); b.record_failure()
    >>> b.state, b.available()
    (<BreakerState.OPEN: 'open'>, False)
    """

    def __init__(
        self,
        model: str,
        settings: BreakerSettings = BreakerSettings(),  # noqa: B008 - frozen, safe to share
        *,
        clock: _Clock = time.monotonic,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self._clock = clock
        self._on_transition = on_transition
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._window: deque[tuple[float, bool]] = deque(maxlen=settings.window_size)
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at: float | None = None
        self._cooldown = settings.cooldown_seconds
        self._trips = 0
        self._probes: deque[float] = deque()  # start times of probes in flight, oldest first
        self._probe_successes = 0

    # -- reads (hot path) --------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        with self._lock:
            events = self._refresh(self._clock())
            state = self._state
        self._emit(events)
        return state

    def available(self) -> bool:
        """May this model be selected now? Takes no probe slot (see `on_routed`)."""
        with self._lock:
            events = self._refresh(self._clock())
            if self._state is BreakerState.CLOSED:
                ok = True
            elif self._state is BreakerState.OPEN:
                ok = False
            else:
                ok = len(self._probes) < self.settings.half_open_max_probes
        self._emit(events)
        return ok

    def snapshot(self) -> dict:
        """State and counters as a JSON-ready dict; `error_rate` is None with no calls in window."""
        with self._lock:
            now = self._clock()
            events = self._refresh(now)
            self._prune_window(now)
            calls = len(self._window)
            snap: dict = {
                "state": self._state.value,
                "error_rate": self._failures_in_window / calls if calls else None,
                "calls_in_window": calls,
                "consecutive_failures": self._consecutive,
                "cooldown_seconds": self._cooldown,
                "trips": self._trips,
                "probes_in_flight": len(self._probes),
            }
            if self._opened_at is not None:
                snap["opened_at"] = self._opened_at
        self._emit(events)
        return snap

    # -- writes ------------------------------------------------------------------------------

    def on_routed(self) -> None:
        """The model was chosen for a request; while HALF_OPEN this takes a probe slot.

        With no slot free (another thread took the last one since `available()`), the call is
        not counted as a probe, so the limit holds.
        """
        if self._state is BreakerState.CLOSED:
            # Nothing to take or refresh (only OPEN and HALF_OPEN change with time): the hot path
            # for every healthy model skips the lock. A concurrent trip is ordered after this.
            return
        with self._lock:
            now = self._clock()
            events = self._refresh(now)
            if (
                self._state is BreakerState.HALF_OPEN
                and len(self._probes) < self.settings.half_open_max_probes
            ):
                self._probes.append(now)
        self._emit(events)

    def record_success(self) -> None:
        self._record(ok=True)

    def record_failure(self) -> None:
        self._record(ok=False)

    def reset(self) -> None:
        """Admin override: back to CLOSED with an empty window and the base cooldown."""
        with self._lock:
            events: list[tuple[BreakerState, BreakerState, str]] = []
            self._close(events, "reset")
        self._emit(events)

    # -- internals (call with the lock held) ------------------------------------------------

    def _record(self, *, ok: bool) -> None:
        with self._lock:
            now = self._clock()
            events = self._refresh(now)
            state = self._state
            if state is BreakerState.CLOSED:
                self._record_closed(now, ok, events)
            elif state is BreakerState.HALF_OPEN and self._probes:
                self._probes.popleft()
                if ok:
                    self._consecutive = 0
                    self._probe_successes += 1
                    if self._probe_successes >= self.settings.half_open_successes:
                        self._close(events, f"{self._probe_successes} probe successes")
                else:
                    self._consecutive += 1
                    self._cooldown = min(
                        self._cooldown * self.settings.cooldown_multiplier,
                        self.settings.max_cooldown_seconds,
                    )
                    self._open(now, events, "probe failed")
            # OPEN, or HALF_OPEN with no probe in flight: late feedback, ignored for state.
        self._emit(events)

    def _record_closed(
        self, now: float, ok: bool, events: list[tuple[BreakerState, BreakerState, str]]
    ) -> None:
        s = self.settings
        self._prune_window(now)
        if len(self._window) == self._window.maxlen and not self._window[0][1]:
            self._failures_in_window -= 1  # the append below pushes this failure out
        self._window.append((now, ok))
        if ok:
            self._consecutive = 0
            return
        self._failures_in_window += 1
        self._consecutive += 1
        calls = len(self._window)
        rate = self._failures_in_window / calls
        if self._consecutive >= s.consecutive_failures:
            self._open(now, events, f"{self._consecutive} consecutive failures")
        elif calls >= s.min_calls and rate > s.error_rate_threshold:
            self._open(
                now,
                events,
                f"error rate {rate:.2f} > {s.error_rate_threshold:.2f} over {calls} calls",
            )

    def _prune_window(self, now: float) -> None:
        cutoff = now - self.settings.window_seconds
        window = self._window
        while window and window[0][0] <= cutoff:
            _, ok = window.popleft()
            if not ok:
                self._failures_in_window -= 1

    def _refresh(self, now: float) -> list[tuple[BreakerState, BreakerState, str]]:
        """Apply what time alone changes: the cooldown ending and stale probe slots."""
        events: list[tuple[BreakerState, BreakerState, str]] = []
        if self._state is BreakerState.OPEN:
            assert self._opened_at is not None
            if now - self._opened_at >= self._cooldown:
                self._probes.clear()
                self._probe_successes = 0
                self._set(BreakerState.HALF_OPEN, events, f"cooldown {self._cooldown:g}s elapsed")
        elif self._state is BreakerState.HALF_OPEN:
            cutoff = now - self.settings.probe_timeout_seconds
            probes = self._probes
            while probes and probes[0] <= cutoff:
                probes.popleft()
        return events

    def _open(
        self, now: float, events: list[tuple[BreakerState, BreakerState, str]], reason: str
    ) -> None:
        self._opened_at = now
        self._trips += 1
        self._probes.clear()
        self._set(BreakerState.OPEN, events, reason)

    def _close(self, events: list[tuple[BreakerState, BreakerState, str]], reason: str) -> None:
        self._window.clear()
        self._failures_in_window = 0
        self._consecutive = 0
        self._opened_at = None
        self._cooldown = self.settings.cooldown_seconds
        self._probes.clear()
        self._probe_successes = 0
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED, events, reason)

    def _set(
        self,
        new: BreakerState,
        events: list[tuple[BreakerState, BreakerState, str]],
        reason: str,
    ) -> None:
        events.append((self._state, new, reason))
        self._state = new

    def _emit(self, events: list[tuple[BreakerState, BreakerState, str]]) -> None:
        for old, new, reason in events:
            level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            _log.log(
                level,
                "breaker %s: %s -> %s (%s)",
                self.model,
                old.value,
                new.value,
                reason,
            )
            if self._on_transition is not None:
                self._on_transition(self.model, old, new, reason)


class BreakerBoard:
    """The breakers of every catalog model, by name."""

    def __init__(
        self,
        models: Iterable[str],
        settings: BreakerSettings = BreakerSettings(),  # noqa: B008 - frozen, safe to share
        *,
        clock: _Clock = time.monotonic,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self._breakers = {
            m: CircuitBreaker(m, settings, clock=clock, on_transition=on_transition) for m in models
        }

    def __getitem__(self, model: str) -> CircuitBreaker:
        try:
            return self._breakers[model]
        except KeyError:
            raise UnknownModelError(model, list(self._breakers)) from None

    def __contains__(self, model: object) -> bool:
        return model in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def available_mask(self, models: Iterable[str]) -> list[bool]:
        """`available()` of each model in order; raises UnknownModelError for an unknown name."""
        return [self[m].available() for m in models]

    def snapshot(self) -> dict[str, dict]:
        return {m: b.snapshot() for m, b in self._breakers.items()}

    def reset(self, model: str) -> None:
        self[model].reset()
