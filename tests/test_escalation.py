"""Verify and escalate: fake upstreams on loopback whose answers fail each check.

The routed model is the cheap one of two candidates (``auto:cost``); the stronger one has the
higher predicted quality. The weak model's upstream answers badly in one way per test, the
strong one answers well; the gateway must serve the strong answer, say why in its headers, and
account for both calls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fake_upstream import serve_in_thread
from fakes import FakeClock, TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from models.artifact import save_router
from models.catalog import load_catalog
from models.verifier import STRUCTURE_NAMES, Verifier
from serving import create_app, load_settings
from serving.config import EscalationConfig
from serving.decision_log import read_joined_rows
from serving.gateway.escalation import EscalationPolicy, check_answer, policy_for

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
WALL = 1_700_000_000.0
QUESTION = "Natalia sold clips to 48 friends in April and half as many in May. How many in total?"
MESSAGES = [{"role": "user", "content": QUESTION}]
CATALOG = load_catalog()
GOOD = {"role": "assistant", "content": "48 / 2 = 24 and 48 + 24 = 72\n#### 72"}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
}
JSON_SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]


def _tool_call(arguments: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": arguments}}
        ],
    }


class Upstreams:
    """One fake OpenAI upstream on loopback; each model's reply is set per test."""

    def __init__(self) -> None:
        self.replies: dict[str, tuple[int, dict[str, Any], str]] = {}
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self._chat, methods=["POST"])])

    def reply(self, model: str, message: dict[str, Any], finish: str = "stop", status: int = 200):
        self.replies[model] = (status, message, finish)

    async def _chat(self, request: Request) -> JSONResponse:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
        status, message, finish = self.replies.get(body["model"], (200, GOOD, "stop"))
        if status != 200:
            return JSONResponse({"error": {"message": "boom"}}, status_code=status)
        usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
        return JSONResponse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": usage,
            }
        )

    def called(self) -> list[str]:
        return [r["model"] for r in self.requests]


@pytest.fixture(scope="module")
def upstream():
    fake = Upstreams()
    with serve_in_thread(fake.app) as origin:
        fake.origin = origin  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(autouse=True)
def _fresh(upstream):
    upstream.replies.clear()
    upstream.requests.clear()


def _marker_verifier() -> Verifier:
    """P(right) ≈ 0.95 with a '####' final answer, ≈ 0.05 without: a verifier one can reason about."""
    dense = np.zeros(len(STRUCTURE_NAMES))
    dense[STRUCTURE_NAMES.index("marker_hash")] = 6.0
    return Verifier(
        dense_w=dense, hashed_w=np.zeros(256, dtype=np.float32), bias=-3.0, threshold=0.5
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_router) -> Path:
    router = dataclasses.replace(tiny_router, verifiers={WEAK: _marker_verifier()})
    path = tmp_path_factory.mktemp("verified") / "artifact"
    save_router(router, path, catalog=CATALOG.to_dict(), training={}, metrics={})
    return path


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    data = CATALOG.to_dict()
    data["models"] = [m for m in data["models"] if m["name"] in tiny_router.models]
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@dataclasses.dataclass
class Service:
    client: TestClient
    clock: FakeClock
    log_path: Path

    def chat(self, escalate: Any = True, **extra: Any):
        ext: dict[str, Any] = {"candidates": [WEAK, STRONG]}
        if escalate is not None:
            ext["escalate"] = escalate
        body = {"model": "auto:cost", "messages": MESSAGES, "promptroute": ext, **extra}
        return self.client.post("/v1/chat/completions", json=body)

    def row(self, request_id: str) -> dict[str, Any]:
        """The request's training row: its decision joined with its outcome."""
        (found,) = [r for r in read_joined_rows(self.log_path) if r["id"] == request_id]
        return found


@pytest.fixture
def make_service(artifact, catalog_path, tmp_path, upstream):
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> Service:
            log_path = tmp_path / "decisions.jsonl"
            settings = load_settings(
                artifact=str(artifact),
                catalog=str(catalog_path),
                decision_log={"path": str(log_path), **overrides.pop("decision_log", {})},
                log_prompts=True,
                upstreams={
                    m: {"base_url": f"{upstream.origin}/v1", "timeout_seconds": 5.0}
                    for m in (WEAK, STRONG)
                },
                **overrides,
            )
            clock = FakeClock()
            upstream.on_call = None
            app = create_app(settings, clock=clock, wall_clock=lambda: WALL, environ={})
            client = stack.enter_context(TestClient(app))
            return Service(client, clock, log_path)

        yield make


def _cost(model: str) -> float:
    return CATALOG[model].cost_usd(30, 20)


