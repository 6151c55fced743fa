"""POST /v1/chat/completions and GET /v1/models against a fake upstream on loopback.

Which model the router picks first depends on the trained artifact, so each test asks
``POST /route`` the same question first (same prompt, same constraints: the same ranking) and
sets the fake's behaviour for the models in that order.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_upstream import ANSWER, FakeUpstream, chunks, completion
from fakes import FakeClock, TestClient

from models.catalog import estimate_tokens, load_catalog
from models.errors import ConfigError
from serving import create_app, load_settings
from serving.decision_log import read_joined_rows

WALL = 1_700_000_000.0
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Summarize the plot of Hamlet in three sentences."},
]
TEXT = "You are terse.\n\nSummarize the plot of Hamlet in three sentences."
CATALOG = load_catalog()


@dataclass
class Service:
    client: TestClient
    clock: FakeClock
    sleeps: list[float]
    log_path: Path

    def rows(self) -> list[dict[str, Any]]:
        """The training rows: each decision joined with its outcomes."""
        if not self.log_path.exists():
            return []
        return read_joined_rows(self.log_path)

    def row(self, request_id: str) -> dict[str, Any]:
        (found,) = [r for r in self.rows() if r["id"] == request_id]
        return found

    def order(self, **body: Any) -> list[str]:
        """The models the router ranks for MESSAGES under `body`'s constraints, best first."""
        response = self.client.post("/route", json={"messages": MESSAGES, **body})
        assert response.status_code == 200, response.text
        decision = response.json()
        return [decision["model"], *decision["fallbacks"]]

    def chat(self, model: str = "auto", **extra: Any):
        return self.client.post(
            "/v1/chat/completions", json={"model": model, "messages": MESSAGES, **extra}
        )

    def model_status(self, name: str) -> dict[str, Any]:
        models = {m["name"]: m for m in self.client.get("/models").json()["models"]}
        return models[name]


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream(slow_seconds=5.0) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake):
    fake.reset()


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    data = CATALOG.to_dict(only=tiny_router.models)
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def make_service(tiny_artifact, tiny_router, catalog_path, tmp_path, fake):
    """`make_service(upstreams=..., gateway=..., environ=..., **settings)` → a started Service.

    By default every routable model has an upstream on the fake with a `timeout` of 1 s.
    """
    with contextlib.ExitStack() as stack:

        def make(
            *,
            upstreams: dict[str, Any] | None = None,
            environ: dict[str, str] | None = None,
            timeout: float = 1.0,
            **overrides: Any,
        ) -> Service:
            if upstreams is None:
                upstreams = {
                    m: {"base_url": fake.url(), "timeout_seconds": timeout}
                    for m in tiny_router.models
                }
            log_path = tmp_path / "decisions.jsonl"
            settings = load_settings(
                artifact=str(tiny_artifact),
                catalog=str(catalog_path),
                decision_log={"path": str(log_path)},
                upstreams=upstreams,
                **overrides,
            )
            clock, sleeps = FakeClock(), []

            async def sleep(seconds: float) -> None:
                sleeps.append(seconds)

            app = create_app(
                settings, clock=clock, wall_clock=lambda: WALL, environ=environ or {}, sleep=sleep
            )
            client = stack.enter_context(TestClient(app))
            return Service(client, clock, sleeps, log_path)

        yield make


