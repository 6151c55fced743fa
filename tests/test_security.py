"""Security: admin access, prompt privacy in logs and in the decision log, limits under a flood.

* Admin endpoints: no key configured means disabled (403), a missing or wrong key is 401, the
  right key is 200; the key is checked with `hmac.compare_digest` and nothing else.
* A unique marker sent as prompt text never reaches any application log record, at DEBUG, over
  every path a prompt can take (routing, feedback, errors, breaker trips, evictions, shutdown),
  unless `log_prompts` is on; with `decision_log.store_prompt: false` it never reaches the disk.
* Under a flood, pending decisions stay within `pending.max_items` (the rest are logged, not
  lost) and oversized bodies are refused without leaving anything in memory.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import hmac
import json
import logging
import stat
import tracemalloc
import uuid
from pathlib import Path

import pytest
from fakes import FakeClock, TestClient

from serving import create_app, load_settings
from serving.decision_log import read_joined_rows, read_log_lines

KEY = "4dm1n-k3y-" + "s" * 22
MB = 1_000_000


@pytest.fixture
def log_path(tmp_path) -> Path:
    return tmp_path / "log" / "decisions.jsonl"


@pytest.fixture
def make_app(tiny_artifact, catalog_path, log_path):
    """`make_app(environ=..., clock=..., **settings)` → an app logging decisions to `log_path`."""

    def make(environ=None, clock=None, log=None, **overrides):
        config = load_settings(
            artifact=str(tiny_artifact),
            catalog=str(catalog_path),
            decision_log={} if log is False else {"path": str(log_path), **(log or {})},
            **overrides,
        )
        return create_app(
            config,
            clock=clock or FakeClock(),
            wall_clock=lambda: 1.7e9,
            environ={} if environ is None else environ,
        )

    return make


@pytest.fixture
def make_client(make_app):
    with contextlib.ExitStack() as stack:

        def make(**kwargs):
            return stack.enter_context(TestClient(make_app(**kwargs)))

        yield make


# ---------------------------------------------------------------------------------------------
# Admin endpoints


ADMIN_CALLS = [
    pytest.param(("post", "/admin/reload"), id="reload"),
    pytest.param(("post", "/admin/breakers/claude-v1/reset"), id="breaker-reset"),
]


ON = {"PROMPTROUTE_ADMIN_KEY": KEY}
DENIED = (401, "unauthorized")


@pytest.mark.parametrize("call", ADMIN_CALLS)
@pytest.mark.parametrize(
    ("environ", "headers", "outcome"),
    [
        pytest.param({}, {}, (403, "admin_disabled"), id="disabled"),
        pytest.param({}, {"X-API-Key": KEY}, (403, "admin_disabled"), id="disabled-with-a-key"),
        pytest.param(
            {"PROMPTROUTE_ADMIN_KEY": ""}, {"X-API-Key": ""}, (403, "admin_disabled"), id="empty"
        ),
        pytest.param(ON, {}, DENIED, id="missing"),
        pytest.param(ON, {"X-API-Key": "wrong"}, DENIED, id="wrong"),
        pytest.param(ON, {"X-API-Key": KEY[:-1]}, DENIED, id="prefix"),
        pytest.param(ON, {"X-API-Key": KEY + "s"}, DENIED, id="longer"),
        pytest.param(ON, {"X-API-Key": KEY.upper()}, DENIED, id="case"),
        pytest.param(ON, {"Authorization": KEY}, DENIED, id="no-scheme"),
        pytest.param(ON, {"Authorization": "Bearer "}, DENIED, id="empty-bearer"),
        pytest.param(ON, {"X-API-Key": KEY}, (200, None), id="x-api-key"),
        pytest.param(ON, {"Authorization": f"Bearer {KEY}"}, (200, None), id="bearer"),
    ],
)
def test_admin_access(make_client, call, environ, headers, outcome):
    status, code = outcome
    client = make_client(environ=environ)
    method, path = call
    response = client.request(method, path, headers=headers)
    assert response.status_code == status
    if code is None:
        return
    error = response.json()["error"]
    assert error["code"] == code
    assert KEY not in response.text
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    else:
        assert "PROMPTROUTE_ADMIN_KEY" in error["message"]  # says how to enable it


def test_refused_admin_calls_change_nothing(make_client):
    client = make_client(environ={"PROMPTROUTE_ADMIN_KEY": KEY})
    state = client.app.state.service
    before = state.models.current
    for _ in range(5):
        rid = client.post("/route", json={"prompt": "x", "candidates": ["claude-v1"]}).json()
        client.post("/feedback", json={"request_id": rid["request_id"], "success": False})
    assert state.health.breakers["claude-v1"].state.value == "open"
    for headers in ({}, {"X-API-Key": "wrong"}):
        assert client.post("/admin/reload", headers=headers).status_code == 401
        reset = client.post("/admin/breakers/claude-v1/reset", headers=headers)
        assert reset.status_code == 401
    assert state.models.current is before
    assert state.health.breakers["claude-v1"].state.value == "open"
    metrics = client.get("/metrics").text
    assert 'promptroute_reloads_total{result="ok"}' not in metrics


@pytest.fixture
def compare_spy(monkeypatch):
    """Every call to hmac.compare_digest, answered by the real function unless told otherwise."""
    real = hmac.compare_digest
    spy = {"calls": [], "answer": None}

    def compare_digest(a, b):
        spy["calls"].append((a, b))
        return real(a, b) if spy["answer"] is None else spy["answer"]

    monkeypatch.setattr(hmac, "compare_digest", compare_digest)
    return spy


@pytest.mark.parametrize("presented", ["wrong", KEY[:-1], KEY], ids=["wrong", "prefix", "right"])
def test_the_key_is_compared_with_compare_digest(make_client, compare_spy, presented):
    client = make_client(environ={"PROMPTROUTE_ADMIN_KEY": KEY})
    response = client.post("/admin/reload", headers={"X-API-Key": presented})
    assert response.status_code == (200 if presented == KEY else 401)
    assert compare_spy["calls"] == [(presented.encode(), KEY.encode())]


@pytest.mark.parametrize("answer", [True, False])
def test_compare_digest_alone_decides(make_client, compare_spy, answer):
    # No other comparison (==, startswith…) runs beside it: its answer is the outcome.
    compare_spy["answer"] = answer
    client = make_client(environ={"PROMPTROUTE_ADMIN_KEY": KEY})
    wrong = client.post("/admin/breakers/claude-v1/reset", headers={"X-API-Key": "wrong"})
    right = client.post("/admin/breakers/claude-v1/reset", headers={"X-API-Key": KEY})
    assert (wrong.status_code, right.status_code) == ((200, 200) if answer else (401, 401))


# ---------------------------------------------------------------------------------------------
# Prompt text in logs


def _marker() -> str:
    return f"MARKER-{uuid.uuid4().hex}"


def _every_path_a_prompt_takes(client, clock, marker: str) -> None:
    """Route and feed back in every way that can make the service log something."""
    prompt = f"Please keep this private: {marker}"
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    answered = client.post("/route", json={"prompt": prompt, "task_type": "qa"}).json()
    client.post("/feedback", json={"request_id": answered["request_id"], "success": True})
    chat = client.post("/route", json={"messages": messages, "user_id": "u1"}).json()
    client.post("/feedback", json={"request_id": chat["request_id"], "success": False})
    # A candidate the chat's failed feedback did not count against, so that exactly these two
    # failures trip its breaker (2 consecutive failures), whatever the router chose above.
    victim = next(m for m in ("claude-v2", "claude-v1") if m != chat["model"])
    for _ in range(2):
        rid = client.post("/route", json={"prompt": prompt, "candidates": [victim]}).json()
        client.post("/feedback", json={"request_id": rid["request_id"], "success": False})
    bad = [
        {"prompt": prompt, "candidates": [victim]},  # no eligible model: 422
        {"prompt": prompt, "candidates": ["gpt-5"]},
        {"prompt": prompt, "messages": messages},
        {"prompt": prompt, "max_cost_usd": -1},
        {"prompt": prompt, "metadata": {"k": [[[[[[[[[["deep"]]]]]]]]]]}},
        {"messages": [{"role": "user", "content": prompt, "x": float("nan")}]},
        {"prompt": prompt * 200},  # too long: 413
    ]
    for body in bad:
        response = client.post(
            "/route", content=json.dumps(body), headers={"content-type": "application/json"}
        )
        assert response.status_code in (413, 422)
        assert marker not in response.text  # error bodies never echo request values
    client.post(
        "/route",
        content=f'{{"prompt": "{prompt}"'.encode(),
        headers={"content-type": "application/json"},
    )
    client.post("/feedback", json={"request_id": prompt, "success": True})  # unknown id: 404
    client.post("/route", json={"prompt": prompt})  # expires below
    clock.now += 7200
    client.post("/route", json={"prompt": prompt})  # its put() expires the previous one
    client.post("/route", json={"prompt": prompt})  # left for the shutdown drain


@pytest.mark.parametrize("log_prompts", [False, True], ids=["default", "log-prompts"])
def test_prompt_text_never_reaches_the_application_log(make_app, caplog, log_prompts):
    marker = _marker()
    clock = FakeClock()
    app = make_app(
        clock=clock,
        log_prompts=log_prompts,
        limits={"max_prompt_chars": 5000},
        breakers={"consecutive_failures": 2, "min_calls": 2, "window_size": 4},
    )
    assert logging.getLogger("promptroute").propagate  # caplog sees the service's records
    with caplog.at_level(logging.DEBUG), TestClient(app) as client:
        _every_path_a_prompt_takes(client, clock, marker)
    texts = [r.getMessage() + (r.exc_text or "") for r in caplog.records]
    loggers = {r.name for r in caplog.records}
    assert {"promptroute.route", "promptroute.breakers", "promptroute.service"} <= loggers
    assert any(
        "breaker claude-v2: closed -> open" in t or "breaker claude-v1: closed -> open" in t
        for t in texts
    )
    leaked = [t for t in texts if marker in t]
    if log_prompts:
        assert leaked and all(t.startswith("route ") for t in leaked)
    else:
        assert leaked == []


@pytest.mark.parametrize("store_prompt", [False, True], ids=["private", "stored"])
def test_the_decision_log_privacy_option(make_app, log_path, store_prompt):
    marker = _marker()
    clock = FakeClock()
    app = make_app(
        clock=clock,
        # rotates: backups checked too (enough of them to keep every row)
        log={"store_prompt": store_prompt, "max_bytes": 500, "backup_count": 50},
        limits={"max_prompt_chars": 5000},
        breakers={"consecutive_failures": 2, "min_calls": 2, "window_size": 4},
    )
    with TestClient(app) as client:
        _every_path_a_prompt_takes(client, clock, marker)
    files = list(log_path.parent.iterdir())
    assert len(files) > 1
    raw = list(read_log_lines(log_path))
    rows = [r for r in raw if r["kind"] == "decision"]
    assert len(rows) == 7  # every decision, written when it was served
    assert len(raw) == 7 + 4  # and the four outcomes
    assert sum(r["success"] is None for r in read_joined_rows(log_path)) == 3  # unanswered
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600  # rows can carry prompts: owner only
        text = f.read_text(encoding="utf-8")
        if '"kind":"decision"' in text:  # outcome rows never carry the prompt
            assert (marker in text) is store_prompt
        else:
            assert marker not in text
    prompt = f"Please keep this private: {marker}"
    if store_prompt:
        assert all("prompt_sha256" not in r for r in rows)
        return
    assert all("prompt" not in r and "messages" not in r for r in rows)
    assert rows[0]["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    assert rows[1]["prompt_sha256"] == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize("log", [False, True], ids=["no-log", "log"])
def test_pending_decisions_never_hold_the_prompt(make_client, log):
    client = make_client(log=None if log else False)
    marker = _marker()
    rid = client.post("/route", json={"prompt": marker}).json()["request_id"]
    chat = client.post("/route", json={"messages": [{"role": "user", "content": marker}]}).json()
    state = client.app.state.service
    for request_id in (rid, chat["request_id"]):
        decision = state.book.pending.pop(request_id)
        assert marker not in repr(decision)  # the log row has it (when there is a log)


def test_a_flood_of_megabyte_messages_keeps_pending_memory_flat(make_client):
    # Issue 11 item 3: ~1 MB of nested junk inside messages, 19 times, once raised RSS by
    # 440 MB. The decision's row goes to the log at once; the pending decision keeps only what
    # its outcome needs, so the store's bytes do not grow with the messages.
    client = make_client(limits={"max_body_bytes": 2 * MB, "max_prompt_chars": 2 * MB})
    state = client.app.state.service
    junk = {"k": ["x" * 1000 for _ in range(1000)]}
    messages = [{"role": "user", "content": "hi", "junk": junk}]
    for _ in range(19):
        assert client.post("/route", json={"messages": messages}).status_code == 200
    assert len(state.book.pending) == 19
    assert state.book.pending.bytes < 19 * 2000
    assert state.book.decision_log.lines_written == 19


def test_pending_decisions_are_bounded_in_bytes(make_client):
    client = make_client(pending={"max_bytes": 4000})
    state = client.app.state.service
    for i in range(200):
        assert client.post("/route", json={"prompt": f"flood {i}"}).status_code == 200
        assert state.book.pending.bytes <= 4000
    assert 1 < len(state.book.pending) < 200


# ---------------------------------------------------------------------------------------------
# Limits under a flood


def test_a_flood_of_unanswered_decisions_stays_within_max_items(make_app, log_path):
    with TestClient(make_app(pending={"max_items": 50})) as client:
        state = client.app.state.service
        sizes = []
        for i in range(1000):
            assert client.post("/route", json={"prompt": f"flood {i}"}).status_code == 200
            sizes.append(len(state.book.pending))
        assert max(sizes) == 50 and sizes[-1] == 50
        assert "promptroute_pending_decisions 50.0" in client.get("/metrics").text
        assert state.book.decision_log.lines_written == 1000  # each logged when served
    rows = list(read_log_lines(log_path))
    assert len(rows) == len({r["id"] for r in rows}) == 1000


def test_a_flood_of_oversized_bodies_is_refused_without_memory_growth(make_client):
    client = make_client(limits={"max_body_bytes": 256_000, "max_prompt_chars": 10_000})
    state = client.app.state.service
    big = json.dumps({"prompt": "x" * (2 * MB)}).encode()
    long_prompt = json.dumps({"prompt": "y" * 10_001}).encode()
    headers = {"content-type": "application/json"}

    def chunks():
        for start in range(0, len(big), 65_536):
            yield big[start : start + 65_536]

    def flood(n: int) -> list[int]:
        statuses = []
        for _ in range(n):
            statuses.append(client.post("/route", content=big, headers=headers).status_code)
            statuses.append(client.post("/route", content=chunks(), headers=headers).status_code)
            statuses.append(client.post("/route", content=long_prompt, headers=headers).status_code)
        return statuses

    flood(5)  # warm-up: first-use allocations (metric children, caches) are not growth
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        statuses = flood(100)
        gc.collect()
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert statuses == [413] * 300
    assert len(state.book.pending) == 0
    assert growth < MB, f"{growth} bytes still held after refusing 300 oversized requests"