def test_the_weak_model_is_routed_first_and_the_strong_one_scores_higher(make_service):
    service = make_service()
    decision = service.client.post(
        "/route", json={"messages": MESSAGES, "priority": "cost", "candidates": [WEAK, STRONG]}
    ).json()
    assert (decision["model"], decision["fallbacks"]) == (WEAK, [STRONG])
    assert decision["scores"][STRONG] > decision["scores"][WEAK]


@pytest.mark.parametrize(
    ("bad", "finish", "extra", "good", "reason"),
    [
        pytest.param(
            {"role": "assistant", "content": "48 / 2 = 24 and"},
            "length",
            {},
            GOOD,
            "length",
            id="truncated",
        ),
        pytest.param({"role": "assistant", "content": "  "}, "stop", {}, GOOD, "empty", id="empty"),
        pytest.param(
            {"role": "assistant", "content": "I'm sorry, but I can't help with that."},
            "stop",
            {},
            GOOD,
            "refusal",
            id="refusal-text",
        ),
        pytest.param(
            {"role": "assistant", "content": None, "refusal": "I cannot do this."},
            "stop",
            {},
            GOOD,
            "refusal",
            id="refusal-field",
        ),
        pytest.param(
            {"role": "assistant", "content": "The answer is 72"},
            "stop",
            {"response_format": {"type": "json_object"}},
            {"role": "assistant", "content": '{"answer": 72}'},
            "json:parse",
            id="json-parse",
        ),
        pytest.param(
            {"role": "assistant", "content": '{"answer": "seventy-two"}'},
            "stop",
            {"response_format": JSON_SCHEMA_FORMAT},
            {"role": "assistant", "content": '{"answer": 72}'},
            "json:schema",
            id="json-schema",
        ),
        pytest.param(
            _tool_call('{"a": 48, "b": '),
            "tool_calls",
            {"tools": TOOLS},
            _tool_call('{"a": 48, "b": 24}'),
            "tool_args",
            id="tool-args",
        ),
        pytest.param(
            {"role": "assistant", "content": "She sold 48 + 24 = 72 clips."},
            "stop",
            {},
            GOOD,
            "verifier:0.05<0.50",
            id="verifier",
        ),
    ],
)
def test_a_failed_check_escalates_to_the_stronger_model(
    make_service, upstream, bad, finish, extra, good, reason
):
    upstream.reply(WEAK, bad, finish)
    upstream.reply(STRONG, good)
    service = make_service()
    response = service.chat(**extra)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == STRONG
    assert body["choices"][0]["message"] == good
    assert response.headers["x-promptroute-model"] == STRONG
    assert response.headers["x-promptroute-escalated"] == reason
    assert response.headers["x-promptroute-attempts"] == f"{WEAK}:escalated,{STRONG}:ok"
    assert upstream.called() == [WEAK, STRONG]
    # Both calls are paid for, and the row says which answer was discarded and why.
    row = service.row(response.headers["x-promptroute-request-id"])
    assert row["model"] == STRONG and row["routed_model"] == WEAK and row["success"] is True
    assert row["cost_usd"] == pytest.approx(_cost(WEAK) + _cost(STRONG))
    (discarded,) = row["escalations"]
    assert discarded["model"] == WEAK and discarded["reason"] == reason
    assert discarded["cost_usd"] == pytest.approx(_cost(WEAK))
    assert row["response"] == (good["content"] or "")
    metrics = service.client.get("/metrics").text
    check = reason.partition(":")[0]
    assert f'promptroute_escalations_total{{check="{check}",model="{WEAK}"}} 1.0' in metrics
    assert f"promptroute_escalation_discarded_cost_usd_total {_cost(WEAK)}" in metrics


def test_a_passing_answer_is_served_with_its_verifier_score(make_service, upstream):
    service = make_service()
    response = service.chat()
    assert response.status_code == 200
    assert response.json()["model"] == WEAK
    assert response.headers["x-promptroute-verdict"] == "passed:verifier:0.95"
    assert "x-promptroute-escalated" not in response.headers
    assert upstream.called() == [WEAK]
    row = service.row(response.headers["x-promptroute-request-id"])
    assert "escalations" not in row and row["cost_usd"] == pytest.approx(_cost(WEAK))


def test_escalation_is_off_unless_asked(make_service, upstream):
    upstream.reply(WEAK, {"role": "assistant", "content": ""})
    service = make_service()
    response = service.chat(escalate=None)
    assert response.status_code == 200
    assert response.json()["model"] == WEAK
    assert "x-promptroute-verdict" not in response.headers
    assert upstream.called() == [WEAK]
    assert service.chat(escalate=False).json()["model"] == WEAK


def test_the_config_turns_it_on_for_every_request(make_service, upstream):
    upstream.reply(WEAK, {"role": "assistant", "content": ""})
    service = make_service(gateway={"escalation": {"enabled": True, "checks": ["empty"]}})
    response = service.chat(escalate=None)
    assert response.headers["x-promptroute-escalated"] == "empty"
    assert response.json()["model"] == STRONG
    # ... and a request can still turn it off
    assert service.chat(escalate=False).json()["model"] == WEAK