def error_of(response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    return body["error"]


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    return CATALOG[model].cost_usd(prompt_tokens, completion_tokens)


# ---------------------------------------------------------------------------------------------
# The happy path


def test_plain_completion_is_routed_answered_and_logged(make_service, fake):
    service = make_service()
    first = service.order()[0]
    fake.on_request = lambda: service.clock.advance(0.42)
    response = service.chat(temperature=0.2, max_tokens=50)
    assert response.status_code == 200, response.text
    assert response.json() == completion(first, (12, 7))
    request_id = response.headers["x-promptroute-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert response.headers["x-promptroute-model"] == first
    assert response.headers["x-promptroute-attempts"] == f"{first}:ok"
    assert response.headers["x-promptroute-fallbacks"] == ""
    # The upstream gets the client's body, without promptroute's fields, and no credentials.
    (received,) = fake.requests
    assert received.path == "/v1/chat/completions"
    assert received.body == {
        "model": first,
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_tokens": 50,
    }
    assert "authorization" not in received.headers
    # One decision-log row: real usage at catalog prices, and the call's latency.
    assert service.row(request_id) == {
        "id": request_id,
        "messages": MESSAGES,
        "model": first,
        "success": True,
        "cost_usd": cost(first, 12, 7),
        "latency_ms": 420.0,
        "input_tokens": 12,  # the upstream's usage, not the estimate
        "output_tokens": 7,
        "response": "The answer is 42.",
        "ts": WALL,
        "router_version": service.client.get("/readyz").json()["router_version"],
    }
    status = service.model_status(first)
    assert status["stats"]["calls"] == 1
    assert status["stats"]["success_rate"] == 1.0
    assert status["stats"]["latency_ms"]["p50"] == 420.0


def test_usage_missing_from_the_upstream_is_estimated(make_service, fake):
    service = make_service()
    first = service.order()[0]
    fake.usage = None
    response = service.chat()
    assert response.status_code == 200
    row = service.row(response.headers["x-promptroute-request-id"])
    expected = cost(first, estimate_tokens(len(TEXT)), estimate_tokens(len("".join(ANSWER))))
    assert row["cost_usd"] == expected


def test_upstream_model_name_base_path_and_api_key(make_service, fake, tiny_router):
    upstreams = {m: {"base_url": fake.url()} for m in tiny_router.models}
    service = make_service(upstreams=upstreams)
    first = service.order()[0]
    upstreams[first] = {
        "base_url": fake.url("/provider/v1/"),
        "model": "provider-name-for-it",
        "api_key_env": "FAKE_PROVIDER_KEY",
    }
    service = make_service(upstreams=upstreams, environ={"FAKE_PROVIDER_KEY": "sk-test-123"})
    response = service.chat()
    assert response.status_code == 200
    assert response.json()["model"] == first  # the catalog name, not the upstream's
    (received,) = fake.requests
    assert received.path == "/provider/v1/chat/completions"
    assert received.model == "provider-name-for-it"
    assert received.headers["authorization"] == "Bearer sk-test-123"


def test_a_missing_api_key_stops_start_up_naming_the_field(make_service, fake, tiny_router):
    model = tiny_router.models[0]
    upstreams = {model: {"base_url": fake.url(), "api_key_env": "NOT_SET_ANYWHERE"}}
    with pytest.raises(ConfigError) as caught:
        make_service(upstreams=upstreams)
    assert caught.value.field == f"upstreams.{model}.api_key_env"
    assert caught.value.reason == "environment variable NOT_SET_ANYWHERE is not set"


def test_an_upstream_for_a_model_the_router_cannot_route_stops_start_up(make_service, fake):
    with pytest.raises(ConfigError) as caught:
        make_service(upstreams={"gpt-5": {"base_url": fake.url()}})
    assert caught.value.field == "upstreams.gpt-5"
    assert caught.value.reason.startswith("unknown model 'gpt-5'; known: ")


def test_an_answer_after_its_decision_expired_still_counts_for_the_model(make_service, fake):
    service = make_service(pending={"max_age_seconds": 60.0})
    first = service.order()[0]
    fake.on_request = lambda: service.clock.advance(61.0)  # the call outlives the decision
    response = service.chat()
    assert response.status_code == 200
    row = service.row(response.headers["x-promptroute-request-id"])
    assert row["success"] is None  # logged once, at decision time; the outcome came too late
    stats = service.model_status(first)["stats"]
    assert (stats["calls"], stats["success_rate"], stats["latency_ms"]["p50"]) == (1, 1.0, 61000.0)


# ---------------------------------------------------------------------------------------------
# Streaming


def sse(chunk_list: list[dict[str, Any]], model: str) -> bytes:
    """The exact bytes the gateway relays: each chunk with its model renamed, then [DONE]."""
    out = b""
    for chunk in chunk_list:
        renamed = {**chunk, "model": model}
        out += b"data: " + json.dumps(renamed, separators=(",", ":")).encode() + b"\n\n"
    return out + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "usage",
    [pytest.param((30, 9), id="usage-in-last-chunk"), pytest.param(None, id="usage-estimated")],
)
def test_streaming_relays_events_in_order_and_records_at_the_end(make_service, fake, usage):
    service = make_service()
    first = service.order()[0]
    fake.usage = usage
    fake.on_request = lambda: service.clock.advance(1.5)
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with service.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-promptroute-attempts"] == f"{first}:ok"
        raw = b"".join(response.iter_bytes())
    assert raw == sse(chunks(first, usage), first)
    assert fake.requests[0].body["stream"] is True
    row = service.row(response.headers["x-promptroute-request-id"])
    tokens = usage or (estimate_tokens(len(TEXT)), estimate_tokens(len("".join(ANSWER))))
    assert (row["success"], row["model"], row["latency_ms"]) == (True, first, 1500.0)
    assert row["cost_usd"] == cost(first, *tokens)
    assert (row["input_tokens"], row["output_tokens"]) == tuple(tokens)


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param("500", id="status-500"),
        pytest.param("empty", id="ends-before-first-event"),
        pytest.param("malformed", id="not-an-event-stream"),
    ],
)
def test_a_stream_falls_back_before_its_first_event(make_service, fake, behaviour):
    service = make_service()
    first, second = service.order()[:2]
    fake.behave(first, behaviour)
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with service.client.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = b"".join(response.iter_bytes())
    label = "500" if behaviour == "500" else "malformed"
    assert response.headers["x-promptroute-attempts"] == f"{first}:{label},{second}:ok"
    assert response.headers["x-promptroute-model"] == second
    assert raw == sse(chunks(second, (12, 7)), second)
    assert service.model_status(first)["breaker"]["calls_in_window"] == 1


