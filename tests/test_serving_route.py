"""POST /route through the app: the pipeline's stages, its explanations, and every error path."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from fakes import FakeClock, TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.text import normalize
from models.catalog import estimate_tokens, load_catalog
from serving import create_app, load_settings
from serving.schemas import RouteResponse

VISION = "gpt-4-1106-preview"
PROMPT = "Explain step by step why the sky is blue, and compare it with sunsets."


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    """The bundled catalog cut to the tiny router's models, with vision for one of them."""
    data = load_catalog().to_dict(only=tiny_router.models)
    for model in data["models"]:
        if model["name"] == VISION:
            model["capabilities"] = ["vision"]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def make_client(tiny_artifact, catalog_path):
    """`make_client(**settings)` → a started TestClient (closed at teardown) and its clock."""
    with contextlib.ExitStack() as stack:

        def make(clock: FakeClock | None = None, **overrides):
            clock = clock or FakeClock()
            # A fixed balanced knob keeps expected decisions independent of the artifact's own.
            overrides.setdefault("priorities", {"balanced": 0.5})
            config = load_settings(
                artifact=str(tiny_artifact), catalog=str(catalog_path), **overrides
            )
            app = create_app(config, clock=clock, wall_clock=lambda: 1.7e9, environ={})
            return stack.enter_context(TestClient(app)), clock

        yield make


@pytest.fixture
def client(make_client):
    return make_client()[0]


def ranking(router, text, knob, *, mask=None, **kwargs):
    scored = router.score(normalize(prompt=text), **kwargs)
    return [router.models[i] for i in router.rank(scored, knob, mask)], scored


def fail(client, request_id, model=None):
    body = {"request_id": request_id, "success": False}
    if model is not None:
        body["model"] = model
    assert client.post("/feedback", json=body).status_code == 200


def trip(client, model, times=2):
    """Open `model`'s breaker (the settings below trip after 2 consecutive failures)."""
    for _ in range(times):
        rid = client.post("/route", json={"prompt": PROMPT, "candidates": [model]}).json()
        fail(client, rid["request_id"])


SMALL_BREAKERS = {
    "consecutive_failures": 2,
    "min_calls": 2,
    "window_size": 4,
    "cooldown_seconds": 30.0,
    "max_cooldown_seconds": 60.0,
}


# ---------------------------------------------------------------------------------------------
# The answer


