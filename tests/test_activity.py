"""Recent activity for the dashboard: bucketed by time, pruned to its window, totals kept."""

from __future__ import annotations

import pytest
from fakes import FakeClock, TestClient
from hypothesis import given
from hypothesis import strategies as st

from serving.activity import Activity, histogram_quantile
from serving.app import create_app
from serving.config import load_settings
from serving.metrics import DECISION_BUCKETS


def test_window_shares_spend_and_totals() -> None:
    clock = FakeClock(1_000_000.0)
    activity = Activity(DECISION_BUCKETS, clock=clock, bucket_seconds=10, window_seconds=900)
    activity.decision("a", "classifier", 60e-6, 0.002)
    clock.advance(600)
    activity.decision("a", "rule", 80e-6, 0.001)
    activity.decision("b", "classifier", 90e-6, 0.003)
    activity.decision("b", "classifier", 1e-3, 0.003)
    recent = activity.summary(5)
    assert recent["decisions"] == 3
    assert recent["models"]["b"] == {
        "decisions": 2,
        "estimated_spend_usd": 0.006,
        "by_stage": {"classifier": 2},
        "share": 2 / 3,
    }
    assert recent["models"]["a"]["by_stage"] == {"rule": 1}
    assert list(recent["models"]) == ["b", "a"]  # busiest first
    assert recent["totals"]["a"] == {"decisions": 2, "estimated_spend_usd": 0.003}
    everything = activity.summary(15)
    assert everything["decisions"] == 4 and len(everything["timeline"]) == 2
    clock.advance(920)  # past the window by more than a bucket
    assert activity.summary(15)["decisions"] == 0  # pruned, totals stay
    assert activity.summary(15)["totals"]["b"]["decisions"] == 2


def test_transitions_newest_first() -> None:
    clock = FakeClock(100.0)
    activity = Activity(DECISION_BUCKETS, clock=clock)
    activity.transition("a", "closed", "open", "5 consecutive failures")
    clock.advance(10)
    activity.transition("a", "open", "half_open", "cooldown over")
    assert [(t["ts"], t["to"]) for t in activity.summary(15)["breaker_transitions"]] == [
        (110.0, "half_open"),
        (100.0, "open"),
    ]


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = [1.0, 2.0, 4.0]
    assert histogram_quantile(0.5, bounds, [0, 0, 0, 0]) is None
    assert histogram_quantile(0.25, bounds, [2, 2, 0, 0]) == 0.5
    assert histogram_quantile(0.75, bounds, [2, 2, 0, 0]) == 1.5
    assert histogram_quantile(0.99, bounds, [0, 0, 0, 5]) == 4.0  # overflow: the last bound


@given(st.lists(st.integers(0, 50), min_size=4, max_size=4), st.floats(0.01, 1.0))
def test_histogram_quantile_lies_in_the_bucket_of_its_rank(counts: list[int], q: float) -> None:
    bounds = [1.0, 2.0, 4.0]
    value = histogram_quantile(q, bounds, counts)
    if sum(counts) == 0:
        assert value is None
        return
    assert value is not None and 0.0 <= value <= 4.0


@pytest.mark.parametrize("minutes", ["0", "16", "abc"])
def test_activity_endpoint_refuses_a_bad_window(tiny_artifact, catalog_path, minutes: str) -> None:
    settings = load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path))
    with TestClient(create_app(settings, environ={})) as client:
        response = client.get(f"/activity?minutes={minutes}")
        assert response.status_code == 422
        assert response.json()["error"]["field"] == "query.minutes"
        assert client.get("/activity?minutes=1").json()["decisions"] == 0
