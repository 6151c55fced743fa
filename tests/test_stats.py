from __future__ import annotations

import numpy as np
import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import UnknownModelError
from serving import stats
from serving.stats import ModelStats, StatsBoard, StatsSettings


def make(**overrides) -> tuple[ModelStats, FakeClock]:
    clock = FakeClock()
    return ModelStats(StatsSettings(**overrides), clock=clock), clock


def test_public_api() -> None:
    assert sorted(stats.__all__) == ["ModelStats", "StatsBoard", "StatsSettings"]


def test_empty_stats_are_none() -> None:
    s, _ = make()
    assert s.success_rate() is None
    assert s.latency_ms() is None
    assert s.latency_ms(99) is None
    assert s.snapshot() == {
        "calls": 0,
        "success_rate": None,
        "latency_ms": None,
        "mean_quality": None,
    }


def test_percentiles_on_known_data() -> None:
    s, _ = make()
    for ms in [50.0, 10.0, 40.0, 20.0, 30.0]:  # out of order on purpose
        s.record(success=True, latency_ms=ms)
    assert s.latency_ms(0) == 10.0
    assert s.latency_ms() == 30.0
    assert s.latency_ms(100) == 50.0
    assert s.latency_ms(25) == 20.0
    assert s.latency_ms(90) == pytest.approx(46.0)
    assert s.snapshot()["latency_ms"] == {
        "p50": 30.0,
        "p95": pytest.approx(48.0),
        "p99": pytest.approx(49.6),
    }


def test_single_latency_is_every_percentile() -> None:
    s, _ = make()
    s.record(success=True, latency_ms=123.0)
    assert [s.latency_ms(q) for q in (0, 50, 99, 100)] == [123.0] * 4


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50),
    q=st.floats(0, 100),
)
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    s, _ = make()
    for v in values:
        s.record(success=True, latency_ms=v)
    assert s.latency_ms(q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


def test_success_rate_and_mean_quality() -> None:
    s, _ = make()
    s.record(success=True, quality=1.0)
    s.record(success=False)
    s.record(success=True, quality=0.5, latency_ms=100.0)
    s.record(success=False, latency_ms=300.0)
    assert s.success_rate() == 0.5
    assert s.snapshot() == {
        "calls": 4,
        "success_rate": 0.5,
        "latency_ms": {"p50": 200.0, "p95": 290.0, "p99": 298.0},
        "mean_quality": 0.75,
    }


def test_window_by_count_keeps_the_latest() -> None:
    s, _ = make(window_size=3)
    s.record(success=False, latency_ms=1000.0)
    for ms in (10.0, 20.0, 30.0):
        s.record(success=True, latency_ms=ms)
    assert s.snapshot()["calls"] == 3
    assert s.success_rate() == 1.0
    assert s.latency_ms(100) == 30.0


def test_window_by_time_drops_old_entries() -> None:
    s, clock = make(window_seconds=60.0)
    s.record(success=False, latency_ms=1000.0, quality=0.0)
    clock.advance(30.0)
    s.record(success=True, latency_ms=10.0, quality=1.0)
    assert s.snapshot()["calls"] == 2
    clock.advance(29.9)
    assert s.success_rate() == 0.5
    clock.advance(0.1)  # the first entry is now exactly 60 s old: out
    assert s.snapshot() == {
        "calls": 1,
        "success_rate": 1.0,
        "latency_ms": {"p50": 10.0, "p95": 10.0, "p99": 10.0},
        "mean_quality": 1.0,
    }
    clock.advance(30.0)
    assert s.snapshot()["calls"] == 0
    assert s.latency_ms() is None
    assert s.success_rate() is None


def test_reads_reuse_the_cache_until_something_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = stats._derive

    def counting(entries):
        calls.append(len(entries))
        return real(entries)

    monkeypatch.setattr(stats, "_derive", counting)
    s, clock = make(window_seconds=60.0)
    s.record(success=True, latency_ms=10.0)
    clock.advance(10.0)
    s.record(success=True, latency_ms=20.0)
    for _ in range(5):
        s.snapshot()
        s.latency_ms(95)
        s.success_rate()
    assert calls == [2]
    s.record(success=False)
    s.success_rate()
    s.latency_ms()
    assert calls == [2, 3]
    clock.advance(50.0)  # the first entry leaves the window
    s.snapshot()
    s.snapshot()
    assert calls == [2, 3, 2]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"latency_ms": -1.0}, "latency_ms", id="negative-latency"),
        pytest.param({"latency_ms": float("nan")}, "latency_ms", id="nan-latency"),
        pytest.param({"latency_ms": float("inf")}, "latency_ms", id="inf-latency"),
        pytest.param({"quality": float("nan")}, "quality", id="nan-quality"),
    ],
)
def test_record_rejects_bad_numbers(kwargs: dict, field: str) -> None:
    s, _ = make()
    with pytest.raises(ValueError, match=f"^{field}: "):
        s.record(success=True, **kwargs)
    assert s.snapshot()["calls"] == 0


@pytest.mark.parametrize(
    "q",
    [
        pytest.param(-1.0, id="below"),
        pytest.param(100.5, id="above"),
        pytest.param(float("nan"), id="nan"),
    ],
)
def test_percentile_out_of_range(q: float) -> None:
    s, _ = make()
    with pytest.raises(ValueError, match="^percentile: "):
        s.latency_ms(q)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("window_size", 0, id="size-zero"),
        pytest.param("window_size", 1.5, id="size-float"),
        pytest.param("window_size", True, id="size-bool"),
        pytest.param("window_seconds", 0.0, id="seconds-zero"),
        pytest.param("window_seconds", float("nan"), id="seconds-nan"),
        pytest.param("window_seconds", "60", id="seconds-string"),
    ],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        StatsSettings(**{field: value})


def test_board() -> None:
    clock = FakeClock()
    board = StatsBoard(["a", "b"], StatsSettings(window_seconds=60.0), clock=clock)
    board["a"].record(success=True, latency_ms=100.0)
    board["a"].record(success=True, latency_ms=300.0)
    assert board.latency_ms("a", 50, 999.0) == 200.0
    assert board.latency_ms("b", 50, 999.0) == 999.0
    snap = board.snapshot()
    assert list(snap) == ["a", "b"]
    assert snap["a"]["calls"] == 2 and snap["b"]["calls"] == 0
    clock.advance(60.0)
    assert board.latency_ms("a", 95, 42.0) == 42.0
    assert "a" in board and "c" not in board and len(board) == 2
    with pytest.raises(UnknownModelError, match="unknown model 'c'; known: a, b"):
        board["c"]
    with pytest.raises(UnknownModelError):
        board.latency_ms("c", 50, 0.0)
