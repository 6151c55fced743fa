"""Shared state through a real Redis: two app instances (as two workers or replicas would be)
agree on pending decisions, the outcome rules, breakers, probe slots, statistics and
experiment tallies, and survive Redis going away."""

from __future__ import annotations

import contextlib
import time

import pytest
from fakes import FakeClock, TestClient

from serving import create_app, load_settings
from serving.bookkeeping import PendingDecision

PROMPT = "Summarize the plot of Hamlet in three sentences."
BOUND_SECONDS = 0.25  # the documented staleness bound of a breaker seen by another replica


@pytest.fixture
def pair(tiny_artifact, catalog_path, redis_url, tmp_path):
    """`pair(**settings)` → (client A, client B, wall clock): two apps on one Redis."""
    with contextlib.ExitStack() as stack:

        def make(wall: FakeClock | None = None, **overrides):
            wall = wall or FakeClock(1_700_000_000.0)
            state = {"backend": "redis", "url": redis_url, "prefix": "t", "retry_seconds": 0.05}
            state.update(overrides.pop("state", {}))
            clients = []
            for name in ("a", "b"):
                config = load_settings(
                    artifact=str(tiny_artifact),
                    catalog=str(catalog_path),
                    decision_log={"path": str(tmp_path / name / "decisions.jsonl")},
                    state=state,
                    **overrides,
                )
                app = create_app(config, clock=FakeClock(), wall_clock=wall, environ={})
                clients.append(stack.enter_context(TestClient(app)))
            return clients[0], clients[1], wall

        yield make


def _route(client, **body):
    response = client.post("/route", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _refresh(*clients):
    """Read the shared state now, as the background refresh would within its bound."""
    for client in clients:
        assert client.portal.call(client.app.state.service.health.refresh) is True


def _breaker(client, model):
    return next(m for m in client.get("/models").json()["models"] if m["name"] == model)["breaker"]


def test_route_on_one_instance_and_feedback_on_the_other(pair):
    a, b, _ = pair()
    names = [m["name"] for m in a.get("/models").json()["models"]]
    decision = _route(a, candidates=names[:2])
    rid, model = decision["request_id"], decision["model"]
    fb = {"request_id": rid, "success": True, "latency_ms": 300.0}
    response = b.post("/feedback", json=fb)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    again = a.post("/feedback", json=fb)  # one outcome per model, whichever instance hears it
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "outcome_already_recorded"
    other = names[2]
    refused = b.post("/feedback", json={**fb, "model": other})
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "model_not_offered")
    fallback = decision["fallbacks"][0]
    assert b.post("/feedback", json={**fb, "model": fallback, "success": False}).status_code == 200
    stats = {m["name"]: m["stats"] for m in b.get("/models").json()["models"]}
    assert stats[model]["calls"] == 1 and stats[fallback]["calls"] == 1
    assert a.post("/feedback", json={"request_id": "nope", "success": True}).status_code == 404


def test_feedback_from_another_caller_is_404_like_an_unknown_id(pair):
    a, b, wall = pair()
    book_a = a.app.state.service.book
    decision = PendingDecision(model="m", fallbacks=("n",), caller="team-a", ts=wall())
    a.portal.call(book_a.remember, "rid-1", decision)
    book_b = b.app.state.service.book
    from serving.errors import ApiError

    for caller in (None, "team-b"):
        with pytest.raises(ApiError) as info:
            b.portal.call(book_b.claim, "rid-1", "m", caller)
        assert (info.value.status, info.value.code) == (404, "unknown_request_id")
    got, model = b.portal.call(book_b.claim, "rid-1", "n", "team-a")
    assert (got.model, got.fallbacks, got.caller, model) == ("m", ("n",), "team-a", "n")