def test_a_stream_that_breaks_midway_ends_with_an_error_event_and_a_failure(make_service, fake):
    service = make_service()
    first = service.order()[0]
    fake.behave(first, "break")
    body = {"model": "auto", "messages": MESSAGES, "stream": True}
    with service.client.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = b"".join(response.iter_bytes())
    events = raw.split(b"\n\n")
    assert events[:2] == sse(chunks(first, None)[:2], first).split(b"\n\n")[:2]
    assert json.loads(events[2].removeprefix(b"data: ")) == {
        "error": {
            "message": f"the upstream of {first} failed while streaming its answer",
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
        }
    }
    assert events[3:] == [b""]
    assert fake.models_called() == [first]  # no fallback once bytes went out
    row = service.row(response.headers["x-promptroute-request-id"])
    assert (row["success"], row["model"], row["error_type"]) == (False, first, "stream_error")
    assert service.model_status(first)["breaker"]["error_rate"] == 1.0


# ---------------------------------------------------------------------------------------------
# Fallbacks


@pytest.mark.parametrize(
    ("behaviour", "label"),
    [
        pytest.param("500", "500", id="server-error"),
        pytest.param("429", "429", id="rate-limited"),
        pytest.param("slow", "timeout", id="timeout"),
        pytest.param("malformed", "malformed", id="malformed-json"),
        # The gateway's own key or model name is wrong: not the caller's fault.
        pytest.param("401", "401", id="revoked-key"),
        pytest.param("403", "403", id="forbidden"),
        pytest.param("404", "404", id="renamed-model"),
    ],
)
def test_a_failing_first_choice_falls_back_and_is_recorded(make_service, fake, behaviour, label):
    service = make_service(timeout=0.25)
    first, second = service.order()[:2]
    fake.behave(first, behaviour)
    response = service.chat()
    assert response.status_code == 200, response.text
    assert response.json() == completion(second, (12, 7))
    assert response.headers["x-promptroute-model"] == second
    assert response.headers["x-promptroute-attempts"] == f"{first}:{label},{second}:ok"
    assert response.headers["x-promptroute-fallbacks"] == second
    assert fake.models_called() == [first, second]
    failed = service.model_status(first)
    assert failed["breaker"]["calls_in_window"] == 1 and failed["breaker"]["error_rate"] == 1.0
    assert failed["stats"]["calls"] == 1 and failed["stats"]["success_rate"] == 0.0
    # One row for the request: the answering model, and the one the router chose.
    rows = [r for r in service.rows() if r["id"] == response.headers["x-promptroute-request-id"]]
    assert [(r["model"], r["routed_model"], r["success"]) for r in rows] == [(second, first, True)]