def test_the_first_answer_is_served_when_the_stronger_call_fails(make_service, upstream):
    bad = {"role": "assistant", "content": "The total is 72."}
    upstream.reply(WEAK, bad)
    upstream.reply(STRONG, GOOD, status=500)
    service = make_service()
    response = service.chat()
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"] == bad
    assert response.headers["x-promptroute-verdict"] == "verifier:0.05<0.50;escalation_failed"
    assert response.headers["x-promptroute-attempts"] == f"{WEAK}:ok,{STRONG}:500"
    row = service.row(response.headers["x-promptroute-request-id"])
    assert row["model"] == WEAK and "escalations" not in row


def test_a_streamed_request_is_buffered_only_when_escalation_is_on(make_service, upstream):
    upstream.reply(WEAK, {"role": "assistant", "content": "no final answer"})
    service = make_service()
    response = service.chat(stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-promptroute-escalated"] == "verifier:0.05<0.50"
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk" and first["model"] == STRONG
    assert first["choices"][0]["delta"]["content"] == GOOD["content"]
    usage = json.loads(events[1].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == 20
    # the upstreams were asked for whole answers, so that they could be checked
    assert all("stream" not in r and "stream_options" not in r for r in upstream.requests)


@pytest.mark.parametrize(
    ("escalate", "param", "message"),
    [
        pytest.param(
            "yes",
            "promptroute.escalate",
            "must be true, false or an object with checks, threshold, max_escalations",
            id="type",
        ),
        pytest.param(
            {"threshold": 1.5},
            "promptroute.escalate.threshold",
            "must be a number between 0 and 1 (exclusive)",
            id="threshold",
        ),
        pytest.param(
            {"checks": ["vibes"]},
            "promptroute.escalate.checks[0]",
            "unknown check 'vibes'; known: length, empty, refusal, json, tool_args, verifier",
            id="check",
        ),
        pytest.param(
            {"max_escalations": 0},
            "promptroute.escalate.max_escalations",
            "must be a whole number from 1 to 3",
            id="max",
        ),
        pytest.param(
            {"retries": 2},
            "promptroute.escalate.retries",
            "unknown field (expected one of: checks, threshold, max_escalations)",
            id="unknown",
        ),
    ],
)
def test_a_bad_escalate_field_is_a_422_naming_it(make_service, upstream, escalate, param, message):
    response = make_service().chat(escalate=escalate)
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["param"], error["message"]) == (param, f"{param}: {message}")
    assert upstream.called() == []


def test_escalate_applies_only_to_routed_requests(make_service, upstream):
    body = {"model": WEAK, "messages": MESSAGES, "promptroute": {"escalate": True}}
    response = make_service().client.post("/v1/chat/completions", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "promptroute.escalate"
    assert upstream.called() == []


def test_checks_run_cheapest_first_and_only_those_asked_for() -> None:
    policy = EscalationPolicy(("length", "empty", "verifier"), None, 1)
    body = {"choices": [{"message": {"content": ""}, "finish_reason": "length"}]}
    assert check_answer(body, {}, QUESTION, _marker_verifier(), policy).reason == "length"
    only = EscalationPolicy(("json",), None, 1)
    assert check_answer(body, {}, QUESTION, _marker_verifier(), only).passed
    # a broken schema from the client is not the model's fault
    broken = {"type": "json_schema", "json_schema": {"schema": {"type": 12}}}
    answer = {"choices": [{"message": {"content": "{}"}, "finish_reason": "stop"}]}
    assert check_answer(answer, {"response_format": broken}, QUESTION, None, only).passed


def test_policy_for_merges_the_request_with_the_config() -> None:
    config = EscalationConfig(enabled=False, threshold=0.4)
    assert policy_for(None, config) is None
    assert policy_for(True, config) == EscalationPolicy(
        ("length", "empty", "refusal", "json", "tool_args", "verifier"), 0.4, 1
    )
    custom = policy_for({"checks": ["verifier", "empty"], "threshold": 0.7}, config)
    assert custom == EscalationPolicy(("empty", "verifier"), 0.7, 1)
    assert policy_for(None, EscalationConfig(enabled=True)) is not None


def test_the_answer_text_is_not_logged_when_prompts_are_not(make_service, upstream):
    service = make_service(decision_log={"store_prompt": False})
    response = service.chat()
    row = service.row(response.headers["x-promptroute-request-id"])
    assert "response" not in row and "messages" not in row and "prompt_sha256" in row


def test_bad_escalation_config_names_the_field(artifact, catalog_path) -> None:
    from models.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_settings(
            artifact=str(artifact),
            catalog=str(catalog_path),
            gateway={"escalation": {"checks": ["vibes"]}},
        )
    assert "gateway.escalation.checks[0]" in str(e.value)