def test_route_answers_with_the_learned_routers_ranking(client, tiny_router, tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    response = client.post("/route", json={"prompt": PROMPT})
    assert response.status_code == 200
    body = response.json()
    RouteResponse.model_validate(body)
    expected, scored = ranking(tiny_router, PROMPT, 0.5)
    assert [body["model"], *body["fallbacks"]] == expected
    assert list(body["scores"]) == expected
    for name, value in body["scores"].items():
        assert value == pytest.approx(scored.score[tiny_router.index[name]], abs=1e-6)
    chosen = tiny_router.index[body["model"]]
    assert body["estimated_cost_usd"] == pytest.approx(scored.cost_usd[chosen])
    assert len(body["request_id"]) == 32 and int(body["request_id"], 16) >= 0
    assert body["request_id"][12] == "4"  # a version-4 UUID, as hex
    assert body["reason"] == {
        "stage": "classifier",
        "detail": "quality head ranked 12 eligible model(s) at knob 0.5",
        "removed": {},
    }
    assert body["experiment"] is None
    assert body["router_version"] == manifest["router_version"]
    assert (body["knob"], body["priority"], body["degraded"]) == (0.5, "balanced", False)
    assert body["input_tokens"] == estimate_tokens(len(PROMPT))


def test_request_ids_are_unique(client):
    ids = {client.post("/route", json={"prompt": PROMPT}).json()["request_id"] for _ in range(20)}
    assert len(ids) == 20


@pytest.mark.parametrize(
    ("request_extra", "settings_extra", "knob", "priority"),
    [
        pytest.param({"priority": "quality"}, {}, 0.0, "quality", id="quality"),
        pytest.param({"priority": "balanced"}, {}, 0.5, "balanced", id="balanced"),
        pytest.param({"priority": "cost"}, {}, 4.0, "cost", id="cost"),
        pytest.param({"knob": 2.5}, {}, 2.5, None, id="explicit-knob"),
        pytest.param({}, {"default_priority": "cost"}, 4.0, "cost", id="default-priority"),
        pytest.param(
            {},
            {"priorities": {"balanced": None}},
            None,  # the artifact's default knob
            "balanced",
            id="balanced-from-artifact",
        ),
    ],
)
def test_priority_maps_to_knob(
    make_client, tiny_router, request_extra, settings_extra, knob, priority
):
    client, _ = make_client(**settings_extra)
    body = client.post("/route", json={"prompt": PROMPT, **request_extra}).json()
    knob = tiny_router.default_knob if knob is None else knob
    assert (body["knob"], body["priority"]) == (knob, priority)
    expected, _ = ranking(tiny_router, PROMPT, knob)
    assert [body["model"], *body["fallbacks"]] == expected


def test_task_type_reaches_the_features(client, tiny_router):
    body = client.post("/route", json={"prompt": PROMPT, "task_type": "math"}).json()
    expected, scored = ranking(tiny_router, PROMPT, 0.5, task_type="math")
    assert [body["model"], *body["fallbacks"]] == expected
    first = expected[0]
    assert body["scores"][first] == pytest.approx(scored.score[tiny_router.index[first]], abs=1e-6)


def test_speed_picks_the_fastest_model_near_the_best(make_client, tiny_router, catalog_path):
    latency = {
        m["name"]: m["latency_ms"] for m in yaml.safe_load(catalog_path.read_text())["models"]
    }
    # With a tolerance of 1 every model is near the best: the fastest in the catalog wins.
    client, _ = make_client(priorities={"speed_tolerance": 1.0})
    body = client.post("/route", json={"prompt": PROMPT, "priority": "speed"}).json()
    assert body["model"] == min(latency, key=latency.get) == "mistralai/mistral-7b-chat"
    assert body["priority"] == "speed"
    assert body["reason"]["detail"].startswith("priority speed: lowest latency among 12 model(s)")
    order = [body["model"], *body["fallbacks"]]
    assert [latency[m] for m in order] == sorted(latency[m] for m in order)
    # With no tolerance only the best-utility model (and exact ties) qualifies.
    client, _ = make_client(priorities={"speed_tolerance": 0.0})
    body = client.post("/route", json={"prompt": PROMPT, "priority": "speed"}).json()
    assert body["model"] == ranking(tiny_router, PROMPT, 0.5)[0][0]


def test_speed_uses_observed_latency(make_client, tiny_router):
    client, _ = make_client(priorities={"speed_tolerance": 1.0})
    fast = "claude-v2"  # 2500 ms in the catalog; observed 10 ms below
    rid = client.post("/route", json={"prompt": PROMPT, "candidates": [fast]}).json()["request_id"]
    client.post("/feedback", json={"request_id": rid, "success": True, "latency_ms": 10.0})
    body = client.post("/route", json={"prompt": PROMPT, "priority": "speed"}).json()
    assert body["model"] == fast


# ---------------------------------------------------------------------------------------------
# Filters, through the API


def _windows(catalog_path):
    return {
        m["name"]: m["context_window"] for m in yaml.safe_load(catalog_path.read_text())["models"]
    }


def test_vision_filter_keeps_only_vision_models(client):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    body = client.post("/route", json={"messages": messages}).json()
    assert body["model"] == VISION and body["fallbacks"] == []
    removed = body["reason"]["removed"]
    assert len(removed) == 11 and VISION not in removed
    assert all(r["filter"] == "capability" for r in removed.values())
    assert all(r["detail"].startswith("the request has 1 image(s)") for r in removed.values())


def test_context_filter_removes_windows_too_small(client, tiny_router, catalog_path):
    text = "word " * 3264  # 16,320 characters: 4,080 input tokens
    body = client.post("/route", json={"prompt": text}).json()
    windows = _windows(catalog_path)
    need = {m: 4080 + tiny_router.output_tokens[i] for i, m in enumerate(tiny_router.models)}
    too_small = {m for m in tiny_router.models if windows[m] < need[m]}
    assert too_small == {
        "WizardLM/WizardLM-13B-V1.2",
        "meta/llama-2-70b-chat",
        "zero-one-ai/Yi-34B-Chat",
    }
    removed = body["reason"]["removed"]
    assert set(removed) == too_small
    wizard = removed["WizardLM/WizardLM-13B-V1.2"]
    assert wizard["filter"] == "capability"
    assert wizard["detail"].startswith("needs 4,118 tokens (4,080 input + 38 expected output)")
    assert wizard["detail"].endswith("context window is 4,096")


def test_expected_output_tokens_count_against_the_window(client, catalog_path):
    body = client.post("/route", json={"prompt": "hi", "expected_output_tokens": 16_000}).json()
    windows = _windows(catalog_path)
    assert set(body["reason"]["removed"]) == {m for m, w in windows.items() if w < 16_001}
    assert body["estimated_cost_usd"] > 0


def test_cost_filter_removes_what_exceeds_the_budget(client, tiny_router):
    costs = tiny_router.estimate_cost(estimate_tokens(len(PROMPT)), 200)
    limit = float(np.median(costs))
    body = client.post(
        "/route", json={"prompt": PROMPT, "max_cost_usd": limit, "expected_output_tokens": 200}
    ).json()
    expected = {tiny_router.models[i] for i, c in enumerate(costs) if c > limit}
    assert set(body["reason"]["removed"]) == expected and len(expected) == 6
    assert all(r["filter"] == "cost" for r in body["reason"]["removed"].values())
    assert body["estimated_cost_usd"] <= limit
    assert set(body["fallbacks"]) | {body["model"]} == set(tiny_router.models) - expected


def test_latency_filter_uses_the_catalog_then_observations(client):
    slow = {"claude-v1", "claude-v2", VISION, "meta/llama-2-70b-chat"}
    slow |= {"meta/code-llama-instruct-34b-chat", "zero-one-ai/Yi-34B-Chat"}
    body = client.post("/route", json={"prompt": PROMPT, "max_latency_ms": 1000}).json()
    assert set(body["reason"]["removed"]) == slow
    assert body["reason"]["removed"]["claude-v2"] == {
        "filter": "latency",
        "detail": "catalog (none observed) latency 2,500 ms exceeds max_latency_ms 1,000",
    }
    # Feedback shows claude-v2 answering in 300 ms and gpt-3.5 in 1,500 ms.
    for model, ms in (("claude-v2", 300.0), ("gpt-3.5-turbo-1106", 1500.0)):
        rid = client.post("/route", json={"prompt": PROMPT, "candidates": [model]}).json()
        client.post(
            "/feedback", json={"request_id": rid["request_id"], "success": True, "latency_ms": ms}
        )
    body = client.post("/route", json={"prompt": PROMPT, "max_latency_ms": 1000}).json()
    removed = body["reason"]["removed"]
    assert set(removed) == slow - {"claude-v2"} | {"gpt-3.5-turbo-1106"}
    assert removed["gpt-3.5-turbo-1106"]["detail"] == (
        "observed p50 latency 1,500 ms exceeds max_latency_ms 1,000"
    )


def test_candidates_restrict_the_choice(client, tiny_router):
    candidates = ["claude-v2", "gpt-3.5-turbo-1106"]
    body = client.post("/route", json={"prompt": PROMPT, "candidates": candidates}).json()
    assert {body["model"], *body["fallbacks"]} == set(candidates)
    removed = body["reason"]["removed"]
    assert set(removed) == set(tiny_router.models) - set(candidates)
    assert set(map(json.dumps, removed.values())) == {
        json.dumps({"filter": "candidates", "detail": "not in the request's candidates"})
    }


def test_open_breaker_removes_the_model_and_traffic_moves(make_client, tiny_router):
    client, clock = make_client(breakers=SMALL_BREAKERS)
    best = client.post("/route", json={"prompt": PROMPT}).json()["model"]
    trip(client, best)
    body = client.post("/route", json={"prompt": PROMPT}).json()
    assert body["model"] != best and best not in body["fallbacks"]
    assert body["reason"]["removed"][best]["filter"] == "breaker"
    assert body["reason"]["removed"][best]["detail"].startswith("circuit breaker is open")
    # After the cooldown it is half-open: one probe is admitted, then it is withheld again.
    clock.advance(30.0)
    probe = client.post("/route", json={"prompt": PROMPT}).json()
    assert probe["model"] == best
    held = client.post("/route", json={"prompt": PROMPT}).json()
    assert held["reason"]["removed"][best]["detail"] == (
        "circuit breaker is half-open and its probe slots are taken"
    )


def test_every_filter_can_apply_at_once(client):
    body = client.post(
        "/route",
        json={
            "prompt": "word " * 3264,
            "candidates": ["claude-v2", "gpt-3.5-turbo-1106", "zero-one-ai/Yi-34B-Chat", VISION],
            "max_cost_usd": 0.02,
            "max_latency_ms": 2000,
        },
    ).json()
    filters = {m: r["filter"] for m, r in body["reason"]["removed"].items()}
    assert filters["zero-one-ai/Yi-34B-Chat"] == "capability"
    assert filters["claude-v2"] == "cost"  # removed by cost first, though also slow
    assert filters[VISION] == "cost"
    assert body["model"] == "gpt-3.5-turbo-1106"
    assert sum(f == "candidates" for f in filters.values()) == 8


# ---------------------------------------------------------------------------------------------
# Nothing eligible, degraded mode, live reliability


def test_nothing_eligible_is_a_422_listing_every_removal(client, tiny_router):
    response = client.post("/route", json={"prompt": PROMPT, "max_cost_usd": 0})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "no_eligible_model"
    assert error["message"] == (
        "no model can take this request: all 12 routable model(s) were removed (12 by cost)"
    )
    assert set(error["removed"]) == set(tiny_router.models)
    assert {r["filter"] for r in error["removed"].values()} == {"cost"}


@pytest.mark.parametrize("degraded_mode", [False, True], ids=["strict", "degraded"])
def test_degraded_mode_when_only_breakers_block(make_client, degraded_mode):
    client, _ = make_client(breakers=SMALL_BREAKERS, degraded_mode=degraded_mode)
    trip(client, "claude-v2")
    trip(client, "claude-v1")
    request = {"prompt": PROMPT, "candidates": ["claude-v1", "claude-v2"]}
    response = client.post("/route", json=request)
    if not degraded_mode:
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "no_eligible_model"
        assert {
            m: r["filter"] for m, r in error["removed"].items() if r["filter"] != "candidates"
        } == {
            "claude-v1": "breaker",
            "claude-v2": "breaker",
        }
        return
    body = response.json()
    assert response.status_code == 200 and body["degraded"] is True
    assert body["reason"]["stage"] == "degraded"
    assert body["reason"]["detail"].startswith("every model that passed the filters has an open")
    assert {body["model"], *body["fallbacks"]} == {"claude-v1", "claude-v2"}
    # Degraded mode never overrides the other filters.
    response = client.post("/route", json={**request, "max_cost_usd": 0})
    assert response.status_code == 422


def test_observed_success_rate_scales_scores(make_client, tiny_router):
    lenient = {**SMALL_BREAKERS, "consecutive_failures": 10, "error_rate_threshold": 1.0}
    client, _ = make_client(breakers={**lenient, "window_size": 10})
    best = client.post("/route", json={"prompt": PROMPT, "priority": "quality"}).json()["model"]
    for success in (True, False, True, False):
        rid = client.post("/route", json={"prompt": PROMPT, "candidates": [best]}).json()
        client.post("/feedback", json={"request_id": rid["request_id"], "success": success})
    body = client.post("/route", json={"prompt": PROMPT, "priority": "quality"}).json()
    assert body["reason"]["detail"].endswith(
        f"scores scaled by observed success rate: {best} ×0.50"
    )
    _, scored = ranking(tiny_router, PROMPT, 0.0)
    adjusted = scored.score.copy()
    adjusted[tiny_router.index[best]] *= 0.5
    assert body["model"] == tiny_router.models[int(np.argmax(adjusted))]
    # `scores` stay the model's predictions; the scaling is explained, not hidden in them.
    assert body["scores"][best] == pytest.approx(scored.score[tiny_router.index[best]], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Static rules


def _rule(name, match, **target):
    return {"name": name, "match": match, **target}


def test_rule_pins_a_model(make_client):
    client, _ = make_client(rules=[_rule("code", {"task_types": ["code"]}, model="claude-v1")])
    body = client.post("/route", json={"prompt": PROMPT, "task_type": "code"}).json()
    assert body["model"] == "claude-v1"
    assert body["reason"]["stage"] == "rule"
    assert body["reason"]["detail"] == "rule 'code' pins claude-v1"
    other = client.post("/route", json={"prompt": PROMPT, "task_type": "chat"}).json()
    assert other["reason"]["stage"] == "classifier"


def test_rule_pin_not_eligible_is_noted_and_routing_continues(make_client):
    client, _ = make_client(rules=[_rule("r", {"prompt_regex": "(?i)sky"}, model="claude-v1")])
    body = client.post(
        "/route", json={"prompt": PROMPT, "candidates": ["claude-v2", "gpt-3.5-turbo-1106"]}
    ).json()
    assert body["reason"]["stage"] == "classifier"
    assert body["model"] in ("claude-v2", "gpt-3.5-turbo-1106")
    assert body["reason"]["detail"].endswith(
        "rule 'r' pins claude-v1, which is not eligible for this request; not applied"
    )


def test_rule_restricts_candidates(make_client, tiny_router):
    rule = _rule("team", {"metadata": {"team": ["data"]}}, candidates=["claude-v2", "claude-v1"])
    client, _ = make_client(rules=[rule])
    body = client.post("/route", json={"prompt": PROMPT, "metadata": {"team": "data"}}).json()
    assert {body["model"], *body["fallbacks"]} == {"claude-v1", "claude-v2"}
    removed = body["reason"]["removed"]
    assert set(removed) == set(tiny_router.models) - {"claude-v1", "claude-v2"}
    assert removed["gpt-3.5-turbo-1106"] == {
        "filter": "rule",
        "detail": "rule 'team' restricts candidates to claude-v2, claude-v1",
    }
    assert "rule 'team' restricted candidates to claude-v2, claude-v1" in body["reason"]["detail"]
    # Metadata values only match as strings; other teams are unaffected.
    for metadata in ({"team": "web"}, {"team": 1}, {}):
        body = client.post("/route", json={"prompt": PROMPT, "metadata": metadata}).json()
        assert body["reason"]["removed"] == {}


def test_rule_restriction_with_nothing_eligible_is_not_applied(make_client):
    rule = _rule("r", {"max_input_tokens": 1000}, candidates=["claude-v1"])
    client, _ = make_client(rules=[rule])
    body = client.post("/route", json={"prompt": PROMPT, "candidates": ["claude-v2"]}).json()
    assert body["model"] == "claude-v2"
    assert body["reason"]["detail"].endswith(
        "rule 'r' restricts candidates to claude-v1, none of which is eligible for this request; "
        "not applied"
    )


# ---------------------------------------------------------------------------------------------
# Request validation: exact status, code and field


def _raw(client, text):
    return client.post(
        "/route", content=text.encode("utf-8"), headers={"content-type": "application/json"}
    )


INVALID = [
    pytest.param(
        {}, "prompt", "prompt: one of 'prompt' or 'messages' is required", id="empty-body"
    ),
    pytest.param({"prompt": ""}, "prompt", "prompt: must not be empty", id="empty-prompt"),
    pytest.param({"prompt": "  \n"}, "prompt", "prompt: must not be empty", id="blank-prompt"),
    pytest.param(
        {"prompt": 5}, "prompt", "prompt: Input should be a valid string", id="prompt-type"
    ),
    pytest.param(
        {"prompt": "x", "messages": [{"role": "user", "content": "y"}]},
        "prompt",
        "prompt: give either 'prompt' or 'messages', not both",
        id="both",
    ),
    pytest.param(
        {"messages": []},
        "messages",
        "messages: must contain at least one message",
        id="no-messages",
    ),
    pytest.param({"messages": "hi"}, "messages", None, id="messages-type"),
    pytest.param({"messages": [{"content": "hi"}]}, "messages[0].role", None, id="no-role"),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "messages[0].content[0].text",
        None,
        id="part-text",
    ),
    pytest.param({"prompt": "x", "candidates": []}, "candidates", None, id="empty-candidates"),
    pytest.param({"prompt": "x", "candidates": [""]}, "candidates[0]", None, id="blank-candidate"),
    pytest.param({"prompt": "x", "max_cost_usd": -1}, "max_cost_usd", None, id="negative-cost"),
    pytest.param({"prompt": "x", "max_cost_usd": "0.1"}, "max_cost_usd", None, id="quoted-cost"),
    pytest.param({"prompt": "x", "max_latency_ms": 0}, "max_latency_ms", None, id="zero-latency"),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": 0}, "expected_output_tokens", None, id="tokens-0"
    ),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": 1_000_001},
        "expected_output_tokens",
        None,
        id="tokens-max",
    ),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": 1.5},
        "expected_output_tokens",
        None,
        id="tokens-float",
    ),
    pytest.param(
        {"prompt": "x", "expected_output_tokens": True},
        "expected_output_tokens",
        None,
        id="tokens-bool",
    ),
    pytest.param({"prompt": "x", "priority": "fast"}, "priority", None, id="priority"),
    pytest.param({"prompt": "x", "knob": -0.1}, "knob", None, id="negative-knob"),
    pytest.param(
        {"prompt": "x", "knob": 1, "priority": "cost"},
        "knob",
        "knob: give either 'priority' or 'knob', not both",
        id="knob-and-priority",
    ),
    pytest.param({"prompt": "x", "max_cost": 1}, "max_cost", "max_cost: unknown field", id="typo"),
    pytest.param({"prompt": "x", "task_type": ""}, "task_type", None, id="empty-task-type"),
    pytest.param({"prompt": "x", "user_id": "u" * 257}, "user_id", None, id="long-user-id"),
    pytest.param({"prompt": "x", "metadata": [1]}, "metadata", None, id="metadata-type"),
    pytest.param(
        {"prompt": "x", "metadata": {"a": {"b": {"c": {}}}}},
        "metadata",
        "metadata: nested deeper than 3 levels",
        id="metadata-depth",
    ),
]


