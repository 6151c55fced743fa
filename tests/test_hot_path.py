"""The hot path (`serving.hot_path`) answers exactly as FastAPI's router would, and repeated JSON
keys are refused on every endpoint that reads a JSON body (`serving.json_body`).

The reference is the app itself: with any ``app.dependency_overrides`` entry the hot path steps
aside and FastAPI's route serves the request (an identity override changes nothing else), so
each request below is sent both ways and the answers compared.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from fakes import LiveServer, TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import create_app, load_settings
from serving.deps import get_service
from serving.hot_path import HotPath
from serving.json_body import DuplicateKeyError, loads

JSON = {"content-type": "application/json"}
ADMIN_KEY = "k"


@pytest.fixture(scope="module")
def app(tiny_artifact, catalog_path):
    config = load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path))
    return create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": ADMIN_KEY})


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@contextlib.contextmanager
def through_fastapi(app):
    """FastAPI's router serves /route and /feedback while this is open."""
    app.dependency_overrides[get_service] = get_service
    try:
        yield
    finally:
        app.dependency_overrides.clear()


def both_ways(client, path: str, content: bytes, headers: dict[str, str]) -> tuple[Any, Any]:
    hot = client.post(path, content=content, headers=headers)
    with through_fastapi(client.app):
        reference = client.post(path, content=content, headers=headers)
    return hot, reference


def comparable(response) -> tuple[int, str | None, Any]:
    body = response.json()
    if response.status_code == 200 and "request_id" in body:
        body = {**body, "request_id": "-"}  # a fresh id per decision
    return response.status_code, response.headers.get("content-type"), body


def endpoint_requests(app) -> dict[str, float]:
    samples = {}
    for metric in app.state.metrics.registry.collect():
        if metric.name == "promptroute_http_requests":
            for s in metric.samples:
                if s.name.endswith("_total"):
                    samples[(s.labels["endpoint"], s.labels["status"])] = s.value
    return samples


# ---------------------------------------------------------------------------------------------
# The same answers as FastAPI's router

FIXED_CASES = [
    pytest.param("/route", b'{"prompt": "Write a haiku about the sea."}', JSON, id="route-ok"),
    pytest.param(
        "/route",
        json.dumps(
            {"messages": [{"role": "user", "content": "Sum 2 and 2."}], "knob": 0.5}
        ).encode(),
        JSON,
        id="route-messages",
    ),
    pytest.param("/route", b'{"prompt": "x", "candidates": ["gpt-5"]}', JSON, id="unknown"),
    pytest.param("/route", b'{"prompt": "x", "max_cost_usd": 0}', JSON, id="no-eligible"),
    pytest.param("/route", b'{"prompt": "x", "knob": 1, "priority": "cost"}', JSON, id="both"),
    pytest.param("/route", b'{"prompt": ""}', JSON, id="empty-prompt"),
    pytest.param("/route", b"{bad", JSON, id="malformed"),
    pytest.param("/route", b'{"prompt": "caf\xe9"}', JSON, id="latin1"),
    pytest.param(
        "/route", b'{"prompt": "x", "max_cost_usd": ' + b"9" * 5000 + b"}", JSON, id="5000-digits"
    ),
    pytest.param("/route", b"[" * 100_000 + b"]" * 100_000, JSON, id="nested-100k"),
    pytest.param("/route", b"", JSON, id="empty"),
    pytest.param("/route", b"null", JSON, id="null"),
    pytest.param("/route", b'{"prompt": "x"}', {}, id="no-content-type"),
    pytest.param("/route", b'{"prompt": "x"}', {"content-type": "text/plain"}, id="text-plain"),
    pytest.param(
        "/route",
        b'{"prompt": "x"}',
        {"content-type": "application/vnd.api+json; charset=utf-8"},
        id="plus-json",
    ),
    pytest.param("/route", '\ufeff{"prompt": "x"}'.encode(), JSON, id="utf8-bom"),
    pytest.param("/route", '{"prompt": "x"}'.encode("utf-16"), JSON, id="utf16"),
    pytest.param("/route", b'{"prompt": "\xed\xa0\x80"}', JSON, id="encoded-surrogate"),
    pytest.param("/route", b'{"prompt": "x", "max_cost_usd": NaN}', JSON, id="nan"),
    pytest.param(
        "/route", b'{"prompt": "x", "max_cost_usd": -1, "max_cost_usd": 1}', JSON, id="duplicate"
    ),
    pytest.param("/feedback", b'{"request_id": "nope", "success": true}', JSON, id="fb-404"),
    pytest.param("/feedback", b'{"request_id": "r", "success": "yes"}', JSON, id="fb-422"),
    pytest.param(
        "/feedback",
        b'{"request_id": "r", "success": true, "model": "x"}',
        JSON,
        id="fb-unknown-model",
    ),
    pytest.param("/feedback", b"", JSON, id="fb-empty"),
    pytest.param(
        "/feedback",
        b'{"request_id": "r", "request_id": "s", "success": true}',
        JSON,
        id="fb-duplicate",
    ),
]


