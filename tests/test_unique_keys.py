"""Issue 11 item 12 on /v1 and /admin: a JSON body that repeats a key is a 400 naming the key.

Over a real uvicorn on loopback (the gateway with a fake upstream on another loopback port).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from fake_upstream import FakeUpstream
from fakes import LiveServer
from hypothesis import given
from hypothesis import strategies as st

from serving import create_app, load_settings
from serving.unique_keys import first_duplicate_key

ADMIN = "unique-keys-admin-key-0000"
MESSAGES = '[{"role": "user", "content": "What is 2 + 2?"}]'


@pytest.fixture(scope="module")
def client(tiny_artifact, catalog_path, tiny_router) -> Iterator[httpx.Client]:
    with FakeUpstream() as fake:
        settings = load_settings(
            artifact=str(tiny_artifact),
            catalog=str(catalog_path),
            limits={"max_body_bytes": 10_000},
            upstreams={
                m: {"base_url": fake.url(), "timeout_seconds": 2.0} for m in tiny_router.models
            },
        )
        server = LiveServer(create_app(settings, environ={"PROMPTROUTE_ADMIN_KEY": ADMIN}))
        with httpx.Client(base_url=server.start(), timeout=10) as c:
            yield c
        server.stop()


def post(client: httpx.Client, path: str, body: str, **headers: str) -> httpx.Response:
    headers = {"content-type": "application/json", **headers}
    return client.post(path, content=body.encode(), headers=headers)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(f'{{"model": "auto", "model": "gpt-4", "messages": {MESSAGES}}}', "model", id="top"),
        pytest.param(
            f'{{"model": "auto", "messages": {MESSAGES}, '
            '"promptroute": {"max_cost_usd": -1, "max_cost_usd": 1}}',
            "max_cost_usd",
            id="nested",
        ),
        pytest.param(
            '{"model": "auto", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
            "role",
            id="in-a-message",
        ),
    ],
)  # fmt: skip
def test_the_gateway_refuses_a_repeated_key_naming_it(client, body, key):
    response = post(client, "/v1/chat/completions", body)
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": f"'{key}': the key appears more than once in one object; send it once",
            "type": "invalid_request_error",
            "param": key,
            "code": "duplicate_key",
        }
    }


def test_admin_reload_refuses_a_repeated_key(client):
    response = post(
        client, "/admin/reload", '{"artifact": "a", "artifact": "b"}', **{"x-api-key": ADMIN}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "duplicate_key",
            "message": "'artifact': the key appears more than once in one object; send it once",
            "field": "artifact",
        }
    }


def test_a_long_repeated_key_is_quoted_short(client):
    key = "k" * 500
    response = post(client, "/v1/chat/completions", f'{{"{key}": 1, "{key}": 2}}')
    assert response.status_code == 400
    assert len(response.json()["error"]["message"]) < 200


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(f'{{"model": "auto", "messages": {MESSAGES}}}', 200, None, id="unique-keys"),
        pytest.param('{"model": "auto", "model"', 400, "invalid_json", id="not-json"),
        pytest.param('{"a": 1, "a": 2, "pad": "' + "x" * 20_000 + '"}', 413, "body_too_large", id="too-big-first"),
    ],
)  # fmt: skip
def test_other_bodies_are_left_to_the_endpoint(client, body, status, code):
    response = post(client, "/v1/chat/completions", body)
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"]["code"] == code


_KEYS = st.sampled_from(["a", "b", "c", "é", "a\u0301"])
_SCALARS = st.one_of(st.integers(), st.booleans(), st.none(), st.text(max_size=5))


@st.composite
def _objects(draw, depth: int = 0) -> tuple[str, bool]:
    """(JSON text of an object whose keys may repeat, whether some object repeats one)."""
    keys = draw(st.lists(_KEYS, max_size=4))
    repeated = len(set(keys)) < len(keys)
    parts = []
    for key in keys:
        if depth < 2 and draw(st.booleans()):
            text, inner = draw(_objects(depth + 1))
            repeated = repeated or inner
        else:
            text = json.dumps(draw(_SCALARS))
        parts.append(f"{json.dumps(key)}: {text}")
    return "{" + ", ".join(parts) + "}", repeated


@given(_objects())
def test_a_repeat_is_found_exactly_when_there_is_one(case):
    text, repeated = case
    assert (first_duplicate_key(text.encode()) is not None) == repeated