@pytest.mark.parametrize(("body", "field", "message"), INVALID)
def test_invalid_requests_name_the_field(make_client, body, field, message):
    client, _ = make_client(limits={"max_metadata_depth": 3})
    response = client.post("/route", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    if message is not None:
        assert error["message"] == message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param('{"prompt": "x", "max_cost_usd": NaN}', "max_cost_usd", id="nan"),
        pytest.param('{"prompt": "x", "knob": Infinity}', "knob", id="inf"),
        pytest.param('{"prompt": "x", "max_latency_ms": -Infinity}', "max_latency_ms", id="-inf"),
        pytest.param('{"prompt": "x", "max_cost_usd": 1e999}', "max_cost_usd", id="overflow"),
        pytest.param('{"prompt": "x", "metadata": {"a": [NaN]}}', "metadata", id="metadata-nan"),
        pytest.param(
            '{"messages": [{"role": "user", "content": "x", "weight": NaN}]}',
            "messages",
            id="messages-nan",
        ),
        pytest.param('{"prompt": "\\ud800 lone"}', "prompt", id="lone-surrogate"),
        pytest.param('{"prompt": "x", "task_type": "\\udfff"}', "task_type", id="surrogate-task"),
        pytest.param(
            '{"messages": [{"role": "user", "content": "\\ud800"}]}',
            "messages",
            id="surrogate-messages",
        ),
    ],
)
def test_non_finite_numbers_and_broken_unicode_are_422(client, text, field):
    response = _raw(client, text)
    assert response.status_code == 422
    assert response.json()["error"]["field"] == field