def test_a_connection_refused_falls_back(make_service, fake, tiny_router):
    upstreams = {m: {"base_url": fake.url()} for m in tiny_router.models}
    service = make_service(upstreams=upstreams)
    first, second = service.order()[:2]
    upstreams[first] = {"base_url": "http://127.0.0.1:9/v1"}  # discard port: nothing listens
    service = make_service(upstreams=upstreams)
    response = service.chat()
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == f"{first}:network_error,{second}:ok"


@pytest.mark.parametrize(
    ("retry_after", "prefix", "slept"),
    [
        pytest.param("2", "/v1", [2.0], id="same-upstream-waits"),
        pytest.param("0.5", "/v1", [0.5], id="fractional-seconds"),
        pytest.param("6", "/v1", [], id="longer-than-the-limit"),
        pytest.param("2", "/other/v1", [], id="next-model-elsewhere"),
        pytest.param("soon", "/v1", [], id="unreadable"),
        pytest.param("Tue, 14 Nov 2023 22:13:23 GMT", "/v1", [3.0], id="http-date"),
    ],
)
def test_retry_after_is_waited_out_before_the_same_upstream(
    make_service, fake, tiny_router, retry_after, prefix, slept
):
    upstreams = {m: {"base_url": fake.url()} for m in tiny_router.models}
    service = make_service(upstreams=upstreams)
    first, second = service.order()[:2]
    upstreams[second] = {"base_url": fake.url(prefix)}
    service = make_service(upstreams=upstreams)
    fake.retry_after = retry_after
    fake.behave(first, "429")
    response = service.chat()
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == f"{first}:429,{second}:ok"
    assert service.sleeps == slept


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_request_error_is_returned_as_is_without_retry(make_service, fake, status):
    service = make_service()
    first = service.order()[0]
    fake.behave(first, str(status))
    response = service.chat()
    assert response.status_code == status
    assert response.json() == {
        "error": {
            "message": f"fake upstream error {status}",
            "type": "invalid_request_error",
            "param": None,
            "code": f"fake_{status}",
        }
    }
    assert response.headers["x-promptroute-attempts"] == f"{first}:{status}"
    assert fake.models_called() == [first]
    # Not the model's fault: nothing recorded against it.
    assert service.model_status(first)["breaker"]["calls_in_window"] == 0
    assert service.model_status(first)["stats"]["calls"] == 0


def test_when_every_attempt_fails_it_is_502_listing_them(make_service, fake):
    service = make_service(gateway={"max_attempts": 2})
    first, second, third = service.order()[:3]
    for model, behaviour in ((first, "500"), (second, "slow"), (third, "500")):
        fake.behave(model, behaviour)
    service = make_service(
        gateway={"max_attempts": 2},
        upstreams={
            m: {"base_url": fake.url(), "timeout_seconds": 0.2} for m in (first, second, third)
        },
    )
    response = service.chat()
    assert response.status_code == 502
    request_id = response.headers["x-promptroute-request-id"]
    assert error_of(response) == {
        "message": f"every upstream attempt failed ({first}: 500, {second}: timeout)",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_failed",
        "request_id": request_id,
        "attempts": [
            {"model": first, "outcome": "500"},
            {"model": second, "outcome": "timeout"},
        ],
    }
    assert response.headers["x-promptroute-attempts"] == f"{first}:500,{second}:timeout"
    assert fake.models_called() == [first, second]  # max_attempts bounds the calls
    row = service.row(request_id)
    assert (row["model"], row["success"], row["error_type"]) == (second, False, "timeout")
    for model in (first, second):
        assert service.model_status(model)["breaker"]["error_rate"] == 1.0