def test_the_reference_really_is_fastapis_route(client, monkeypatch):
    served = []
    serve = HotPath._serve

    async def counted(self, *args):
        served.append(args[1]["path"])
        await serve(self, *args)

    monkeypatch.setattr(HotPath, "_serve", counted)
    both_ways(client, "/route", b'{"prompt": "Say hi."}', JSON)
    both_ways(client, "/feedback", b'{"request_id": "r", "success": true}', JSON)
    assert served == ["/route", "/feedback"]


@pytest.mark.parametrize(("path", "content", "headers"), FIXED_CASES)
def test_the_hot_path_answers_as_fastapi_does(client, path, content, headers):
    hot, reference = both_ways(client, path, content, headers)
    assert comparable(hot) == comparable(reference)


# Hypothesis 6.170 sometimes decides from its first draws that a recursive strategy's `extend`
# ignores its argument (these use it); the warning would fail the run, the strategies are sound.
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_ROUTE_KEYS = st.sampled_from(
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
        "Prompt",
    ]
)
_PLAUSIBLE = st.one_of(
    _VALUES,
    st.sampled_from(["Explain recursion.", "quality", "speed", 0.5, 1, -1, [], {"team": "a"}]),
    st.just([{"role": "user", "content": "Is 7 prime?"}]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.dictionaries(_ROUTE_KEYS, _PLAUSIBLE, max_size=4) | _VALUES)
def test_any_route_body_is_answered_as_fastapi_does(client, body):
    hot, reference = both_ways(client, "/route", json.dumps(body).encode(), JSON)
    assert comparable(hot) == comparable(reference)


def test_feedback_is_applied_as_fastapi_applies_it(client):
    rids = [client.post("/route", json={"prompt": "Say hi."}).json()["request_id"] for _ in "ab"]
    hot = client.post("/feedback", json={"request_id": rids[0], "success": True, "quality": 0.8})
    with through_fastapi(client.app):
        reference = client.post(
            "/feedback", json={"request_id": rids[1], "success": True, "quality": 0.8}
        )
    assert comparable(hot) == comparable(reference)
    assert hot.status_code == 200 and hot.json()["request_id"] == rids[0]
    assert (
        client.post("/feedback", json={"request_id": rids[0], "success": True}).status_code
        == 409  # one outcome per model
    )


def test_the_hot_path_is_counted_under_its_route(tiny_artifact, catalog_path):
    app = create_app(
        load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path)), environ={}
    )
    with TestClient(app) as c:
        c.post("/route", json={"prompt": "Say hi."})
        c.post("/route", content=b"{bad", headers=JSON)
        c.post("/route", content=b'{"prompt": "a", "prompt": "b"}', headers=JSON)
        c.post("/feedback", json={"request_id": "nope", "success": True})
        counts = endpoint_requests(app)
        decided = sum(
            s.value
            for m in app.state.metrics.registry.collect()
            if m.name == "promptroute_decisions"
            for s in m.samples
            if s.name == "promptroute_decisions_total"
        )
    assert counts == {("/route", "200"): 1, ("/route", "400"): 2, ("/feedback", "404"): 1}
    assert decided == 1


def test_the_openapi_document_is_that_of_the_declared_routes(tiny_artifact, catalog_path):
    """The hot path changes no documentation: /openapi.json is the same without it."""
    config = load_settings(artifact=str(tiny_artifact), catalog=str(catalog_path))
    with_hot = create_app(config, environ={})
    without = create_app(config, environ={})
    without.user_middleware = [m for m in without.user_middleware if m.cls is not HotPath]
    with TestClient(with_hot) as a, TestClient(without) as b:
        served = a.get("/openapi.json")
        assert served.status_code == 200
        assert served.json() == b.get("/openapi.json").json()
    ops = served.json()["paths"]
    assert set(ops["/route"]) == {"post"} and set(ops["/feedback"]) == {"post"}
    assert ops["/route"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RouteRequest"
    }
    assert {"400", "413", "422"} <= set(ops["/route"]["post"]["responses"])
    assert {"400", "404", "413", "422"} <= set(ops["/feedback"]["post"]["responses"])


def test_fastapi_telemetry_is_decided_once(client, monkeypatch):
    """No provider configured: nothing asks OpenTelemetry (or os.environ) per request."""
    from opentelemetry import metrics, trace

    asked = []
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: asked.append("t"))
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: asked.append("m"))
    assert client.get("/healthz").status_code == 200
    assert client.post("/route", json={"prompt": "Say hi."}).status_code == 200
    assert asked == []