def test_unknown_candidate_is_422_listing_the_known_models(client, tiny_router):
    response = client.post("/route", json={"prompt": "x", "candidates": ["claude-v1", "gpt-5"]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_model"
    assert error["field"] == "candidates[1]"
    assert error["message"].startswith("candidates[1]: unknown model 'gpt-5'; routable: ")
    assert error["known"] == sorted(tiny_router.models)


@pytest.mark.parametrize(
    ("content", "headers", "status", "code", "message"),
    [
        pytest.param(
            b"{bad", {"content-type": "application/json"}, 400, "invalid_json", None, id="malformed"
        ),
        pytest.param(
            b'{"prompt": "x"',
            {"content-type": "application/json"},
            400,
            "invalid_json",
            None,
            id="cut",
        ),
        pytest.param(
            b"[1]",
            {"content-type": "application/json"},
            422,
            "invalid_request",
            "the body must be a JSON object",
            id="array",
        ),
        pytest.param(
            b"null",
            {"content-type": "application/json"},
            422,
            "invalid_request",
            "the body must be a JSON object",
            id="null",
        ),
        pytest.param(
            b"",
            {"content-type": "application/json"},
            422,
            "invalid_request",
            "a JSON body is required",
            id="empty",
        ),
        pytest.param(
            b'{"prompt": "x"}',
            {"content-type": "text/plain"},
            422,
            "invalid_request",
            "the body must be JSON, sent with Content-Type: application/json",
            id="not-json-type",
        ),
    ],
)
def test_bodies_that_are_not_a_json_object(client, content, headers, status, code, message):
    response = client.post("/route", content=content, headers=headers)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    if message is None:
        assert error["message"].startswith("the body is not valid JSON: ")
    else:
        assert error["message"] == message and "field" not in error


# ---------------------------------------------------------------------------------------------
# Limits: 413


LIMITS = {
    "max_body_bytes": 2_000,
    "max_prompt_chars": 100,
    "max_messages": 2,
    "max_metadata_bytes": 50,
}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        pytest.param(
            {"prompt": "x" * 101}, "prompt", "prompt: longer than 100 characters", id="prompt"
        ),
        pytest.param(
            {"messages": [{"role": "user", "content": "x"}] * 3},
            "messages",
            "messages: more than 2 messages",
            id="message-count",
        ),
        pytest.param(
            {
                "messages": [
                    {"role": "user", "content": "x" * 60},
                    {"role": "user", "content": "y" * 60},
                ]
            },
            "messages",
            "messages: text longer than 100 characters",
            id="message-text",
        ),
        pytest.param(
            {"prompt": "x", "metadata": {"k": "v" * 60}},
            "metadata",
            "metadata: larger than 50 bytes as JSON",
            id="metadata",
        ),
    ],
)
def test_size_limits_are_413_naming_the_field(make_client, body, field, message):
    client, _ = make_client(limits=LIMITS)
    response = client.post("/route", json=body)
    assert response.status_code == 413
    assert response.json() == {"error": {"code": "too_large", "message": message, "field": field}}
    assert client.post("/route", json={"prompt": "x" * 100}).status_code == 200


