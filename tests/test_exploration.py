"""Exploration in the service: a scripted RNG decides, the decision log records propensities."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest
import yaml
from fakes import FakeClock, TestClient

from models.catalog import load_catalog
from models.errors import ConfigError
from serving import create_app, load_settings

PROMPT = "Explain step by step why the sky is blue, and compare it with sunsets."
SHARE = 0.2


class ScriptedRandom(random.Random):
    """`random()` and `randrange()` answer from scripts, in order (and record the calls)."""

    def __init__(self, draws: list[float], picks: list[int] | None = None) -> None:
        super().__init__(0)
        self.draws = list(draws)
        self.picks = list(picks or [])
        self.ranges: list[int] = []

    def random(self) -> float:
        return self.draws.pop(0)

    def randrange(self, stop: int, *args: object) -> int:  # type: ignore[override]
        self.ranges.append(stop)
        return self.picks.pop(0)


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    data = load_catalog().to_dict()
    data["models"] = [m for m in data["models"] if m["name"] in tiny_router.models]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


NEW = "gemma-2-9b-it"  # in the catalog, unknown to the tiny router


@pytest.fixture(scope="module")
def catalog_with_new(tmp_path_factory, tiny_router) -> Path:
    data = load_catalog().to_dict()
    data["models"] = [m for m in data["models"] if m["name"] in (*tiny_router.models, NEW)]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def make_client(tiny_artifact, catalog_path, tmp_path):
    """`make_client(rng, **settings)` → (started TestClient, decision-log path)."""
    with contextlib.ExitStack() as stack:

        def make(
            rng: random.Random | None = None,
            clock: FakeClock | None = None,
            catalog: Path | None = None,
            **overrides,
        ):
            overrides.setdefault("exploration", {"share": SHARE})
            overrides.setdefault("priorities", {"balanced": 0.5})
            log = tmp_path / f"decisions-{len(stack._exit_callbacks)}.jsonl"
            config = load_settings(
                artifact=str(tiny_artifact),
                catalog=str(catalog or catalog_path),
                decision_log={"path": str(log)},
                **overrides,
            )
            app = create_app(
                config, clock=clock or FakeClock(), wall_clock=lambda: 1.7e9, environ={}
            )
            client = stack.enter_context(TestClient(app))
            if rng is not None:
                client.app.state.service.pipeline.rng = rng
            return client, log

        yield make


def route(client, **body):
    response = client.post("/route", json={"prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def feedback(client, request_id: str) -> None:
    r = client.post("/feedback", json={"request_id": request_id, "success": True})
    assert r.status_code == 200


def rows(log: Path) -> list[dict]:
    """The training rows: each decision row joined with its outcome rows."""
    from serving.decision_log import read_joined_rows

    return read_joined_rows(log) if log.exists() else []


def test_greedy_decision_logs_one_minus_share(make_client):
    client, log = make_client(ScriptedRandom([0.5]))
    body = route(client)
    assert body["reason"]["stage"] == "classifier"
    feedback(client, body["request_id"])
    (row,) = rows(log)
    assert row["model"] == body["model"]
    assert row["propensity"] == pytest.approx(1 - SHARE)


def test_explored_decision_picks_another_eligible_model(make_client, tiny_router):
    greedy = route(make_client(ScriptedRandom([0.99]))[0])
    others = greedy["fallbacks"]
    rng = ScriptedRandom([0.1], picks=[2])
    client, log = make_client(rng)
    body = route(client)
    assert rng.ranges == [len(others)]  # drawn among every other eligible model
    assert body["model"] == others[2]
    assert body["reason"]["stage"] == "exploration"
    assert body["reason"]["detail"].startswith(
        f"exploration (share {SHARE:g}): {others[2]} drawn at random instead of the router's "
        f"pick {greedy['model']}"
    )
    assert body["fallbacks"][0] == greedy["model"]  # the router's pick is the first fallback
    feedback(client, body["request_id"])
    (row,) = rows(log)
    assert row["model"] == others[2]
    assert row["propensity"] == pytest.approx(SHARE / len(others))


def test_exploration_stays_inside_the_candidates(make_client, tiny_router):
    a, b = tiny_router.models[:2]
    rng = ScriptedRandom([0.0], picks=[0])
    client, _ = make_client(rng)
    body = route(client, candidates=[a, b])
    assert body["reason"]["stage"] == "exploration"
    assert rng.ranges == [1]
    assert {body["model"], body["fallbacks"][0]} == {a, b}


def test_a_single_eligible_model_is_never_explored(make_client, tiny_router):
    rng = ScriptedRandom([])  # any draw would fail: none may happen
    client, log = make_client(rng)
    body = route(client, candidates=[tiny_router.models[0]])
    assert body["reason"]["stage"] == "classifier"
    feedback(client, body["request_id"])
    assert rows(log)[0]["propensity"] == 1.0


def test_rule_pins_are_never_explored(make_client):
    rule = {"name": "code", "match": {"task_types": ["code"]}, "model": "claude-v1"}
    client, log = make_client(ScriptedRandom([]), rules=[rule])
    body = route(client, task_type="code")
    assert (body["model"], body["reason"]["stage"]) == ("claude-v1", "rule")
    feedback(client, body["request_id"])
    assert rows(log)[0]["propensity"] == 1.0


def test_experiments_are_never_explored(make_client):
    experiment = {
        "name": "exp",
        "variants": [{"name": "control", "weight": 1}, {"name": "knob", "weight": 1, "knob": 2.0}],
    }
    client, _ = make_client(ScriptedRandom([]), experiments=[experiment])
    for user in range(10):
        body = route(client, user_id=f"u{user}")
        assert body["experiment"] is not None
        assert body["reason"]["stage"] in ("classifier", "experiment")


def test_open_breakers_are_never_explored(make_client, tiny_router):
    breakers = {"consecutive_failures": 2, "min_calls": 2, "window_size": 4}
    greedy = route(make_client(ScriptedRandom([0.99]))[0])
    target = greedy["fallbacks"][0]
    rng = ScriptedRandom([0.0], picks=[0])  # the single-candidate routes draw nothing
    client, _ = make_client(rng, breakers=breakers)
    for _ in range(2):
        rid = route(client, candidates=[target])["request_id"]
        r = client.post("/feedback", json={"request_id": rid, "success": False})
        assert r.status_code == 200
    body = route(client)
    assert body["reason"]["removed"][target]["filter"] == "breaker"
    assert body["reason"]["stage"] == "exploration"
    assert target not in (body["model"], *body["fallbacks"])


def test_half_open_models_are_not_explored(make_client):
    breakers = {"consecutive_failures": 2, "min_calls": 2, "window_size": 4, "cooldown_seconds": 30}
    greedy = route(make_client(ScriptedRandom([0.99]))[0])
    target = greedy["fallbacks"][0]
    clock = FakeClock()
    rng = ScriptedRandom([0.0], picks=[0])
    client, _ = make_client(rng, clock=clock, breakers=breakers)
    for _ in range(2):
        rid = route(client, candidates=[target])["request_id"]
        assert (
            client.post("/feedback", json={"request_id": rid, "success": False}).status_code == 200
        )
    clock.advance(31)  # the cooldown is over: half-open, with a probe slot free
    body = route(client)
    assert target in (body["model"], *body["fallbacks"])  # eligible for the router...
    assert body["model"] != target  # ...but not for exploration
    assert rng.ranges == [len(greedy["fallbacks"]) - 1]


def test_metrics_count_explorations_and_their_estimated_cost(make_client):
    greedy = route(make_client(ScriptedRandom([0.99]))[0])
    client, _ = make_client(ScriptedRandom([0.0, 0.99], picks=[0]))
    explored = route(client)
    route(client)
    text = client.get("/metrics").text
    model = explored["model"]
    assert f'promptroute_exploration_decisions_total{{model="{model}"}} 1.0' in text
    assert f'promptroute_decisions_total{{model="{model}",stage="exploration"}} 1.0' in text

    def value(name: str) -> float:
        line = next(x for x in text.splitlines() if x.startswith(name + " "))
        return float(line.split()[1])

    assert value("promptroute_exploration_estimated_cost_usd_total") == pytest.approx(
        explored["estimated_cost_usd"]
    )
    assert value("promptroute_exploration_greedy_estimated_cost_usd_total") == pytest.approx(
        greedy["estimated_cost_usd"]
    )


def test_seeded_share_is_spent_as_configured(make_client):
    client, log = make_client(exploration={"share": SHARE, "seed": 7})
    bodies = [route(client) for _ in range(400)]
    explored = sum(b["reason"]["stage"] == "exploration" for b in bodies)
    assert 0.15 * 400 <= explored <= 0.25 * 400
    again, _ = make_client(exploration={"share": SHARE, "seed": 7})
    assert [route(again)["model"] for _ in range(400)] == [b["model"] for b in bodies]


def test_no_propensity_without_exploration(make_client):
    client, log = make_client(exploration={"share": 0.0})
    body = route(client)
    feedback(client, body["request_id"])
    assert "propensity" not in rows(log)[0]


def test_a_fallback_that_answered_has_no_propensity(make_client):
    client, log = make_client(ScriptedRandom([0.99]))
    body = route(client)
    other = body["fallbacks"][0]
    r = client.post(
        "/feedback", json={"request_id": body["request_id"], "success": True, "model": other}
    )
    assert r.status_code == 200
    (row,) = rows(log)
    assert (row["model"], row["routed_model"]) == (other, body["model"])
    assert "propensity" not in row


@pytest.mark.parametrize("share", [-0.1, 0.6, "lots"])
def test_share_is_validated(share):
    with pytest.raises(ConfigError) as info:
        load_settings(exploration={"share": share})
    assert info.value.field == "exploration.share"


def test_a_catalog_model_without_learned_scores_is_explored(
    make_client, catalog_with_new, tiny_router
):
    """The router ranks it last; exploration draws it like any other eligible model."""
    greedy = route(make_client(ScriptedRandom([0.99]), catalog=catalog_with_new)[0])
    others = greedy["fallbacks"]
    assert others[-1] == NEW and NEW not in greedy["scores"]
    rng = ScriptedRandom([0.0], picks=[len(others) - 1])
    client, log = make_client(rng, catalog=catalog_with_new)
    body = route(client)
    assert rng.ranges == [len(others)]
    assert body["model"] == NEW
    assert body["reason"]["stage"] == "exploration"
    assert body["reason"]["detail"].startswith(
        f"exploration (share {SHARE:g}): {NEW} (a model without learned scores) drawn at random"
    )
    assert body["fallbacks"] == [greedy["model"], *others[:-1]]
    catalog = load_catalog(catalog_with_new)
    expected = catalog[NEW].cost_usd(body["input_tokens"], catalog.typical_output_tokens)
    assert body["estimated_cost_usd"] == pytest.approx(expected)
    feedback(client, body["request_id"])
    (row,) = rows(log)
    assert row["model"] == NEW
    assert row["propensity"] == pytest.approx(SHARE / len(others))