def test_models_without_an_upstream_are_skipped_and_noted(make_service, fake):
    service = make_service()
    first, second, third = service.order()[:3]
    service = make_service(upstreams={third: {"base_url": fake.url()}})
    response = service.chat()
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == (
        f"{first}:no_upstream,{second}:no_upstream,{third}:ok"
    )
    assert response.headers["x-promptroute-fallbacks"] == third
    assert response.json()["model"] == third


def test_a_fallback_whose_circuit_opened_during_the_request_is_skipped(make_service, fake):
    service = make_service(breakers={"consecutive_failures": 1, "min_calls": 1})
    first, second, third = service.order()[:3]
    state = service.client.app.state.service
    # While the first choice is being called, other traffic trips the second's breaker.
    fake.on_request = state.health.breakers[second].record_failure
    fake.behave(first, "500")
    response = service.chat()
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == (
        f"{first}:500,{second}:breaker_open,{third}:ok"
    )
    assert response.headers["x-promptroute-fallbacks"] == third
    assert fake.models_called() == [first, third]


# ---------------------------------------------------------------------------------------------
# The model field


def test_a_concrete_model_passes_straight_through(make_service, fake):
    service = make_service()
    last = service.order()[-1]
    response = service.chat(model=last)
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == f"{last}:ok"
    assert response.json()["model"] == last
    row = service.row(response.headers["x-promptroute-request-id"])
    assert (row["model"], row["success"], "routed_model" in row) == (last, True, False)
    # The caller chose: no fallback when it fails.
    fake.behave(last, "500")
    failed = service.chat(model=last)
    assert failed.status_code == 502
    assert failed.headers["x-promptroute-attempts"] == f"{last}:500"


@pytest.mark.parametrize(
    ("model", "priority", "knob"),
    [
        pytest.param("auto:cost", "cost", None, id="cost"),
        pytest.param("auto:quality", "quality", None, id="quality"),
        pytest.param("auto:speed", "speed", None, id="speed"),
        pytest.param("auto:8", None, 8.0, id="knob"),
        pytest.param("auto:0", None, 0.0, id="knob-zero"),
    ],
)
def test_the_model_name_carries_the_priority_or_knob(make_service, model, priority, knob):
    service = make_service()
    routing = {"priority": priority} if priority else {"knob": knob}
    expected = service.order(**routing)[0]
    response = service.chat(model=model)
    assert response.status_code == 200
    assert response.headers["x-promptroute-model"] == expected


def test_auto_cost_trades_quality_for_a_cheaper_model(make_service):
    service = make_service()
    # The first candidate set (the quality ranking's runners-up, then pairs of them) on which
    # quality and cost priorities disagree; one exists, so a retrained fixture cannot make this
    # vacuous.
    ranking = service.order(priority="quality")
    sets = [ranking[1:]] + [[a, b] for i, a in enumerate(ranking) for b in ranking[i + 1 :]]
    for candidates in sets:
        best = service.order(priority="quality", candidates=candidates)[0]
        cheap = service.order(priority="cost", candidates=candidates)[0]
        if best != cheap:
            break
    assert best != cheap
    assert CATALOG[cheap].output_price_per_1m < CATALOG[best].output_price_per_1m
    extension = {"promptroute": {"candidates": candidates}}
    assert service.chat(model="auto:cost", **extension).headers["x-promptroute-model"] == cheap
    assert service.chat(model="auto:quality", **extension).headers["x-promptroute-model"] == best


def test_routing_constraints_ride_in_the_extension_field(make_service, fake):
    service = make_service()
    order = service.order()
    candidates = order[-2:]
    expected = service.order(candidates=candidates, task_type="summarize", user_id="u1")
    response = service.chat(
        promptroute={"candidates": candidates, "task_type": "summarize"}, user="u1"
    )
    assert response.headers["x-promptroute-model"] == expected[0]
    row = service.row(response.headers["x-promptroute-request-id"])
    assert row["task_type"] == "summarize"
    assert "promptroute" not in fake.requests[0].body and fake.requests[0].body["user"] == "u1"


