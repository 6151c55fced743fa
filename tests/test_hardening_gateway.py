"""Issue 11 items 4-7, 9, 10: the gateway against a flaky or hostile upstream, over real sockets.

Each test runs promptroute under uvicorn on a loopback port and the fake upstream on another,
makes the upstream misbehave the way the issue describes, and asserts the safe outcome: a
fallback while nothing was sent, an error event once something was, the failure counted on the
model, and a decision-log row. Deadlines are a few hundred milliseconds, so nothing waits long.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_upstream import FakeUpstream, chunks, completion
from fakes import LiveServer

from serving import create_app, load_settings

MESSAGES = [{"role": "user", "content": "Summarize the plot of Hamlet in three sentences."}]


@dataclass
class Live:
    client: httpx.Client
    log_path: Path

    def order(self) -> list[str]:
        """The routed ranking for MESSAGES (the same question the chat calls ask)."""
        response = self.client.post("/route", json={"messages": MESSAGES})
        assert response.status_code == 200, response.text
        return [response.json()["model"], *response.json()["fallbacks"]]

    def chat(self, **extra: Any) -> httpx.Response:
        return self.client.post(
            "/v1/chat/completions", json={"model": "auto", "messages": MESSAGES, **extra}
        )

    def stream(self) -> tuple[httpx.Response, bytes]:
        body = {"model": "auto", "messages": MESSAGES, "stream": True}
        with self.client.stream("POST", "/v1/chat/completions", json=body) as response:
            return response, b"".join(response.iter_bytes())

    def row(self, request_id: str) -> dict[str, Any]:
        """The request's outcome row, with the routed model from its decision row (written
        apart, at decision time) as ``routed_model``."""
        rows = [json.loads(line) for line in self.log_path.read_text("utf-8").splitlines()]
        (decision,) = [r for r in rows if r["id"] == request_id and r.get("kind") == "decision"]
        (found,) = [r for r in rows if r["id"] == request_id and r.get("kind") == "outcome"]
        return {**found, "routed_model": decision["model"]}

    def breaker(self, model: str) -> dict[str, Any]:
        models = {m["name"]: m for m in self.client.get("/models").json()["models"]}
        return models[model]["breaker"]

    def metric(self, name: str, **labels: str) -> float:
        text = self.client.get("/metrics").text
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
            if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
                return float(match.group(2))
        return 0.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream(dribble_seconds=0.05) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake):
    fake.reset()


@pytest.fixture
def serve(tiny_artifact, catalog_path, tiny_router, tmp_path, fake):
    """`serve(upstream={...}, **settings)` → promptroute on a live loopback port.

    Every routable model gets an upstream on the fake; `upstream` adds to each one's config.
    """
    servers: list[tuple[LiveServer, httpx.Client]] = []

    def start(
        *,
        upstream: dict[str, Any] | None = None,
        upstreams: dict[str, Any] | None = None,
        environ: dict[str, str] | None = None,
        **overrides: Any,
    ) -> Live:
        if upstreams is None:
            extra = {"timeout_seconds": 0.4, **(upstream or {})}
            upstreams = {m: {"base_url": fake.url(), **extra} for m in tiny_router.models}
        log_path = tmp_path / f"decisions-{len(servers)}.jsonl"
        settings = load_settings(
            artifact=str(tiny_artifact),
            catalog=str(catalog_path),
            decision_log={"path": str(log_path)},
            upstreams=upstreams,
            **overrides,
        )
        server = LiveServer(
            create_app(settings, environ=environ or {}), graceful_shutdown_seconds=2
        )
        client = httpx.Client(base_url=server.start(), timeout=10)
        servers.append((server, client))
        return Live(client, log_path)

    yield start
    for server, client in servers:
        client.close()
        server.stop()


def sse(chunk_list: list[dict[str, Any]], model: str) -> bytes:
    out = b""
    for chunk in chunk_list:
        out += b"data: " + json.dumps({**chunk, "model": model}, separators=(",", ":")).encode()
        out += b"\n\n"
    return out + b"data: [DONE]\n\n"


def events_of(raw: bytes) -> list[Any]:
    out = []
    for event in raw.split(b"\n\n"):
        if event:
            data = event.removeprefix(b"data: ")
            out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


# ---------------------------------------------------------------------------------------------
# 4. A deadline for the whole attempt, and for a started stream


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_an_upstream_dribbling_one_byte_at_a_time_times_out_and_falls_back(serve, fake, stream):
    # Each byte arrives well within the 0.4 s read timeout: only a whole-attempt deadline ends it.
    live = serve()
    first, second = live.order()[:2]
    fake.behave(first, "dribble")
    started = time.monotonic()
    if stream:
        response, raw = live.stream()
        assert raw == sse(chunks(second, (12, 7)), second)
    else:
        response = live.chat()
        assert response.json() == completion(second, (12, 7))
    assert time.monotonic() - started < 3.0
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == f"{first}:timeout,{second}:ok"
    assert live.breaker(first)["calls_in_window"] == 1
    assert live.metric("promptroute_upstream_attempts_total", model=first, outcome="timeout") == 1
    row = live.row(response.headers["x-promptroute-request-id"])
    assert (row["model"], row["routed_model"], row["success"]) == (second, first, True)


@pytest.mark.parametrize(
    ("behaviour", "upstream"),
    [
        pytest.param("stall", {"stream_idle_seconds": 0.3}, id="silent-after-first-chunk"),
        pytest.param(
            "endless", {"stream_idle_seconds": 5.0, "stream_max_seconds": 0.5}, id="never-ends"
        ),
    ],
)
def test_a_started_stream_past_its_deadline_ends_with_an_error_event(
    serve, fake, behaviour, upstream
):
    live = serve(upstream=upstream)
    first = live.order()[0]
    fake.behave(first, behaviour)
    started = time.monotonic()
    response, raw = live.stream()
    assert time.monotonic() - started < 4.0
    events = events_of(raw)
    assert events[0] == {**chunks(first, (12, 7))[0], "model": first}
    assert events[-1] == {
        "error": {
            "message": f"the upstream of {first} stopped sending within its deadline while "
            "streaming its answer",
            "type": "upstream_error",
            "param": None,
            "code": "stream_timeout",
        }
    }
    assert fake.models_called() == [first]  # bytes went out: no fallback
    row = live.row(response.headers["x-promptroute-request-id"])
    assert (row["model"], row["success"], row["error_type"]) == (first, False, "timeout")
    assert live.breaker(first)["error_rate"] == 1.0


# ---------------------------------------------------------------------------------------------
# 5 and 7. Replies checked like requests


@pytest.mark.parametrize(
    ("behaviour", "stream"),
    [
        pytest.param("huge_usage", False, id="400-digit-usage"),
        pytest.param("nan", False, id="nan-in-body"),
        pytest.param("nan", True, id="nan-in-first-chunk"),
        pytest.param("not_json", True, id="first-event-not-json"),
    ],
)
def test_a_malformed_reply_falls_back_while_nothing_was_sent(serve, fake, behaviour, stream):
    live = serve()
    first, second = live.order()[:2]
    fake.behave(first, behaviour)
    if stream:
        response, raw = live.stream()
        assert raw == sse(chunks(second, (12, 7)), second)
    else:
        response = live.chat()
        # Strict JSON out: the reply that was relayed parses without NaN.
        assert json.loads(response.content, parse_constant=pytest.fail) == completion(
            second, (12, 7)
        )
    assert response.status_code == 200
    assert response.headers["x-promptroute-attempts"] == f"{first}:malformed,{second}:ok"
    assert live.metric("promptroute_upstream_attempts_total", model=first, outcome="malformed") == 1
    assert live.breaker(first)["calls_in_window"] == 1


def test_a_reply_too_big_to_hold_is_malformed_and_falls_back(serve, fake, monkeypatch):
    from serving.gateway import completions

    monkeypatch.setattr(completions, "_MAX_REPLY_BYTES", 2**15)  # 32 MiB in production
    live = serve()
    first, second = live.order()[:2]
    fake.behave(first, "bulky")
    response = live.chat()
    assert response.status_code == 200
    assert response.json() == completion(second, (12, 7))
    assert response.headers["x-promptroute-attempts"] == f"{first}:malformed,{second}:ok"


def test_a_malformed_chunk_after_the_stream_started_ends_it_with_an_error_and_a_row(serve, fake):
    # The 400-digit usage arrives in the last chunk: the answer's text was already relayed.
    live = serve()
    first = live.order()[0]
    fake.behave(first, "huge_usage")
    response, raw = live.stream()
    assert response.status_code == 200
    events = events_of(raw)
    assert events[-1]["error"]["code"] == "stream_malformed"
    assert all("usage" not in e for e in events if isinstance(e, dict))  # never relayed
    row = live.row(response.headers["x-promptroute-request-id"])  # logged now, not at shutdown
    assert (row["model"], row["success"], row["error_type"]) == (first, False, "malformed")


# ---------------------------------------------------------------------------------------------
# 6. The gateway's own credentials and config are not the caller's fault


@pytest.mark.parametrize("status", [401, 403, 404])
def test_provider_auth_and_config_errors_fall_back_and_count_on_the_breaker(serve, fake, status):
    live = serve()
    first, second = live.order()[:2]
    fake.behave(first, str(status))
    response = live.chat()
    assert response.status_code == 200
    assert response.json()["model"] == second
    assert response.headers["x-promptroute-attempts"] == f"{first}:{status},{second}:ok"
    assert live.breaker(first)["calls_in_window"] == 1
    assert live.breaker(first)["error_rate"] == 1.0
    labels = {"model": first, "outcome": "provider_error"}
    assert live.metric("promptroute_upstream_attempts_total", **labels) == 1


def test_a_revoked_key_everywhere_opens_the_breakers_instead_of_blaming_the_caller(serve, fake):
    live = serve(breakers={"consecutive_failures": 2, "min_calls": 2}, gateway={"max_attempts": 2})
    first, second = live.order()[:2]
    for model in (first, second):
        fake.behave(model, "401")
    for _ in range(2):
        response = live.chat()
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_failed"
    assert live.breaker(first)["state"] == "open"


# ---------------------------------------------------------------------------------------------
# 9. No upstreams at all


def test_no_upstreams_configured_is_503_and_leaves_nothing_pending(serve, fake, tiny_router):
    live = serve(upstreams={})
    before = live.metric("promptroute_pending_decisions")
    response = live.chat()
    assert response.status_code == 503
    assert response.json() == {
        "error": {
            "message": "no upstreams are configured: add an `upstreams:` section to the service "
            "config (for each catalog model: base_url, and api_key_env if it needs a key)",
            "type": "service_unavailable_error",
            "param": None,
            "code": "no_upstreams",
        }
    }
    named = live.chat(model=tiny_router.models[0])  # a routable model named directly: the same
    assert (named.status_code, named.json()) == (503, response.json())
    # An invalid request is still told what is wrong with it first.
    invalid = live.chat(promptroute={"max_cost_usd": -1})
    assert (invalid.status_code, invalid.json()["error"]["param"]) == (
        422,
        "promptroute.max_cost_usd",
    )
    assert live.metric("promptroute_pending_decisions") == before == 0
    assert fake.requests == []
    live.order()  # while /route still decides (and its decision waits): the gauge moves
    assert live.metric("promptroute_pending_decisions") == 1


# ---------------------------------------------------------------------------------------------
# 10. What reaches the caller


def test_a_relayed_upstream_error_has_credentials_redacted(serve, fake, tiny_router):
    key = "pk-0000-the-gateway-own-secret"
    upstreams = {
        m: {"base_url": fake.url(), "api_key_env": "FAKE_KEY", "timeout_seconds": 0.4}
        for m in tiny_router.models
    }
    live = serve(upstreams=upstreams, environ={"FAKE_KEY": key})
    first = live.order()[0]
    fake.behave(first, "leak")
    response = live.chat()
    assert response.status_code == 400
    assert fake.requests[0].headers["authorization"] == f"Bearer {key}"  # what was echoed
    message = response.json()["error"]["message"]
    assert message == "bad request; you sent 'Bearer [redacted]', try key [redacted] instead"
    assert key not in response.text and "sk-live" not in response.text


def test_an_upstream_error_event_mid_stream_is_relayed_with_credentials_redacted(serve, fake):
    live = serve()
    first = live.order()[0]
    fake.behave(first, "error_midway")
    response, raw = live.stream()
    assert b"sk-live" not in raw
    events = events_of(raw)
    assert events[-1] == {"error": {"message": "quota exceeded for key [redacted]"}}
    row = live.row(response.headers["x-promptroute-request-id"])
    assert (row["model"], row["success"], row["error_type"]) == (first, False, "stream_error")


@pytest.mark.parametrize(
    ("method", "path", "body", "field_message"),
    [
        pytest.param(
            "GET", "/experiments/" + "x" * 10_000, None, "no experiment named 'xxxx", id="path"
        ),
        pytest.param(
            "POST",
            "/v1/chat/completions",
            {"model": "\u202e" + "y" * 150, "messages": MESSAGES},
            "model: '\\u202eyyyy",
            id="model",
        ),
        pytest.param(
            "POST",
            "/feedback",
            {"request_id": "z" * 128, "success": True},
            "no pending decision with request_id 'zzzz",
            id="request-id",
        ),
    ],
)
def test_error_bodies_quote_caller_values_short_and_escaped(
    serve, method, path, body, field_message
):
    live = serve()
    response = live.client.request(method, path, json=body)
    assert 400 <= response.status_code < 500
    message = response.json()["error"]["message"]
    assert message.startswith(field_message)
    assert len(message) < 600
    assert "x" * 41 not in message and "y" * 41 not in message and "z" * 41 not in message
    assert "\u202e" not in message  # a bidi override is escaped, not echoed


# ---------------------------------------------------------------------------------------------
# Every fault, streamed or not: never a 500, never a broken answer

FAULTS = [
    "500",
    "429",
    "401",
    "403",
    "404",
    "slow",
    "dribble",
    "malformed",
    "huge_usage",
    "nan",
    "leak",
    "empty",
    "break",
    "stall",
    "endless",
    "not_json",
    "error_midway",
]


def test_every_upstream_fault_ends_in_a_well_formed_answer_and_never_a_500(serve, fake):
    """The first choice misbehaves, the second answers: a complete answer from one of them,
    or a 400 relayed (redacted) — never a 500, a reset connection, or invalid JSON."""
    # Breakers that do not trip here, so that every case goes to the same first choice.
    breakers = {"window_size": 100, "min_calls": 100, "consecutive_failures": 1000}
    live = serve(
        upstream={"stream_idle_seconds": 0.3, "stream_max_seconds": 0.6}, breakers=breakers
    )
    first = live.order()[0]
    fake.retry_after = "0"  # a 429's wait is the gateway's Retry-After tests' business
    statuses: dict[int, int] = {}
    for fault in FAULTS:
        for stream in (False, True):
            fake.behave(first, fault)
            if stream:
                response, raw = live.stream()
                events = events_of(raw)  # every event parses as strict JSON, or is [DONE]
                assert events[-1] == "[DONE]" or "error" in events[-1], (fault, raw[-200:])
            elif (response := live.chat()).status_code == 200:
                assert json.loads(response.content, parse_constant=pytest.fail)["choices"]
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code in (200, 400), (fault, stream, response.text)
            assert "sk-live" not in response.text if not stream else b"sk-live" not in raw
    assert sum(statuses.values()) == 2 * len(FAULTS)
    assert statuses[400] == 2  # "leak", relayed as the caller's own fault, redacted
