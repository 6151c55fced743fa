from __future__ import annotations

import dataclasses
import logging

import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import UnknownModelError
from serving import breakers
from serving.breakers import BreakerBoard, BreakerSettings, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def make(**overrides):
    """A breaker with a fake clock and a list that collects every transition."""
    clock = FakeClock()
    seen: list[tuple[str, BreakerState, BreakerState, str]] = []
    b = CircuitBreaker(
        "m",
        BreakerSettings(**overrides),
        clock=clock,
        on_transition=lambda *args: seen.append(args),
    )
    return b, clock, seen


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.settings.consecutive_failures):
        b.record_failure()
    assert b.state is OPEN


def test_public_api() -> None:
    assert sorted(breakers.__all__) == [
        "BreakerBoard",
        "BreakerSettings",
        "BreakerState",
        "CircuitBreaker",
        "TransitionHook",
    ]


def test_new_breaker_is_closed_and_available() -> None:
    b, _, seen = make()
    assert b.state is CLOSED
    assert b.available() is True
    assert b.snapshot() == {
        "state": "closed",
        "error_rate": None,
        "calls_in_window": 0,
        "consecutive_failures": 0,
        "cooldown_seconds": 10.0,
        "trips": 0,
        "probes_in_flight": 0,
    }
    assert seen == []


def test_consecutive_failures_open_the_breaker() -> None:
    # min_calls high so only the consecutive rule can fire
    b, clock, seen = make(consecutive_failures=3, window_size=20, min_calls=20)
    b.record_failure()
    b.record_failure()
    assert b.state is CLOSED
    b.record_failure()
    assert b.state is OPEN
    assert b.available() is False
    assert seen == [("m", CLOSED, OPEN, "3 consecutive failures")]
    snap = b.snapshot()
    assert snap["opened_at"] == clock.now
    assert snap["trips"] == 1
    assert snap["consecutive_failures"] == 3


def test_a_success_resets_the_consecutive_count() -> None:
    b, _, _ = make(consecutive_failures=3, min_calls=20)
    for _ in range(5):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.state is CLOSED
    assert b.snapshot()["consecutive_failures"] == 0


def test_error_rate_needs_min_calls() -> None:
    b, _, seen = make(min_calls=4, error_rate_threshold=0.5, consecutive_failures=100)
    b.record_failure()
    b.record_failure()
    b.record_success()
    # 2/3 > 0.5 but only 3 calls
    assert b.state is CLOSED
    b.record_failure()
    # 3/4 = 0.75 over 4 calls
    assert b.state is OPEN
    assert seen == [("m", CLOSED, OPEN, "error rate 0.75 > 0.50 over 4 calls")]


def test_error_rate_equal_to_threshold_does_not_open() -> None:
    b, _, _ = make(min_calls=4, error_rate_threshold=0.5, consecutive_failures=100)
    for ok in (True, False, True, False):
        (b.record_success if ok else b.record_failure)()
    assert b.snapshot()["error_rate"] == 0.5
    assert b.state is CLOSED


def test_window_by_size_forgets_old_outcomes() -> None:
    b, _, _ = make(window_size=4, min_calls=4, error_rate_threshold=0.5, consecutive_failures=100)
    b.record_failure()
    b.record_failure()
    for _ in range(4):
        b.record_success()
    # the two failures were pushed out
    assert b.snapshot()["error_rate"] == 0.0
    assert b.snapshot()["calls_in_window"] == 4
    b.record_failure()
    b.record_failure()
    # window: S S F F -> 0.5, not above
    assert b.snapshot()["error_rate"] == 0.5
    assert b.state is CLOSED
    b.record_failure()
    assert b.state is OPEN


def test_window_by_time_forgets_old_outcomes() -> None:
    b, clock, _ = make(
        window_seconds=60.0, min_calls=3, error_rate_threshold=0.5, consecutive_failures=100
    )
    b.record_failure()
    b.record_failure()
    clock.advance(60.0)  # exactly window_seconds old: no longer in the window
    assert b.snapshot()["calls_in_window"] == 0
    b.record_success()
    b.record_failure()
    b.record_success()
    assert b.snapshot()["calls_in_window"] == 3
    assert b.state is CLOSED


def test_window_by_time_keeps_outcomes_just_younger_than_the_window() -> None:
    b, clock, _ = make(
        window_seconds=60.0, min_calls=3, error_rate_threshold=0.5, consecutive_failures=100
    )
    b.record_failure()
    b.record_failure()
    clock.advance(59.9)
    b.record_success()
    assert b.snapshot()["calls_in_window"] == 3
    b.record_failure()
    assert b.state is OPEN


def test_open_turns_half_open_after_cooldown_on_read() -> None:
    b, clock, seen = make(cooldown_seconds=10.0)
    trip(b)
    clock.advance(9.99)
    assert b.state is OPEN
    assert b.available() is False
    clock.advance(0.01)
    assert b.available() is True
    assert b.state is HALF_OPEN
    assert seen[-1] == ("m", OPEN, HALF_OPEN, "cooldown 10s elapsed")