@pytest.mark.parametrize(
    ("body", "status", "code", "param", "message"),
    [
        pytest.param(
            {"model": "gpt-5"},
            404,
            "model_not_found",
            "model",
            "model: 'gpt-5' is not a routable model; available: auto, ",
            id="unknown-model",
        ),
        pytest.param(
            {"model": "auto:fast"},
            422,
            "invalid_request",
            "model",
            "model: unknown routing mode 'fast'; use auto, auto:quality|balanced|cost|speed or "
            "auto:<knob ≥ 0>",
            id="bad-mode",
        ),
        pytest.param(
            {"model": "auto:-1"},
            422,
            "invalid_request",
            "model",
            "model: unknown routing mode '-1'",
            id="negative-knob",
        ),
        pytest.param(
            {"promptroute": {"candidate": ["x"]}},
            422,
            "invalid_request",
            "promptroute.candidate",
            "promptroute.candidate: unknown field (expected one of: candidates, ",
            id="unknown-extension-field",
        ),
        pytest.param(
            {"promptroute": {"max_cost_usd": -1}},
            422,
            "invalid_request",
            "promptroute.max_cost_usd",
            "promptroute.max_cost_usd: Input should be greater than or equal to 0",
            id="bad-extension-value",
        ),
        pytest.param(
            {"promptroute": {"candidates": ["gpt-5"]}},
            422,
            "unknown_model",
            "promptroute.candidates[0]",
            "promptroute.candidates[0]: unknown model 'gpt-5'",
            id="unknown-candidate",
        ),
        pytest.param(
            {"messages": []},
            422,
            "invalid_request",
            "messages",
            "messages: List should have at least 1 item",
            id="no-messages",
        ),
        pytest.param(
            {"messages": [{"content": "hi"}]},
            422,
            "invalid_request",
            "messages[0].role",
            "messages[0].role: is required and must be a string",
            id="message-without-role",
        ),
        pytest.param(
            {"stream": "yes"},
            422,
            "invalid_request",
            "stream",
            "stream: Input should be a valid boolean",
            id="stream-not-bool",
        ),
    ],
)
def test_request_errors_have_openai_shape(make_service, body, status, code, param, message):
    service = make_service()
    response = service.client.post(
        "/v1/chat/completions", json={"model": "auto", "messages": MESSAGES, **body}
    )
    assert response.status_code == status
    error = error_of(response)
    assert (error["code"], error["param"]) == (code, param)
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(message)


def test_invalid_json_is_400_in_openai_shape(make_service):
    service = make_service()
    response = service.client.post(
        "/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["type"], error["param"]) == (
        "invalid_json",
        "invalid_request_error",
        None,
    )


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        pytest.param(b"\xff\xfe", 400, "invalid_json", id="not-utf8"),
        pytest.param(
            b'{"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
            422,
            "invalid_request",
            id="nan-for-upstream",
        ),
        pytest.param(b"[1]", 422, "invalid_request", id="not-an-object"),
    ],
)
def test_undecodable_bodies_are_refused_in_openai_shape(make_service, fake, content, status, code):
    service = make_service()
    response = service.client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == status
    assert error_of(response)["code"] == code
    assert fake.requests == []


def test_routing_options_with_a_concrete_model_are_refused(make_service):
    service = make_service()
    last = service.order()[-1]
    response = service.chat(model=last, promptroute={"max_cost_usd": 1.0})
    assert response.status_code == 422
    assert error_of(response)["param"] == "promptroute.max_cost_usd"


def test_a_model_without_upstream_cannot_be_called_by_name(make_service, fake):
    service = make_service()
    first, second = service.order()[:2]
    service = make_service(upstreams={first: {"base_url": fake.url()}})
    response = service.chat(model=second)
    assert response.status_code == 404
    assert error_of(response)["message"] == (
        f"model: {second!r} has no upstream configured; available: auto, {first}"
    )


