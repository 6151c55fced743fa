"""The in-process API (`promptroute.PromptRouter`): the same decisions and errors as /route."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptroute import Decision, PromptRouter, RoutingError
from serving.app import create_app
from serving.config import load_settings
from tests.fakes import TestClient

_COMPARED = ("model", "fallbacks", "scores", "estimated_cost_usd", "reason", "knob", "degraded")


@pytest.fixture(scope="module")
def router(tiny_artifact: Path, catalog_path: Path) -> PromptRouter:
    with PromptRouter.load(tiny_artifact, catalog=str(catalog_path)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def http(tiny_artifact: Path, catalog_path: Path) -> TestClient:
    app = create_app(
        load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path)), environ={}
    )
    with TestClient(app) as client:
        yield client


def test_route_answers_as_post_route_does(router: PromptRouter, http: TestClient) -> None:
    request = {
        "prompt": "Prove that the square root of 2 is irrational.",
        "priority": "quality",
        "max_cost_usd": 0.05,
    }
    decision = router.route(**request)
    assert isinstance(decision, Decision)
    answer = http.post("/route", json=request).json()
    assert {k: decision.to_response()[k] for k in _COMPARED} == {k: answer[k] for k in _COMPARED}
    assert decision.router_version == router.version
    assert decision.model in router.models


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.text(min_size=1, max_size=200).filter(lambda s: s.strip()),
    knob=st.one_of(st.none(), st.floats(min_value=0, max_value=100)),
)
def test_any_prompt_routes_the_same_in_process_and_over_http(
    router: PromptRouter, http: TestClient, prompt: str, knob: float | None
) -> None:
    body = {"prompt": prompt, "knob": knob}
    response = http.post("/route", json={k: v for k, v in body.items() if v is not None})
    try:
        decision = router.route(prompt, knob=knob)
    except RoutingError as exc:
        assert response.status_code == exc.status
        assert response.json()["error"]["code"] == exc.code
        return
    assert response.status_code == 200
    answer = response.json()
    assert {k: decision.to_response()[k] for k in _COMPARED} == {k: answer[k] for k in _COMPARED}


@pytest.mark.parametrize(
    ("kwargs", "status", "code", "field"),
    [
        pytest.param(
            {"prompt": "hi", "candidates": ["gpt-5"]},
            422,
            "unknown_model",
            "candidates[0]",
            id="unknown-candidate",
        ),
        pytest.param({"prompt": "hi", "knob": -1}, 422, "invalid_request", "knob", id="knob"),
        pytest.param(
            {"prompt": "hi", "knob": 1, "priority": "cost"},
            422,
            "invalid_request",
            "knob",
            id="knob-and-priority",
        ),
        pytest.param(
            {"prompt": "hi", "max_cost_usd": 1e-12},
            422,
            "no_eligible_model",
            None,
            id="nothing-eligible",
        ),
        pytest.param(
            {"messages": {"role": "user"}}, 422, "invalid_request", "messages", id="messages-shape"
        ),
    ],
)
def test_errors_carry_routes_status_code_and_field(
    router: PromptRouter, http: TestClient, kwargs: dict, status: int, code: str, field: str | None
) -> None:
    with pytest.raises(RoutingError) as info:
        router.route(**kwargs)
    assert (info.value.status, info.value.code, info.value.field) == (status, code, field)
    over_http = http.post("/route", json=kwargs)
    assert over_http.status_code == status
    assert over_http.json()["error"]["code"] == code
    if code == "no_eligible_model":
        assert info.value.details["removed"] == over_http.json()["error"]["removed"]


def test_feedback_counts_once_and_moves_the_breaker(tiny_artifact, catalog_path) -> None:
    with PromptRouter.load(
        tiny_artifact, catalog=str(catalog_path), breakers={"consecutive_failures": 2}
    ) as router:
        first = router.route("Explain binary search.")
        assert router.feedback(first.request_id, success=False) == first.model
        with pytest.raises(RoutingError) as again:
            router.feedback(first.request_id, success=True)
        assert (again.value.status, again.value.code) == (409, "outcome_already_recorded")
        second = router.route("Explain binary search.", candidates=[first.model])
        router.feedback(second.request_id, success=False)
        with pytest.raises(RoutingError) as blocked:
            router.route("Explain binary search.", candidates=[first.model])
        assert blocked.value.code == "no_eligible_model"
        assert blocked.value.details["removed"][first.model]["filter"] == "breaker"


def test_explain_names_the_features_between_two_models(router: PromptRouter) -> None:
    d = router.route("Write a Python function that merges two sorted lists.")
    why = router.explain(
        "Write a Python function that merges two sorted lists.",
        model=d.model,
        versus=d.fallbacks[0],
    )
    assert (why["model"], why["versus"]) == (d.model, d.fallbacks[0])
    assert why["top_features"] and {"feature", "value", "contribution"} == set(
        why["top_features"][0]
    )
    with pytest.raises(RoutingError) as info:
        router.explain("hi", model="gpt-5")
    assert (info.value.code, info.value.field) == ("unknown_model", "model")


def test_load_refuses_a_missing_artifact(tmp_path: Path) -> None:
    from models.errors import ArtifactError

    with pytest.raises(ArtifactError, match="not an artifact folder"):
        PromptRouter.load(tmp_path / "none")


def test_decision_is_json_ready(router: PromptRouter) -> None:
    assert json.loads(json.dumps(router.route("hello").to_response()))["model"]
