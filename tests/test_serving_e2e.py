"""End to end: a real uvicorn server on a free port, real HTTP, a breaker tripped by feedback."""

from __future__ import annotations

import httpx
import pytest
import yaml
from fakes import LiveServer

from models.catalog import load_catalog
from serving import create_app, load_settings
from serving.decision_log import read_joined_rows

PROMPT = "Write a Python function that checks whether a number is prime."


@pytest.fixture
def live(tiny_artifact, tiny_router, tmp_path):
    data = load_catalog().to_dict(only=tiny_router.models)
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog),
        breakers={"consecutive_failures": 2, "min_calls": 2, "window_size": 4},
        decision_log={"path": str(tmp_path / "decisions.jsonl")},
    )
    server = LiveServer(create_app(config, environ={}))
    server.url = server.start()
    server.log = tmp_path / "decisions.jsonl"
    try:
        yield server
    finally:
        if server.thread.is_alive():
            server.stop()


def test_feedback_trips_a_breaker_and_traffic_moves(live):
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert client.get("/readyz").status_code == 200
        first = client.post("/route", json={"prompt": PROMPT})
        assert first.status_code == 200
        chosen = first.json()["model"]
        request_id, states = first.json()["request_id"], []
        while not states or states[-1] != "open":
            feedback = client.post(
                "/feedback",
                json={"request_id": request_id, "success": False, "error_type": "http_500"},
            )
            assert feedback.status_code == 200
            states.append(feedback.json()["breaker"])
            assert len(states) <= 2
            if states[-1] != "open":
                again = client.post("/route", json={"prompt": PROMPT}).json()
                assert again["model"] == chosen  # still closed: still the best
                request_id = again["request_id"]
        assert states == ["closed", "open"]
        moved = [client.post("/route", json={"prompt": PROMPT}).json() for _ in range(3)]
        assert {d["model"] for d in moved} == {first.json()["fallbacks"][0]}
        assert all(d["reason"]["removed"][chosen]["filter"] == "breaker" for d in moved)
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models[chosen]["breaker"]["state"] == "open"
        metrics = client.get("/metrics").text
        assert f'promptroute_breaker_state{{model="{chosen}"}} 2.0' in metrics


def test_decisions_are_in_the_log_before_shutdown(live):
    with httpx.Client(base_url=live.url, timeout=10) as client:
        ids = [
            client.post("/route", json={"prompt": PROMPT}).json()["request_id"] for _ in range(2)
        ]
        client.post("/feedback", json={"request_id": ids[0], "success": True})
    assert len(live.log.read_text().splitlines()) == 3  # two decisions, one outcome
    live.stop()
    assert len(live.log.read_text().splitlines()) == 3  # shutdown adds nothing
    rows = read_joined_rows(live.log)
    assert [(r["id"], r["success"]) for r in rows] == [(ids[0], True), (ids[1], None)]
