"""Issue 11 item 2 (authentication): optional client API keys for /route, /feedback and /v1/*.

The attack: without keys, anyone could post `success: false` feedback and open every breaker.
With client keys configured, the same requests without a key are refused before their body is
read, and nothing reaches the breakers. Run against a real uvicorn on loopback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fake_upstream import FakeUpstream
from fakes import LiveServer
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import ConfigError
from serving import create_app, load_settings
from serving.auth import MIN_KEY_CHARS, Caller, ClientKeys, guarded, presented_key

TEAM_A = "team-a-key-0123456789abcdef"
TEAM_B = "team-b-key-fedcba9876543210"
ADMIN = "admin-key-000000000000000000"
ENV = {"TEAM_A_KEY": TEAM_A, "PROMPTROUTE_CLIENT_KEYS": f"team-b={TEAM_B}", "ADMIN_KEY": ADMIN}
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
UNAUTHORIZED = {
    "code": "unauthorized",
    "message": "a valid client API key is required (header X-API-Key or Authorization: Bearer)",
}


class Spy:
    """Wraps a coroutine method and keeps its first argument."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self.seen: list[Any] = []

    async def __call__(self, arg: Any) -> Any:
        self.seen.append(arg)
        return await self.method(arg)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def live(tiny_artifact, catalog_path, tiny_router, fake) -> Iterator[tuple[str, Any]]:
    settings = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        admin_api_key_env="ADMIN_KEY",
        client_keys=[{"name": "team-a", "key_env": "TEAM_A_KEY"}],
        upstreams={m: {"base_url": fake.url(), "timeout_seconds": 2.0} for m in tiny_router.models},
    )
    app = create_app(settings, environ=ENV)
    server = LiveServer(app, graceful_shutdown_seconds=2)
    url = server.start()
    yield url, app
    server.stop()


@pytest.fixture
def client(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live[0], timeout=10) as c:
        yield c


def a(key: str) -> dict[str, str]:
    return {"x-api-key": key}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "/route", {"messages": MESSAGES}, id="route"),
        pytest.param("POST", "/route", "{not json", id="route-bad-json"),  # 401 first, not 400
        pytest.param("POST", "/feedback", {"request_id": "x", "success": False}, id="feedback"),
        pytest.param("GET", "/v1/models", None, id="v1-models"),
        pytest.param(
            "POST", "/v1/chat/completions", {"model": "auto", "messages": MESSAGES}, id="v1-chat"
        ),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param(a("team-a-key-0123456789abcdeX"), id="wrong-key"),
        pytest.param({"authorization": f"Basic {TEAM_A}"}, id="not-bearer"),
        pytest.param(a(ADMIN), id="admin-key"),  # admin keys stay separate
    ],
)
def test_guarded_endpoints_refuse_without_a_valid_client_key(client, method, path, body, headers):
    content = body if isinstance(body, str) else None
    response = client.request(
        method, path, headers=headers, content=content, json=None if content else body
    )
    assert response.status_code == 401
    if path.startswith("/v1/"):  # the gateway answers in OpenAI's error shape
        assert response.json() == {
            "error": {**UNAUTHORIZED, "type": "authentication_error", "param": None}
        }
    else:
        assert response.json() == {"error": UNAUTHORIZED}
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        pytest.param(a(TEAM_A), "team-a", id="config-key-in-x-api-key"),
        pytest.param({"authorization": f"Bearer {TEAM_B}"}, "team-b", id="env-list-key-bearer"),
    ],
)
def test_a_valid_key_routes_and_its_name_reaches_the_query_and_feedback(
    live, client, headers, name, monkeypatch
):
    import serving.outcomes

    service = live[1].state.service
    route = Spy(service.pipeline.route)
    monkeypatch.setattr(service.pipeline, "route", route)
    seen: list[Any] = []
    apply = serving.outcomes.apply_feedback

    async def spy(fb: Any, **parts: Any) -> Any:
        seen.append(fb)
        return await apply(fb, **parts)

    monkeypatch.setattr(serving.outcomes, "apply_feedback", spy)
    response = client.post("/route", json={"messages": MESSAGES}, headers=headers)
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    feedback = {"request_id": request_id, "success": True}
    response = client.post("/feedback", json=feedback, headers=headers)
    assert response.status_code == 200, response.text
    chat = {"model": "auto", "messages": MESSAGES}
    response = client.post("/v1/chat/completions", json=chat, headers=headers)
    assert response.status_code == 200, response.text
    assert [q.caller for q in route.seen] == [name, name]  # /route, then the gateway's
    assert [f.caller for f in seen] == [name, name]  # /feedback, then the gateway's