def test_failures_reported_on_both_open_the_breaker_on_both_within_the_bound(pair):
    a, b, _ = pair(breakers={"consecutive_failures": 4, "min_calls": 4, "window_size": 8})
    model = _route(a)["model"]
    for i in range(4):
        client = (a, b)[i % 2]
        rid = _route(client, candidates=[model])["request_id"]
        response = client.post("/feedback", json={"request_id": rid, "success": False})
        assert response.status_code == 200
    started = time.monotonic()
    seen = {}
    while len(seen) < 2 and time.monotonic() - started < 2.0:
        for name, client in (("a", a), ("b", b)):
            if name not in seen and _breaker(client, model)["state"] == "open":
                seen[name] = time.monotonic() - started
        time.sleep(0.005)
    assert set(seen) == {"a", "b"}
    assert max(seen.values()) <= BOUND_SECONDS, seen
    refused = a.post("/route", json={"prompt": PROMPT, "candidates": [model]})
    assert refused.status_code == 422  # its breaker removed the only candidate
    assert _breaker(b, model)["trips"] == 1


def test_half_open_admits_the_configured_number_of_probes_in_total(pair):
    a, b, wall = pair(
        breakers={
            "consecutive_failures": 2,
            "min_calls": 2,
            "window_size": 4,
            "cooldown_seconds": 10.0,
            "half_open_max_probes": 3,
        }
    )
    model = _route(a)["model"]
    for client in (a, b):
        rid = _route(client, candidates=[model])["request_id"]
        assert (
            client.post("/feedback", json={"request_id": rid, "success": False}).status_code == 200
        )
    _refresh(a, b)  # both have seen the trip
    wall.advance(11.0)  # the cooldown is over: half-open, 3 probe slots for everyone together
    admitted = 0
    for i in range(12):
        client = (a, b)[i % 2]
        response = client.post("/route", json={"prompt": PROMPT, "candidates": [model]})
        if response.status_code == 200:
            admitted += 1
        else:
            assert response.json()["error"]["code"] == "no_eligible_model"
        _refresh(a, b)  # each sees the other's probes at its next refresh
    assert admitted == 3
    assert _breaker(a, model)["probes_in_flight"] == 3


def test_experiment_tallies_add_up_across_instances(pair):
    experiments = [
        {
            "name": "exp",
            "variants": [
                {"name": "control", "weight": 1},
                {"name": "cheap", "weight": 1, "knob": 3.0},
            ],
        }
    ]
    a, b, _ = pair(experiments=experiments)
    for i in range(10):
        client = (a, b)[i % 2]
        decision = _route(client, user_id=f"user-{i}")
        other = (b, a)[i % 2]
        fb = {"request_id": decision["request_id"], "success": i % 3 != 0, "latency_ms": 100.0 + i}
        assert other.post("/feedback", json=fb).status_code == 200
    for client in (a, b):
        variants = client.get("/experiments/exp").json()["variants"]
        assert sum(v["assigned"] for v in variants) == 10
        assert sum(v["feedback"] for v in variants) == 10
        assert sum(
            round(v["mean_latency_ms"] * v["feedback"]) for v in variants if v["feedback"]
        ) == sum(100 + i for i in range(10))


def test_gateway_costs_and_escalations_reach_every_instances_tally(pair):
    # The gateway's feedback carries the measured cost and any escalation; with Redis both
    # must land in the shared tally, not in the answering process only.
    from serving.bookkeeping import Feedback

    experiments = [
        {"name": "exp", "variants": [{"name": "x", "weight": 1}, {"name": "y", "weight": 1}]}
    ]
    a, b, _ = pair(experiments=experiments)
    costs = [0.002, 0.004, float("nan")]  # a cost that is not finite counts as unknown
    for i, cost in enumerate(costs):
        decision = _route(a, user_id="one-user")  # one user: one variant, every time
        fb = Feedback(
            request_id=decision["request_id"],
            success=True,
            latency_ms=50.0,
            cost_usd=cost,
            escalations=({"model": "weak", "reason": "empty"},) if i == 0 else (),
        )
        client = (a, b)[i % 2]
        client.portal.call(client.app.state.service.outcomes.apply, fb)
    for client in (a, b):
        (variant,) = [v for v in client.get("/experiments/exp").json()["variants"] if v["assigned"]]
        assert (variant["assigned"], variant["feedback"], variant["escalated"]) == (3, 3, 1)
        assert variant["mean_cost_usd"] == pytest.approx(0.003)