def test_body_limit_by_header_and_by_streamed_bytes(make_client):
    client, _ = make_client(limits=LIMITS)
    expected = {
        "error": {
            "code": "body_too_large",
            "message": "request body exceeds the limit of 2000 bytes",
        }
    }
    big = json.dumps({"prompt": "x", "metadata": {"pad": "p" * 2_000}}).encode()
    response = client.post("/route", content=big, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (413, expected)

    def chunks():  # no Content-Length: the bytes are counted as they arrive
        yield b'{"prompt": "'
        for _ in range(30):
            yield b"y" * 100
        yield b'"}'

    response = client.post("/route", content=chunks(), headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (413, expected)


# ---------------------------------------------------------------------------------------------
# Never a 500


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_FIELDS = st.sampled_from(
    [
        "prompt",
        "messages",
        "task_type",
        "candidates",
        "max_cost_usd",
        "max_latency_ms",
        "expected_output_tokens",
        "priority",
        "knob",
        "user_id",
        "metadata",
        "other",
    ]
)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", ""]) | _JSON},
    optional={"content": st.text(max_size=30) | _JSON},
)
_VALUES = {
    "prompt": st.text(max_size=200),
    "messages": st.lists(_MESSAGE, max_size=3),
    "candidates": st.lists(st.sampled_from(["claude-v1", "gpt-4-1106-preview", "x"]), max_size=3),
    "priority": st.sampled_from(["quality", "balanced", "cost", "speed", "x"]),
}


@st.composite
def _bodies(draw):
    keys = draw(st.lists(_FIELDS, max_size=6, unique=True))
    return {k: draw(_VALUES.get(k, _JSON) | _JSON) for k in keys}


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=_bodies())
def test_no_input_gives_a_500(client, body):
    text = json.dumps(body, allow_nan=True)
    response = _raw(client, text)
    assert response.status_code in (200, 400, 413, 422), response.text
    if response.status_code != 200:
        error = response.json()["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str)
    else:
        assert math.isfinite(response.json()["estimated_cost_usd"])