def test_late_feedback_while_open_is_ignored() -> None:
    b, clock, seen = make(cooldown_seconds=10.0, half_open_successes=1)
    trip(b)
    before = b.snapshot()
    for _ in range(10):
        b.record_success()
        b.record_failure()
    assert b.snapshot() == before
    assert seen[-1][2] is OPEN
    # nor does it count once half-open without a probe in flight
    clock.advance(10.0)
    b.record_success()
    b.record_failure()
    assert b.state is HALF_OPEN


def test_probes_close_the_breaker_after_enough_successes() -> None:
    b, clock, seen = make(cooldown_seconds=10.0, half_open_successes=2, half_open_max_probes=1)
    b.record_success()
    trip(b)
    clock.advance(10.0)
    assert b.available() is True
    b.on_routed()
    assert b.available() is False  # the only slot is taken
    b.record_success()
    assert b.state is HALF_OPEN
    assert b.available() is True
    b.on_routed()
    b.record_success()
    assert b.state is CLOSED
    assert [(old, new) for _, old, new, _ in seen] == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
    ]
    assert seen[-1][3] == "2 probe successes"
    snap = b.snapshot()
    assert snap["calls_in_window"] == 0  # window cleared on close
    assert snap["consecutive_failures"] == 0
    assert snap["cooldown_seconds"] == 10.0
    assert snap["trips"] == 1
    assert "opened_at" not in snap


def test_probe_failure_reopens_with_a_growing_capped_cooldown() -> None:
    b, clock, seen = make(cooldown_seconds=10.0, cooldown_multiplier=3.0, max_cooldown_seconds=50.0)
    trip(b)
    cooldowns = [b.snapshot()["cooldown_seconds"]]
    for _ in range(3):
        clock.advance(cooldowns[-1])
        assert b.state is HALF_OPEN
        b.on_routed()
        b.record_failure()
        assert b.state is OPEN
        cooldowns.append(b.snapshot()["cooldown_seconds"])
    assert cooldowns == [10.0, 30.0, 50.0, 50.0]
    assert b.snapshot()["trips"] == 4
    assert seen[-1] == ("m", HALF_OPEN, OPEN, "probe failed")
    # the cooldown really is 50 s now
    clock.advance(49.0)
    assert b.state is OPEN
    clock.advance(1.0)
    assert b.state is HALF_OPEN


def test_cooldown_returns_to_base_after_a_close() -> None:
    b, clock, _ = make(cooldown_seconds=10.0, half_open_successes=1)
    trip(b)
    clock.advance(10.0)
    b.on_routed()
    b.record_failure()
    assert b.snapshot()["cooldown_seconds"] == 20.0
    clock.advance(20.0)
    b.on_routed()
    b.record_success()
    assert b.state is CLOSED
    trip(b)
    assert b.snapshot()["cooldown_seconds"] == 10.0


def test_probe_slots_are_limited() -> None:
    b, clock, _ = make(half_open_max_probes=2, half_open_successes=5)
    trip(b)
    clock.advance(10.0)
    b.on_routed()
    assert b.available() is True
    b.on_routed()
    assert b.available() is False
    b.on_routed()  # lost a race: not counted as a probe
    assert b.snapshot()["probes_in_flight"] == 2
    b.record_success()
    assert b.snapshot()["probes_in_flight"] == 1
    assert b.available() is True


def test_a_probe_without_outcome_frees_its_slot_after_the_timeout() -> None:
    b, clock, _ = make(probe_timeout_seconds=30.0)
    trip(b)
    clock.advance(10.0)
    b.on_routed()
    clock.advance(29.9)
    assert b.available() is False
    clock.advance(0.1)
    assert b.available() is True
    assert b.snapshot()["probes_in_flight"] == 0
    # its outcome, arriving now, is late feedback
    b.record_failure()
    assert b.state is HALF_OPEN


def test_on_routed_does_nothing_while_closed_or_open() -> None:
    b, clock, _ = make()
    b.on_routed()
    assert b.snapshot()["probes_in_flight"] == 0
    trip(b)
    b.on_routed()
    clock.advance(10.0)
    assert b.snapshot()["probes_in_flight"] == 0
    assert b.available() is True


@pytest.mark.parametrize(
    "drive",
    [
        pytest.param(lambda b, c: None, id="closed"),
        pytest.param(lambda b, c: trip(b), id="open"),
        pytest.param(lambda b, c: (trip(b), c.advance(10.0), b.on_routed()), id="half-open"),
    ],
)
def test_reset_returns_to_closed_with_a_clean_slate(drive) -> None:
    b, clock, seen = make(cooldown_seconds=10.0)
    b.record_failure()
    drive(b, clock)
    was = b.state
    b.reset()
    assert b.state is CLOSED
    assert b.available() is True
    snap = b.snapshot()
    assert snap["calls_in_window"] == 0
    assert snap["consecutive_failures"] == 0
    assert snap["cooldown_seconds"] == 10.0
    assert snap["probes_in_flight"] == 0
    if was is CLOSED:
        assert seen == []
    else:
        assert seen[-1] == ("m", was, CLOSED, "reset")


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    b, clock, _ = make(half_open_successes=1)
    with caplog.at_level(logging.INFO, logger="promptroute.breakers"):
        trip(b)
        clock.advance(10.0)
        b.on_routed()
        b.record_success()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "breaker m: closed -> open (5 consecutive failures)"),
        (logging.INFO, "breaker m: open -> half_open (cooldown 10s elapsed)"),
        (logging.INFO, "breaker m: half_open -> closed (1 probe successes)"),
    ]