def test_redis_stopped_mid_soak_no_5xx_then_sharing_resumes(pair, redis_server):
    a, b, _ = pair(state={"timeout_seconds": 0.1, "connect_timeout_seconds": 0.1})
    statuses: list[int] = []

    def soak(n: int) -> None:
        for i in range(n):
            x, y = (a, b) if i % 2 else (b, a)
            routed = x.post("/route", json={"prompt": f"{PROMPT} {i}"})
            statuses.append(routed.status_code)
            if routed.status_code == 200:
                rid = routed.json()["request_id"]
                statuses.append(
                    y.post("/feedback", json={"request_id": rid, "success": True}).status_code
                )
                statuses.append(
                    x.post("/feedback", json={"request_id": rid, "success": True}).status_code
                )

    soak(20)
    assert a.get("/readyz").json()["state"] == {"backend": "redis", "degraded": False}
    redis_server.stop()
    started = time.monotonic()
    soak(40)
    assert time.monotonic() - started < 10  # no request waited long on the dead Redis
    ready = a.get("/readyz")
    assert ready.status_code == 200 and ready.json()["state"]["degraded"] is True
    assert "promptroute_state_degraded 1.0" in b.get("/metrics").text
    redis_server.start()
    deadline = time.monotonic() + 5
    while any(c.get("/readyz").json()["state"]["degraded"] for c in (a, b)):
        assert time.monotonic() < deadline, "sharing did not resume"
        time.sleep(0.02)
    soak(10)
    assert all(s < 500 for s in statuses), sorted(set(statuses))
    decision = _route(a)
    fb = {"request_id": decision["request_id"], "success": True}
    assert b.post("/feedback", json=fb).status_code == 200  # shared again
    assert "promptroute_state_degraded 0.0" in a.get("/metrics").text


def test_route_and_feedback_each_make_one_round_trip(pair):
    experiments = [
        {"name": "exp", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
    ]
    a, b, _ = pair(experiments=experiments)
    batches: list[list[str]] = []
    for client in (a, b):
        store = client.app.state.service.store
        execute = store._execute

        async def counted(batch, execute=execute):
            names = [op[0] for op in batch if op[0] != "snapshot"]  # the background refresh
            if names:
                batches.append(names)
            return await execute(batch)

        store._execute = counted
    decision = _route(a, user_id="someone")  # in the experiment: a tally rides along
    assert batches == [["tally", "remember"]]
    batches.clear()
    fb = {"request_id": decision["request_id"], "success": True, "latency_ms": 12.0}
    assert b.post("/feedback", json=fb).status_code == 200
    assert batches == [["feedback"]]  # rules, breaker, statistics and tally: one script
    _refresh(a)  # A sees B's write at its next refresh
    stats = {m["name"]: m["stats"] for m in a.get("/models").json()["models"]}
    assert stats[decision["model"]]["latency_ms"]["p50"] == 12.0
    variants = a.get("/experiments/exp").json()["variants"]
    assert sum(v["feedback"] for v in variants) == 1 and sum(v["assigned"] for v in variants) == 1


def test_public_api():
    import serving.shared as shared

    assert sorted(shared.__all__) == [
        "RedisBookkeeping",
        "RedisHealth",
        "RedisStore",
        "RedisTallies",
        "StateUnavailable",
    ]


@pytest.mark.parametrize(
    ("state", "field", "reason"),
    [
        pytest.param(
            {"backend": "redis"}, "state.url", "is required with backend: redis", id="no-url"
        ),
        pytest.param(
            {"backend": "redis", "url": "http://x"},
            "state.url",
            "must be a redis://, rediss:// or unix:// URL, got 'http://x'",
            id="scheme",
        ),
        pytest.param(
            {"backend": "disk"},
            "state.backend",
            "Input should be 'memory' or 'redis'",
            id="backend",
        ),
        pytest.param(
            {"timeout_seconds": 0},
            "state.timeout_seconds",
            "Input should be greater than 0",
            id="timeout",
        ),
        pytest.param(
            {"prefix": "a b"},
            "state.prefix",
            "String should match pattern '^[A-Za-z0-9_.-]+$'",
            id="prefix",
        ),
    ],
)
def test_state_config_errors_name_the_field(state, field, reason):
    from models.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_settings(state=state)
    assert (info.value.field, info.value.reason) == (field, reason)
