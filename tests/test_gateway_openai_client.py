"""The official `openai` client pointed at a real promptroute server, with the fake upstream.

Both servers run with uvicorn on free loopback ports in background threads; nothing leaves
127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
import yaml
from fake_upstream import ANSWER, FakeUpstream, serve_in_thread

from models.catalog import load_catalog
from serving import create_app, load_settings
from serving.decision_log import read_joined_rows

MESSAGES = [{"role": "user", "content": "Summarize the plot of Hamlet in three sentences."}]


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_fake(fake):
    fake.reset()


@pytest.fixture(scope="module")
def log_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("log") / "decisions.jsonl"


@pytest.fixture(scope="module")
def sleeps() -> list[float]:
    return []


@pytest.fixture(scope="module")
def promptroute(tmp_path_factory, tiny_artifact, tiny_router, fake, log_path, sleeps):
    """The URL of a promptroute server whose routable models all call the fake."""
    data = load_catalog().to_dict(only=tiny_router.models)
    catalog = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(data), encoding="utf-8")
    settings = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog),
        decision_log={"path": str(log_path)},
        upstreams={m: {"base_url": fake.url(), "timeout_seconds": 5.0} for m in tiny_router.models},
    )

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    app = create_app(settings, environ={}, sleep=sleep)
    with serve_in_thread(app, lifespan="on") as url:
        yield url


@pytest.fixture
def client(promptroute):
    with openai.OpenAI(base_url=promptroute + "/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.fixture
def order(promptroute) -> list[str]:
    """The models promptroute ranks for MESSAGES, best first (asked with POST /route)."""
    response = httpx.post(promptroute + "/route", json={"messages": MESSAGES})
    assert response.status_code == 200, response.text
    decision = response.json()
    return [decision["model"], *decision["fallbacks"]]


def logged(log_path: Path, request_id: str) -> dict:
    (row,) = [r for r in read_joined_rows(log_path) if r["id"] == request_id]
    return row


def test_plain_completion(client, fake, order, log_path):
    first = order[0]
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    completion = raw.parse()
    assert completion.model == first
    assert completion.choices[0].message.content == "".join(ANSWER)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (12, 7)
    assert raw.headers["x-promptroute-attempts"] == f"{first}:ok"
    row = logged(log_path, raw.headers["x-promptroute-request-id"])
    assert (row["model"], row["success"]) == (first, True)
    assert row["cost_usd"] == load_catalog()[first].cost_usd(12, 7)


def test_streaming(client, fake, order):
    first = order[0]
    stream = client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
    pieces, models = [], set()
    for chunk in stream:
        models.add(chunk.model)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
    assert pieces == ANSWER  # in order, one event each
    assert models == {first}


def test_first_choice_failing_so_a_fallback_answers(client, fake, order, log_path):
    first, second = order[:2]
    fake.behave(first, "500")
    raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)
    assert raw.parse().model == second
    assert raw.headers["x-promptroute-attempts"] == f"{first}:500,{second}:ok"
    assert raw.headers["x-promptroute-fallbacks"] == second
    row = logged(log_path, raw.headers["x-promptroute-request-id"])
    assert (row["model"], row["routed_model"], row["success"]) == (second, first, True)


def test_first_choice_failing_while_streaming_so_a_fallback_streams(client, fake, order, sleeps):
    first, second = order[:2]
    fake.behave(first, "429")
    sleeps.clear()
    stream = client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert {c.model for c in chunks} == {second}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(ANSWER)
    assert sleeps == [2.0]  # the fake's Retry-After, waited out before the same upstream


def test_a_stream_broken_midway_raises_in_the_client(client, fake, order):
    first = order[0]
    fake.behave(first, "break")
    stream = client.chat.completions.create(model="auto", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match=f"the upstream of {first} failed while streaming"):
        list(stream)


def test_errors_reach_the_client_as_openai_errors(client, fake, order):
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="gpt-5", messages=MESSAGES)
    assert not_found.value.code == "model_not_found"
    assert not_found.value.param == "model"
    for model in order:
        fake.behave(model, "500")
    with pytest.raises(openai.APIStatusError) as failed:
        client.chat.completions.create(model="auto", messages=MESSAGES)
    assert failed.value.status_code == 502
    assert failed.value.code == "upstream_failed"
    assert [a["outcome"] for a in failed.value.body["attempts"]] == ["500", "500", "500"]


def test_models_list(client, tiny_router):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "auto"
    assert sorted(ids[1:]) == sorted(tiny_router.models)