# ---------------------------------------------------------------------------------------------
# Repeated keys: 400 duplicate_key naming the key, on every JSON endpoint, over a real server


@pytest.fixture(scope="module")
def server(app):
    live = LiveServer(app)
    url = live.start()
    yield url
    live.stop()


DUPLICATES = [
    pytest.param(
        "/route",
        '{"prompt": "x", "max_cost_usd": -1, "max_cost_usd": 1}',
        "max_cost_usd",
        id="route",
    ),
    pytest.param(
        "/route",
        '{"prompt": "x", "metadata": {"team": "a", "team": "b"}}',
        "metadata.team",
        id="route-nested",
    ),
    pytest.param(
        "/route",
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "user", "role": "system", "content": "x"}]}',
        "messages[1].role",
        id="route-in-a-message",
    ),
    pytest.param(
        "/feedback",
        '{"request_id": "r", "success": false, "success": true}',
        "success",
        id="feedback",
    ),
    pytest.param(
        "/admin/reload", '{"artifact": "a", "artifact": "b"}', "artifact", id="admin-reload"
    ),
]


@pytest.mark.parametrize(("path", "text", "field"), DUPLICATES)
def test_a_repeated_key_is_400_naming_it(server, client, path, text, field):
    pending = len(client.app.state.service.book.pending)
    headers = {**JSON, "x-api-key": ADMIN_KEY}
    response = httpx.post(f"{server}{path}", content=text.encode(), headers=headers, timeout=30)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "duplicate_key",
            "message": f"{field}: the key appears more than once in the same JSON object",
            "field": field,
        }
    }
    assert len(client.app.state.service.book.pending) == pending  # nothing was decided


def test_a_repeated_key_on_v1_is_400_in_openai_shape(server):
    text = '{"model": "auto", "model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}'
    response = httpx.post(f"{server}/v1/chat/completions", content=text, headers=JSON, timeout=30)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "model: the key appears more than once in the same JSON object",
            "type": "invalid_request_error",
            "param": "model",
            "code": "duplicate_key",
        }
    }


def test_repeats_inside_strings_and_in_sibling_objects_are_fine(server):
    body = {
        "prompt": 'Parse {"a": 1, "a": 2} and explain which value wins.',
        "metadata": {"x": {"k": 1}, "y": {"k": 2}},
    }
    response = httpx.post(f"{server}/route", json=body, timeout=30)
    assert response.status_code == 200, response.text


def test_a_long_repeated_key_is_quoted_short(server):
    key = "k" * 500
    text = '{"prompt": "x", "metadata": {"' + key + '": 1, "' + key + '": 2}}'
    response = httpx.post(f"{server}/route", content=text, headers=JSON, timeout=30)
    assert response.status_code == 400
    field = response.json()["error"]["field"]
    assert field == "metadata." + "k" * 63 + "…"


# ---------------------------------------------------------------------------------------------
# json_body.loads: json.loads, plus the duplicate check

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from([b"", b"{", b"{\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\x00"])
    | st.binary(max_size=4),
    rest=st.binary(max_size=8)
    | _JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | _JSON_VALUES.map(lambda v: json.dumps(v).encode("utf-16-le")),
)
def test_loads_decodes_any_bytes_as_json_loads_does(prefix, rest):
    """Including the shortcut past json.detect_encoding: same value, or the same exception."""
    body = prefix + rest
    try:
        expected: Any = json.loads(body)
    except Exception as exc:  # noqa: BLE001 - the exception itself is what is compared
        expected = (type(exc), str(exc))
    try:
        got: Any = loads(body)
    except DuplicateKeyError:
        return  # the one difference, tested below
    except Exception as exc:  # noqa: BLE001
        got = (type(exc), str(exc))
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(value=_JSON_VALUES, ensure_ascii=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_loads_reads_what_json_reads(value, ensure_ascii, indent):
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent).encode()
    assert loads(text) == json.loads(text)


@settings(max_examples=200, deadline=None)
@given(
    obj=st.dictionaries(st.text(max_size=10), _JSON_VALUES, min_size=1, max_size=4),
    again=_JSON_VALUES,
    nested=st.booleans(),
    data=st.data(),
)
def test_loads_refuses_any_repeated_key(obj, again, nested, data):
    key = data.draw(st.sampled_from(sorted(obj)))
    text = json.dumps(obj)[:-1] + ", " + json.dumps(key) + ": " + json.dumps(again) + "}"
    if nested:
        text = '{"outer": [' + text + "]}"
    with pytest.raises(DuplicateKeyError) as raised:
        loads(text.encode())
    if key and key.isprintable():
        assert raised.value.field == ("outer[0]." if nested else "") + key