def test_open_endpoints_stay_open_and_admin_needs_the_admin_key(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/models").status_code == 200
    assert client.post("/admin/reload", headers=a(TEAM_A)).status_code == 401
    assert client.post("/admin/reload", headers=a(ADMIN)).status_code != 401


def test_unauthenticated_failure_feedback_cannot_open_breakers(live, client):
    """The issue's attack: /route then five `success: false` per model, 210 requests."""
    service = live[1].state.service
    names = list(service.models.routable_names())
    statuses = set()
    for model in names:
        statuses.add(client.post("/route", json={"messages": MESSAGES}).status_code)
        for _ in range(5):
            body = {"request_id": "guess", "success": False, "model": model}
            statuses.add(client.post("/feedback", json=body).status_code)
    assert statuses == {401}
    models = client.get("/models").json()["models"]
    assert {m["breaker"]["state"] for m in models} == {"closed"}
    assert client.post("/route", json={"messages": MESSAGES}, headers=a(TEAM_A)).status_code == 200


def test_keys_are_never_logged(live, client, caplog):
    with caplog.at_level(logging.DEBUG):
        client.post("/route", json={"messages": MESSAGES}, headers=a(TEAM_A))
        client.post("/route", json={"messages": MESSAGES}, headers=a(TEAM_A + "x"))
        client.post("/route", json={"messages": MESSAGES}, headers={"authorization": "Bearer"})
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert TEAM_A not in text and TEAM_B not in text
    keys = live[1].state.service.clients
    assert repr(keys) == "ClientKeys(names=['team-a', 'team-b'])"
    assert TEAM_A not in repr(vars(keys)) and TEAM_B not in repr(vars(keys))


# ---------------------------------------------------------------------------------------------
# The function and its configuration


def test_authenticate_reads_asgi_header_pairs_like_a_mapping():
    keys = ClientKeys({"n": TEAM_A})
    assert keys.authenticate([(b"x-api-key", TEAM_A.encode())]) == Caller("n")
    assert keys.authenticate([(b"Authorization", b"Bearer " + TEAM_A.encode())]) == Caller("n")
    assert presented_key([]) is None
    assert [guarded(p) for p in ("/route", "/feedback", "/v1/models", "/models", "/routes")] == [
        True,
        True,
        True,
        False,
        False,
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
        st.text(
            st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=",="),
            min_size=MIN_KEY_CHARS,
        ),
        min_size=1,
        max_size=5,
    ).filter(lambda d: len(set(d.values())) == len(d)),
    st.text(max_size=64),
)
def test_each_key_is_its_own_caller_and_nothing_else_passes(keys, other):
    clients = ClientKeys(keys)
    for name, key in keys.items():
        assert clients.authenticate({"x-api-key": key}) == Caller(name)
    if other.strip() not in keys.values():
        with pytest.raises(Exception) as caught:
            clients.authenticate({"x-api-key": other})
        assert caught.value.status == 401


@pytest.mark.parametrize(
    ("entries", "listed", "field", "reason"),
    [
        pytest.param([("a", "UNSET")], "", "client_keys[0].key_env", "environment variable UNSET is not set", id="unset"),
        pytest.param([], "a=short", "PROMPTROUTE_CLIENT_KEYS", f"the key for 'a' is shorter than {MIN_KEY_CHARS}", id="short"),
        pytest.param([], f"a={ADMIN}", "PROMPTROUTE_CLIENT_KEYS", "the key for 'a' is the admin key; use another", id="admin"),
        pytest.param([("a", "TEAM_A_KEY")], f"a={TEAM_B}", "PROMPTROUTE_CLIENT_KEYS", "client key name 'a' is given twice", id="same-name"),
        pytest.param([("a", "TEAM_A_KEY")], f"b={TEAM_A}", "PROMPTROUTE_CLIENT_KEYS", "'b' has the same key as 'a'", id="same-key"),
        pytest.param([], f"{TEAM_A}", "PROMPTROUTE_CLIENT_KEYS", "entry 1 is not name=key", id="no-name"),
    ],
)  # fmt: skip
def test_bad_key_configuration_stops_start_up_naming_the_field(entries, listed, field, reason):
    environ = {**ENV, "PROMPTROUTE_CLIENT_KEYS": listed}
    with pytest.raises(ConfigError) as caught:
        ClientKeys.from_config(entries, "PROMPTROUTE_CLIENT_KEYS", environ, admin_key=ADMIN)
    assert (caught.value.field, caught.value.reason) == (field, reason)
    assert TEAM_A not in str(caught.value) and ADMIN not in str(caught.value)


def test_the_dependency_authenticates_itself_when_the_middleware_did_not():
    """A route reached some other way than through `ClientAuth` still needs the key."""
    import asyncio
    from types import SimpleNamespace

    from starlette.requests import Request

    from serving.deps import get_caller
    from serving.errors import ApiError

    service = SimpleNamespace(clients=ClientKeys({"team-a": TEAM_A}))

    def request(headers: list[tuple[bytes, bytes]]) -> Request:
        return Request({"type": "http", "method": "POST", "path": "/route", "headers": headers})

    found = asyncio.run(get_caller(request([(b"x-api-key", TEAM_A.encode())]), service))
    assert found == Caller("team-a")
    with pytest.raises(ApiError) as caught:
        asyncio.run(get_caller(request([]), service))
    assert caught.value.status == 401
    open_service = SimpleNamespace(clients=ClientKeys({}))
    assert asyncio.run(get_caller(request([]), open_service)) is None


def test_all_is_exact():
    from serving import auth

    assert sorted(auth.__all__) == [
        "Caller",
        "ClientAuth",
        "ClientKeys",
        "Headers",
        "MIN_KEY_CHARS",
        "caller_of",
        "guarded",
        "presented_key",
        "unauthorized",
    ]
    assert all(hasattr(auth, name) for name in auth.__all__)


def test_feedback_is_accepted_only_from_the_key_that_made_the_decision(client):
    """Another client's key cannot report (or fake) the outcome of a decision it did not make."""
    decided = client.post("/route", json={"prompt": "Explain recursion."}, headers=a(TEAM_A))
    assert decided.status_code == 200
    body = {"request_id": decided.json()["request_id"], "success": False}
    other = client.post("/feedback", json=body, headers=a(TEAM_B))
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "unknown_request_id"
    own = client.post("/feedback", json=body, headers=a(TEAM_A))
    assert own.status_code == 200