def test_no_eligible_model_is_422_with_the_removed_map(make_service, tiny_router):
    service = make_service()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    response = service.client.post(
        "/v1/chat/completions", json={"model": "auto", "messages": messages}
    )
    assert response.status_code == 422
    error = error_of(response)
    assert (error["code"], error["type"]) == ("no_eligible_model", "invalid_request_error")
    assert set(error["removed"]) == set(tiny_router.models)  # no catalog model has vision
    assert {r["filter"] for r in error["removed"].values()} == {"capability"}


# ---------------------------------------------------------------------------------------------
# /v1/models, metrics


def test_models_lists_auto_and_the_callable_routable_models(make_service, fake, tiny_router):
    service = make_service()
    listed = service.client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert listed["data"][0] == {
        "id": "auto",
        "object": "model",
        "created": 0,
        "owned_by": "promptroute",
    }
    catalog_order = [m for m in CATALOG.names if m in tiny_router.models]
    assert [m["id"] for m in listed["data"][1:]] == catalog_order
    assert {m["owned_by"] for m in listed["data"][1:]} == {
        CATALOG[m].provider for m in catalog_order
    }
    only = catalog_order[1]
    service = make_service(upstreams={only: {"base_url": fake.url()}})
    assert [m["id"] for m in service.client.get("/v1/models").json()["data"]] == ["auto", only]


def test_upstream_attempts_are_counted_in_metrics(make_service, fake):
    service = make_service()
    first, second = service.order()[:2]
    fake.behave(first, "500")
    service.chat()
    text = service.client.get("/metrics").text
    assert (
        f'promptroute_upstream_attempts_total{{model="{first}",outcome="server_error"}} 1.0' in text
    )
    assert f'promptroute_upstream_attempts_total{{model="{second}",outcome="ok"}} 1.0' in text


def test_the_example_config_documents_upstreams_and_gateway():
    example = Path(__file__).resolve().parent.parent / "serving" / "examples" / "routing.yaml"
    settings = load_settings(example)
    assert settings.gateway.max_attempts == 3 and settings.gateway.max_retry_after_seconds == 5.0
    assert settings.upstreams
    settings.check_models(CATALOG.names)


def test_deeply_nested_extra_fields_are_refused_before_anything_is_called(make_service, fake):
    service = make_service()
    calls = len(fake.requests)
    tools: Any = "leaf"
    for _ in range(200):  # deeper than serving.routes.route.MAX_MESSAGES_DEPTH
        tools = [tools]
    response = service.chat(tools=tools)
    assert response.status_code == 422
    error = error_of(response)
    assert error["param"] == "body"
    assert "nested deeper than 64 levels" in error["message"]
    assert len(fake.requests) == calls


def test_each_gateway_request_writes_one_access_line(make_service, fake, caplog):
    service = make_service()
    first, second = service.order()[:2]
    fake.behave(first, "500")
    with caplog.at_level("INFO", logger="promptroute.access"):
        response = service.chat()
        service.client.get("/models")  # not a gateway request: no line
    lines = [r for r in caplog.records if r.name == "promptroute.access"]
    assert len(lines) == 1
    record = lines[0]
    rid = response.headers["x-promptroute-request-id"]
    assert record.getMessage().startswith("POST /v1/chat/completions 200 ")
    assert record.getMessage().endswith(
        f"ms model={second} attempts={first}:500,{second}:ok fallbacks={second} request_id={rid}"
    )
    assert (record.status, record.model, record.request_id) == (200, second, rid)
    assert MESSAGES[0]["content"] not in record.getMessage()  # never the prompt


def test_the_gateway_access_log_can_be_turned_off(make_service, caplog):
    service = make_service(gateway_access_log=False)
    with caplog.at_level("INFO", logger="promptroute.access"):
        assert service.chat().status_code == 200
    assert not [r for r in caplog.records if r.name == "promptroute.access"]
