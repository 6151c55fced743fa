"""POST /feedback, pending decisions, the decision log as training data, and experiments."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path

import pytest
from fakes import FakeClock, TestClient

from serving import create_app, load_settings
from serving.decision_log import read_joined_rows, read_log_lines
from training.logs import load_records

PROMPT = "Summarize the plot of Hamlet in three sentences."
SECRET = "my-account-number-12345 please keep this private"
WALL = 1_700_000_000.0


@pytest.fixture
def log_path(tmp_path) -> Path:
    return tmp_path / "logs" / "decisions.jsonl"


@pytest.fixture
def make_app(tiny_artifact, catalog_path, log_path):
    """`make_app(**settings)` → (app, clock); the decision log goes to `log_path`."""

    def make(clock: FakeClock | None = None, log: dict | None = None, **overrides):
        clock = clock or FakeClock()
        config = load_settings(
            artifact=str(tiny_artifact),
            catalog=str(catalog_path),
            decision_log={"path": str(log_path), **(log or {})},
            **overrides,
        )
        return create_app(config, clock=clock, wall_clock=lambda: WALL, environ={}), clock

    return make


@pytest.fixture
def make_client(make_app):
    with contextlib.ExitStack() as stack:

        def make(**kwargs):
            app, clock = make_app(**kwargs)
            return stack.enter_context(TestClient(app)), clock

        yield make


def route(client, **body):
    response = client.post("/route", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------------------------------
# Feedback


def test_feedback_updates_stats_breaker_and_answers_once(make_client):
    client, _ = make_client()
    decision = route(client)
    model, rid = decision["model"], decision["request_id"]
    feedback = {"request_id": rid, "success": True, "latency_ms": 420.0, "quality": 0.8}
    response = client.post("/feedback", json=feedback)
    assert response.status_code == 200
    assert response.json() == {"request_id": rid, "model": model, "breaker": "closed"}
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models[model]["stats"]["calls"] == 1
    assert models[model]["stats"]["latency_ms"]["p50"] == 420.0
    assert models[model]["stats"]["mean_quality"] == 0.8
    again = client.post("/feedback", json=feedback)  # one outcome per model
    assert again.status_code == 409
    assert again.json() == {
        "error": {
            "code": "outcome_already_recorded",
            "message": f"model: request {rid!r} already has an outcome for {model!r}; each "
            "model a decision offered takes one outcome",
            "field": "model",
        }
    }


def test_unknown_request_id_is_404(make_client):
    client, _ = make_client()
    response = client.post("/feedback", json={"request_id": "nope", "success": True})
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "unknown_request_id",
            "message": "no pending decision with request_id 'nope': it is unknown, has an "
            "outcome for every model it offered, or is older than 3600 s",
            "field": "request_id",
        }
    }


def test_feedback_for_a_model_not_routable_is_422_and_keeps_the_decision(make_client):
    client, _ = make_client()
    rid = route(client)["request_id"]
    response = client.post("/feedback", json={"request_id": rid, "model": "gpt-5", "success": True})
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("unknown_model", "model")
    assert error["message"].startswith("model: 'gpt-5' is not a routable model; known: ")
    fixed = client.post(
        "/feedback", json={"request_id": rid, "model": "claude-v1", "success": False}
    )
    assert fixed.json() == {"request_id": rid, "model": "claude-v1", "breaker": "closed"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"request_id": "r"}, "success", id="no-success"),
        pytest.param({"success": True}, "request_id", id="no-id"),
        pytest.param({"request_id": "r", "success": "yes"}, "success", id="success-type"),
        pytest.param({"request_id": "r", "success": True, "quality": 1.5}, "quality", id="quality"),
        pytest.param(
            {"request_id": "r", "success": True, "latency_ms": -1}, "latency_ms", id="latency"
        ),
        pytest.param({"request_id": "r", "success": True, "cost_usd": -0.1}, "cost_usd", id="cost"),
        pytest.param(
            {"request_id": "r", "success": True, "error_type": ""}, "error_type", id="error-type"
        ),
        pytest.param({"request_id": "r", "success": True, "extra": 1}, "extra", id="unknown-field"),
    ],
)
def test_invalid_feedback_names_the_field(make_client, body, field):
    client, _ = make_client()
    response = client.post("/feedback", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_failing_feedback_opens_the_breaker(make_client):
    breakers = {"consecutive_failures": 3, "min_calls": 3, "window_size": 5}
    client, _ = make_client(breakers=breakers)
    states = []
    for _ in range(3):
        rid = route(client, candidates=["claude-v1"])["request_id"]
        states.append(
            client.post("/feedback", json={"request_id": rid, "success": False}).json()["breaker"]
        )
    assert states == ["closed", "closed", "open"]
    error = client.post("/route", json={"prompt": PROMPT, "candidates": ["claude-v1"]}).json()
    assert error["error"]["removed"]["claude-v1"]["filter"] == "breaker"


# ---------------------------------------------------------------------------------------------
# The decision log


def test_every_decision_is_logged_once_and_reads_back_as_training_data(make_app, log_path):
    app, clock = make_app()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name three prime numbers."},
    ]
    with TestClient(app) as client:
        first = route(client, task_type="summarize", user_id="u1")
        client.post(
            "/feedback",
            json={
                "request_id": first["request_id"],
                "success": True,
                "quality": 0.75,
                "cost_usd": 0.0012,
                "latency_ms": 900.0,
            },
        )
        second = client.post("/route", json={"messages": messages}).json()
        client.post(
            "/feedback",
            json={
                "request_id": second["request_id"],
                "model": "claude-v2",
                "success": False,
                "error_type": "timeout",
            },
        )
        third = route(client)  # never gets feedback: its decision row is all there is
        assert log_path.exists()
        # Durable when /route answers: every decision and outcome is on disk before shutdown.
        kinds = [(r["id"], r["kind"]) for r in read_log_lines(log_path)]
        assert kinds == [
            (first["request_id"], "decision"),
            (first["request_id"], "outcome"),
            (second["request_id"], "decision"),
            (second["request_id"], "outcome"),
            (third["request_id"], "decision"),
        ]
    rows = read_joined_rows(log_path)
    assert [r["id"] for r in rows] == [
        first["request_id"],
        second["request_id"],
        third["request_id"],
    ]
    version = first["router_version"]
    assert rows[0] == {
        "id": first["request_id"],
        "prompt": PROMPT,
        "model": first["model"],
        "success": True,
        "quality": 0.75,
        "cost_usd": 0.0012,
        "latency_ms": 900.0,
        "input_tokens": first["input_tokens"],
        "task_type": "summarize",
        "ts": WALL,
        "router_version": version,
    }
    expected_second = {
        "id": second["request_id"],
        "messages": messages,
        "model": "claude-v2",
        "success": False,
        "error_type": "timeout",
        "input_tokens": second["input_tokens"],
        "ts": WALL,
        "router_version": version,
    }
    if second["model"] != "claude-v2":
        expected_second["routed_model"] = second["model"]
    assert rows[1] == expected_second
    assert rows[2]["success"] is None and "evicted" not in rows[2]
    assert rows[2]["model"] == third["model"]

    report = load_records(log_path, skip_invalid=True)
    assert report.lines_read == 5
    assert [where for where, _ in report.skipped] == [f"{log_path}:5"]
    assert "no feedback arrived" in report.skipped[0][1]
    first_record, second_record = report.records
    assert first_record.id == first["request_id"] and first_record.task_type == "summarize"
    assert first_record.prompt.text == PROMPT
    assert first_record.outcomes[first["model"]].quality == 0.75
    assert first_record.outcomes[first["model"]].cost_usd == 0.0012
    assert second_record.prompt.has_system and second_record.prompt.turns == 1
    assert second_record.outcomes["claude-v2"].quality == 0.0


def test_privacy_mode_keeps_prompt_text_out_of_the_file(make_app, log_path):
    app, _ = make_app(log={"store_prompt": False})
    with TestClient(app) as client:
        rid = client.post("/route", json={"prompt": SECRET}).json()["request_id"]
        client.post("/feedback", json={"request_id": rid, "success": True})
        client.post("/route", json={"messages": [{"role": "user", "content": SECRET}]})
    text = log_path.read_text(encoding="utf-8")
    assert "account-number" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    rows = [r for r in rows if r["kind"] == "decision"]
    assert rows[0]["prompt_sha256"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert "prompt" not in rows[0] and "messages" not in rows[1]
    assert len(rows[1]["prompt_sha256"]) == 64


@pytest.mark.parametrize("log_prompts", [False, True], ids=["private", "log-prompts"])
def test_prompt_text_stays_out_of_application_logs(make_app, caplog, log_prompts):
    app, _ = make_app(log_prompts=log_prompts)
    with caplog.at_level(logging.DEBUG, logger="promptroute"), TestClient(app) as client:
        rid = client.post("/route", json={"prompt": SECRET}).json()["request_id"]
        client.post("/feedback", json={"request_id": rid, "success": False})
        client.post("/route", json={"prompt": SECRET, "candidates": ["nope"]})
    assert any(rid in r.getMessage() for r in caplog.records)
    assert any("account-number" in r.getMessage() for r in caplog.records) is log_prompts


def test_expired_and_evicted_decisions_stay_in_the_log_unanswered(make_app, log_path):
    app, clock = make_app(pending={"max_items": 2, "max_age_seconds": 60.0})
    with TestClient(app) as client:
        old = route(client)["request_id"]
        clock.advance(61.0)
        response = client.post("/feedback", json={"request_id": old, "success": True})
        assert response.status_code == 404
        ids = [route(client)["request_id"] for _ in range(3)]  # the first is pushed out
        assert (
            client.post("/feedback", json={"request_id": ids[0], "success": True}).status_code
            == 404
        )
        assert (
            client.post("/feedback", json={"request_id": ids[2], "success": True}).status_code
            == 200
        )
    rows = {r["id"]: r for r in read_joined_rows(log_path)}
    assert len(rows) == 4
    assert [rows[i]["success"] for i in (old, ids[0], ids[1], ids[2])] == [None, None, None, True]


def test_decisions_are_not_logged_without_a_log(tiny_artifact, catalog_path, tmp_path):
    config = load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path))
    with TestClient(create_app(config, environ={})) as client:
        rid = route(client)["request_id"]
        assert (
            client.post("/feedback", json={"request_id": rid, "success": True}).status_code == 200
        )
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Experiments


def _experiment(name="exp", **variant_b):
    return {
        "name": name,
        "variants": [
            {"name": "control", "weight": 1},
            {"name": "treatment", "weight": 1, **variant_b},
        ],
    }


def test_experiment_assignment_is_sticky_and_counted(make_client):
    client, _ = make_client(experiments=[_experiment(model="claude-instant-v1")])
    seen: dict[str, set[str]] = {}
    for user in [f"user-{i}" for i in range(40)]:
        for _ in range(2):
            body = route(client, user_id=user)
            seen.setdefault(user, set()).add(body["experiment"]["variant"])
            if body["experiment"]["variant"] == "treatment":
                assert body["model"] == "claude-instant-v1"
                assert body["reason"] == {
                    "stage": "experiment",
                    "detail": "experiment 'exp' variant 'treatment' pins claude-instant-v1",
                    "removed": {},
                }
            else:
                assert body["reason"]["stage"] == "classifier"
            assert body["experiment"]["name"] == "exp"
    assert all(len(v) == 1 for v in seen.values())  # sticky
    treated = sum(v == {"treatment"} for v in seen.values())
    assert 10 <= treated <= 30
    summary = client.get("/experiments/exp").json()
    counts = {v["name"]: v["assigned"] for v in summary["variants"]}
    assert counts == {"control": 2 * (40 - treated), "treatment": 2 * treated}
    assert route(client)["experiment"] is None  # no user id, no experiment


def test_experiment_outcomes_and_statistics(make_client):
    client, _ = make_client(experiments=[_experiment(knob=3.0)])
    for i in range(30):
        body = route(client, user_id=f"u{i}")
        variant = body["experiment"]["variant"]
        if variant == "treatment":
            assert body["knob"] == 3.0 and body["reason"]["stage"] == "experiment"
            assert (
                "experiment 'exp' variant 'treatment' sets the knob to 3"
                in body["reason"]["detail"]
            )
        success = variant == "control" or i % 3 == 0
        client.post(
            "/feedback",
            json={"request_id": body["request_id"], "success": success, "latency_ms": 100.0 + i},
        )
    listing = client.get("/experiments").json()
    assert [e["name"] for e in listing["experiments"]] == ["exp"]
    summary = client.get("/experiments/exp").json()
    assert summary == listing["experiments"][0]
    control, treatment = summary["variants"]
    assert control["feedback"] == control["assigned"] and control["success_rate"] == 1.0
    assert treatment["feedback"] == treatment["assigned"] and 0.0 < treatment["success_rate"] < 1.0
    assert treatment["p_value_vs_control"] is not None and control["p_value_vs_control"] is None
    assert (
        treatment["success_rate_ci95"][0]
        < treatment["success_rate"]
        < treatment["success_rate_ci95"][1]
    )
    assert control["mean_latency_ms"] is not None


def test_experiment_with_an_alternative_artifact(make_client, tiny_artifact, tmp_path):
    import shutil

    other = tmp_path / "other-artifact"
    shutil.copytree(tiny_artifact, other)
    client, _ = make_client(experiments=[_experiment(artifact=str(other))])
    variants = {}
    for i in range(20):
        body = route(client, user_id=f"u{i}")
        variants[body["experiment"]["variant"]] = body
    treated = variants["treatment"]
    assert treated["reason"]["stage"] == "experiment"
    assert f"routes with artifact {other}" in treated["reason"]["detail"]


def test_experiment_pin_not_eligible_falls_back_to_the_classifier(make_client):
    client, _ = make_client(experiments=[_experiment(model="claude-v1")])
    for i in range(20):
        body = route(client, user_id=f"u{i}", candidates=["claude-v2", "gpt-3.5-turbo-1106"])
        if body["experiment"]["variant"] == "treatment":
            assert body["reason"]["stage"] == "classifier"
            assert body["reason"]["detail"].endswith(
                "experiment 'exp' variant 'treatment' pins claude-v1, which is not eligible for "
                "this request; not applied"
            )
            return
    pytest.fail("no user landed in the treatment")


def test_unknown_experiment_is_404(make_client):
    client, _ = make_client(experiments=[_experiment(knob=1.0)])
    response = client.get("/experiments/nope")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "code": "unknown_experiment",
            "message": "no experiment named 'nope'; known: exp",
            "known": ["exp"],
        }
    }