def test_on_transition_may_read_the_breaker() -> None:
    # the hook runs outside the lock, so reading the breaker from it must not deadlock
    clock = FakeClock()
    states: list[str] = []
    holder: dict[str, CircuitBreaker] = {}
    b = CircuitBreaker(
        "m",
        BreakerSettings(consecutive_failures=1),
        clock=clock,
        on_transition=lambda *a: states.append(holder["b"].snapshot()["state"]),
    )
    holder["b"] = b
    b.record_failure()
    assert states == ["open"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("window_size", 0, id="window_size-zero"),
        pytest.param("window_size", 2.5, id="window_size-float"),
        pytest.param("min_calls", True, id="min_calls-bool"),
        pytest.param("min_calls", 21, id="min_calls-above-window"),
        pytest.param("window_seconds", 0.0, id="window_seconds-zero"),
        pytest.param("error_rate_threshold", 1.5, id="threshold-above-one"),
        pytest.param("error_rate_threshold", float("nan"), id="threshold-nan"),
        pytest.param("consecutive_failures", -1, id="consecutive-negative"),
        pytest.param("cooldown_seconds", "10", id="cooldown-string"),
        pytest.param("cooldown_multiplier", 0.5, id="multiplier-below-one"),
        pytest.param("max_cooldown_seconds", 5.0, id="max-cooldown-below-base"),
        pytest.param("half_open_max_probes", 0, id="probes-zero"),
        pytest.param("half_open_successes", 0, id="successes-zero"),
        pytest.param("probe_timeout_seconds", float("inf"), id="probe-timeout-inf"),
    ],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        BreakerSettings(**{field: value})


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        BreakerSettings().window_size = 3  # type: ignore[misc]


def test_board_holds_one_breaker_per_model() -> None:
    clock = FakeClock()
    seen: list[tuple] = []
    board = BreakerBoard(
        ["a", "b", "c"],
        BreakerSettings(consecutive_failures=1),
        clock=clock,
        on_transition=lambda *a: seen.append(a),
    )
    board["b"].record_failure()
    assert board.available_mask(["c", "b", "a"]) == [True, False, True]
    assert seen == [("b", CLOSED, OPEN, "1 consecutive failures")]
    assert {m: s["state"] for m, s in board.snapshot().items()} == {
        "a": "closed",
        "b": "open",
        "c": "closed",
    }
    board.reset("b")
    assert board.available_mask(["a", "b", "c"]) == [True, True, True]
    assert "a" in board and "z" not in board and len(board) == 3


def test_board_rejects_unknown_models() -> None:
    board = BreakerBoard(["a", "b"], BreakerSettings())
    with pytest.raises(UnknownModelError, match=r"unknown model 'z'; known: a, b"):
        board["z"]
    with pytest.raises(UnknownModelError):
        board.available_mask(["a", "z"])
    with pytest.raises(UnknownModelError):
        board.reset("z")


_ops = st.one_of(
    st.just(("success",)),
    st.just(("failure",)),
    st.just(("routed",)),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=40.0)),
)


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(_ops, max_size=80),
    max_probes=st.integers(1, 3),
    successes=st.integers(1, 3),
    consecutive=st.integers(1, 4),
)
def test_never_too_many_probes_and_never_open_and_available(
    ops, max_probes: int, successes: int, consecutive: int
) -> None:
    b, clock, seen = make(
        window_size=6,
        min_calls=3,
        consecutive_failures=consecutive,
        cooldown_seconds=5.0,
        max_cooldown_seconds=30.0,
        half_open_max_probes=max_probes,
        half_open_successes=successes,
        probe_timeout_seconds=15.0,
    )
    for op in ops:
        if op[0] == "success":
            b.record_success()
        elif op[0] == "failure":
            b.record_failure()
        elif op[0] == "routed":
            b.on_routed()
        else:
            clock.advance(op[1])
        snap = b.snapshot()
        available = b.available()
        assert snap["probes_in_flight"] <= max_probes
        assert not (snap["state"] == "open" and available)
        if snap["state"] == "half_open":
            assert available == (snap["probes_in_flight"] < max_probes)
        assert 5.0 <= snap["cooldown_seconds"] <= 30.0
    # every reported transition starts where the previous one ended
    for (_, _, prev_new, _), (_, old, _, _) in zip(seen, seen[1:], strict=False):
        assert old is prev_new
