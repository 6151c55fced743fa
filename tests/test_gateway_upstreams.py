"""The gateway's configuration, upstream resolution, client lifetime, and its SSE and header
parsing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from fakes import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

import serving.gateway as gateway_package
from models.errors import ConfigError
from serving import create_app, load_settings
from serving.gateway import completions, upstreams
from serving.gateway.completions import _forward, _retry_after, _SseEvents, _StreamTally
from serving.gateway.upstreams import Upstreams, resolve_upstreams
from serving.routes import openai as openai_routes

WALL = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(
    ("module", "names"),
    [
        pytest.param(
            gateway_package,
            [
                "CLIENT_ERRORS",
                "ChatPlan",
                "Gateway",
                "GatewayReply",
                "MAX_TOKENS",
                "PROVIDER_ERRORS",
                "Sleep",
                "Upstream",
                "Upstreams",
                "resolve_upstreams",
            ],
            id="package",
        ),
        pytest.param(upstreams, ["Upstream", "Upstreams", "resolve_upstreams"], id="upstreams"),
        pytest.param(
            completions,
            [
                "CLIENT_ERRORS",
                "ChatPlan",
                "Gateway",
                "GatewayReply",
                "MAX_TOKENS",
                "PROVIDER_ERRORS",
                "Sleep",
            ],
            id="completions",
        ),
        pytest.param(
            openai_routes,
            ["ChatCompletionRequest", "GatewayDep", "get_gateway", "openai_error", "router"],
            id="routes",
        ),
    ],
)
def test_all_is_exact(module, names):
    assert sorted(module.__all__) == names
    assert all(hasattr(module, name) for name in names)


# ---------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize(
    ("overrides", "field", "reason"),
    [
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "ftp://example.com"}}},
            "upstreams.gpt-4.base_url",
            "must be an http:// or https:// URL, got 'ftp://example.com'",
            id="scheme",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "https://"}}},
            "upstreams.gpt-4.base_url",
            "must be an http:// or https:// URL, got 'https://'",
            id="no-host",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"model": "x"}}},
            "upstreams.gpt-4.base_url",
            "Field required",
            id="missing-base-url",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "http://h/v1", "api_key": "sk-1"}}},
            "upstreams.gpt-4.api_key",
            "unknown field (expected one of: base_url, model, api_key_env, timeout_seconds, "
            "stream_idle_seconds, stream_max_seconds)",
            id="unknown-field",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "http://h/v1", "timeout_seconds": 0}}},
            "upstreams.gpt-4.timeout_seconds",
            "Input should be greater than 0",
            id="zero-timeout",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "http://h/v1", "timeout_seconds": "5"}}},
            "upstreams.gpt-4.timeout_seconds",
            "Input should be a valid number",
            id="quoted-number",
        ),
        pytest.param(
            {"upstreams": {"gpt-4": {"base_url": "http://h/v1", "api_key_env": ""}}},
            "upstreams.gpt-4.api_key_env",
            "String should have at least 1 character",
            id="empty-env-name",
        ),
        pytest.param(
            {"gateway": {"max_attempts": 0}},
            "gateway.max_attempts",
            "Input should be greater than 0",
            id="no-attempts",
        ),
        pytest.param(
            {"gateway": {"max_retry_after_seconds": -1.0}},
            "gateway.max_retry_after_seconds",
            "Input should be greater than or equal to 0",
            id="negative-wait",
        ),
        pytest.param(
            {"gateway": {"retries": 2}},
            "gateway.retries",
            "unknown field (expected one of: max_attempts, max_retry_after_seconds, escalation)",
            id="gateway-unknown-field",
        ),
    ],
)
def test_config_errors_name_the_field(overrides, field, reason):
    with pytest.raises(ConfigError) as caught:
        load_settings(**overrides)
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_defaults():
    defaults = load_settings()
    assert defaults.upstreams == {}
    assert defaults.gateway.model_dump() == {
        "max_attempts": 3,
        "max_retry_after_seconds": 5.0,
        "escalation": {
            "enabled": False,
            "checks": ["length", "empty", "refusal", "json", "tool_args", "verifier"],
            "threshold": None,
            "max_escalations": 1,
        },
    }


def test_check_models_covers_upstream_keys():
    config = load_settings(upstreams={"gpt-4": {"base_url": "http://h/v1"}})
    config.check_models(["gpt-4"])
    with pytest.raises(ConfigError) as caught:
        config.check_models(["claude-v1"])
    assert caught.value.field == "upstreams.gpt-4"
    assert caught.value.reason == "unknown model 'gpt-4'; known: claude-v1"


def test_resolve_upstreams():
    config = load_settings(
        upstreams={
            "gpt-4": {"base_url": "https://api.example.com/v1/", "api_key_env": "KEY"},
            "local": {
                "base_url": "http://127.0.0.1:8001/v1",
                "model": "llama",
                "timeout_seconds": 2.5,
            },
        }
    )
    table = resolve_upstreams(config, {"KEY": "sk-secret"})
    gpt4, local = table["gpt-4"], table["local"]
    assert (gpt4.url, gpt4.base_url) == (
        "https://api.example.com/v1/chat/completions",
        "https://api.example.com/v1",
    )
    assert (gpt4.upstream_model, dict(gpt4.headers)) == (
        "gpt-4",
        {"authorization": "Bearer sk-secret"},
    )
    assert (local.upstream_model, dict(local.headers)) == ("llama", {})
    assert local.timeout == httpx.Timeout(2.5)
    assert "sk-secret" not in repr(gpt4)


@pytest.mark.parametrize(
    "environ", [pytest.param({}, id="unset"), pytest.param({"KEY": ""}, id="empty")]
)
def test_a_missing_key_is_a_config_error(environ):
    config = load_settings(upstreams={"gpt-4": {"base_url": "http://h/v1", "api_key_env": "KEY"}})
    with pytest.raises(ConfigError) as caught:
        resolve_upstreams(config, environ)
    assert str(caught.value) == "upstreams.gpt-4.api_key_env: environment variable KEY is not set"


def test_one_pooled_client_per_app_closed_on_shutdown(tiny_artifact):
    config = load_settings(artifact=str(tiny_artifact))
    app = create_app(config, environ={})
    with TestClient(app) as client:
        gateway = app.state.gateway
        pooled = gateway.upstreams.client
        assert isinstance(pooled, httpx.AsyncClient) and not pooled.is_closed
        assert client.get("/v1/models").json()["data"] == [
            {"id": "auto", "object": "model", "created": 0, "owned_by": "promptroute"}
        ]
    assert app.state.gateway is None
    assert pooled.is_closed
    other = create_app(config, environ={})
    with TestClient(other):
        assert other.state.gateway.upstreams.client is not pooled


def test_upstreams_take_a_transport():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    config = load_settings(upstreams={"m": {"base_url": "http://h/v1"}})

    async def call() -> int:
        table = Upstreams.open(config, {}, transport=httpx.MockTransport(answer))
        try:
            response = await table.client.post(table.get("m").url, json={})
        finally:
            await table.aclose()
        return response.status_code

    assert asyncio.run(call()) == 200
    assert str(seen[0].url) == "http://h/v1/chat/completions"


# ---------------------------------------------------------------------------------------------
# Retry-After


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param("2", 2.0, id="seconds"),
        pytest.param(" 0.25 ", 0.25, id="fraction-and-spaces"),
        pytest.param("-3", 0.0, id="negative-is-now"),
        pytest.param("Tue, 14 Nov 2023 22:13:30 GMT", 10.0, id="http-date"),
        pytest.param("Tue, 14 Nov 2023 22:13:00 GMT", 0.0, id="date-in-the-past"),
        pytest.param("inf", None, id="infinite"),
        pytest.param("nan", None, id="nan"),
        pytest.param("later", None, id="unreadable"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_retry_after(value, seconds):
    headers = httpx.Headers({} if value is None else {"retry-after": value})
    assert _retry_after(headers, WALL) == seconds


# ---------------------------------------------------------------------------------------------
# Server-sent events


async def _collect(chunks: list[bytes]) -> list[bytes]:
    async def source():
        for chunk in chunks:
            yield chunk

    events = _SseEvents(source())
    out = []
    while (event := await events.next()) is not None:
        out.append(event)
    return out


_EVENT_TEXT = st.text(
    alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=30
)


@settings(max_examples=60, deadline=None)
@given(
    payloads=st.lists(_EVENT_TEXT.filter(lambda t: t.strip()), min_size=1, max_size=6),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_events_survive_any_chunking(payloads, crlf, cuts):
    newline = b"\r\n" if crlf else b"\n"
    stream = b"".join(b"data: " + p.encode() + newline + newline for p in payloads)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    events = asyncio.run(_collect(chunks))
    assert events == [b"data: " + p.encode() for p in payloads]


@pytest.mark.parametrize(
    ("chunks", "events"),
    [
        pytest.param([b"data: a\n\n\n\ndata: b\n\n"], [b"data: a", b"data: b"], id="blank-runs"),
        pytest.param([b"data: a\n\ndata: tail"], [b"data: a", b"data: tail"], id="unterminated"),
        pytest.param(
            [b": ping\n\nevent: x\ndata: 1\n\n"], [b": ping", b"event: x\ndata: 1"], id="fields"
        ),
        pytest.param([b"data: a\r", b"\n\r\n"], [b"data: a"], id="crlf-split-across-chunks"),
        pytest.param([], [], id="empty"),
    ],
)
def test_event_splitting(chunks, events):
    assert asyncio.run(_collect(chunks)) == events


def test_forward_renames_the_model_and_tallies():
    tally = _StreamTally()
    chunk = {
        "id": "c1",
        "model": "upstream-x",
        "choices": [{"index": 0, "delta": {"content": "héllo"}}],
    }
    event = b"id: 7\ndata: " + json.dumps(chunk).encode()
    out = _forward(event, "catalog-x", tally)
    lines = out.split(b"\n")
    assert lines[0] == b"id: 7" and out.endswith(b"\n\n")
    assert json.loads(lines[1].removeprefix(b"data: ")) == {**chunk, "model": "catalog-x"}
    assert (tally.chars, tally.prompt_tokens, tally.error) == (5, None, False)
    usage = {
        "model": "upstream-x",
        "choices": [],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    _forward(b"data:" + json.dumps(usage).encode(), "catalog-x", tally)
    assert (tally.prompt_tokens, tally.completion_tokens) == (3, 4)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"data: [DONE]", id="done"),
        pytest.param(b": keep-alive", id="comment"),
    ],
)
def test_forward_passes_other_events_unchanged(event):
    assert _forward(event, "m", _StreamTally()) == event + b"\n\n"


@pytest.mark.parametrize(
    ("event", "sent"),
    [
        pytest.param(b'data: {"a": 1}', b'data: {"a":1}', id="no-model-field"),
        pytest.param(b'id: 3\ndata: {"a":\ndata: 1}', b'id: 3\ndata: {"a":1}', id="multi-line"),
    ],
)
def test_forward_sends_exactly_the_json_it_checked(event, sent):
    assert _forward(event, "m", _StreamTally()) == sent + b"\n\n"


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b"data: {not json", id="not-json"),
        pytest.param(b"data: 1\ndata: 2", id="multi-line-not-json"),
        pytest.param(b"data: [1, 2]", id="not-an-object"),
        pytest.param(b'data: {"x": NaN}', id="nan"),
        pytest.param(b'data: {"x": 1e400}', id="infinite"),
        pytest.param(b'data: {"usage": {"prompt_tokens": 1' + b"0" * 400 + b"}}", id="400-digits"),
        pytest.param(b'data: {"usage": {"completion_tokens": -1}}', id="negative-usage"),
        pytest.param(b'data: {"usage": "lots"}', id="usage-not-an-object"),
        pytest.param(b"data: " + b"[" * 100 + b"]" * 100, id="too-deep"),
    ],
)
def test_forward_refuses_a_malformed_event(event):
    with pytest.raises(completions._Failed) as caught:
        _forward(event, "m", _StreamTally())
    assert (caught.value.label, caught.value.outcome) == ("malformed", "malformed")


def test_an_upstream_error_event_marks_the_stream_failed():
    tally = _StreamTally()
    _forward(b'data: {"error": {"message": "overloaded"}}', "m", tally)
    assert tally.error


def test_serve_refuses_to_start_when_an_upstream_key_is_missing(
    tmp_path, tiny_artifact, monkeypatch, capsys
):
    from serving.server import serve

    monkeypatch.delenv("PROMPTROUTE_TEST_MISSING_KEY", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        "upstreams:\n"
        "  gpt-4-1106-preview:\n"
        "    base_url: http://127.0.0.1:9/v1\n"
        "    api_key_env: PROMPTROUTE_TEST_MISSING_KEY\n",
        encoding="utf-8",
    )
    assert serve(config=str(config), model=str(tiny_artifact), port=1) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptroute: error: ")
    assert "upstreams.gpt-4-1106-preview.api_key_env" in err
