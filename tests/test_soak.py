"""Soak: a real server under concurrent /route and /feedback while one upstream model fails.

Several client tasks drive a uvicorn server over HTTP for `SOAK_SECONDS` (30 s by default,
``PROMPTROUTE_SOAK_SECONDS`` lengthens it locally). For every decision a client "calls" the chosen
model on a simulated upstream and reports the outcome; the model the router prefers fails every
call during a few fault windows and recovers after each. Some decisions never get feedback, as
in production. The breakers run on the real monotonic clock with short cooldowns, because the
server and its clients run concurrently on real time; nothing sleeps to wait for them.

The server records, in the order it did them (everything runs on its event loop), each decision,
each feedback and each breaker transition; the test then checks that

* the breaker opens at the configured number of consecutive failures, in every fault window;
* no decision went to the model while its circuit was open; half-open probes happened; it closed
  again after every recovery and ends closed;
* the service answered every request with a 2xx (no 5xx, no error at all);
* every decision is in the decision log exactly once, joined with its feedback or marked as
  unanswered, across rotated files; the feedback rows and /metrics counters equal what
  the clients sent.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import math
import os
import random
import re
import threading
import time
from typing import Any

import httpx
from fakes import LiveServer

from serving import create_app, load_settings
from serving.decision_log import read_joined_rows
from serving.metrics import Metrics
from serving.service import Service

SOAK_SECONDS = max(float(os.environ.get("PROMPTROUTE_SOAK_SECONDS", "30")), 20.0)
CLIENTS = 8
NO_FEEDBACK_SHARE = 0.1
LAG = 2.0  # seconds a failure's feedback may trail its window under load
# Fractions of the soak during which the preferred model fails every call; the last 30% is
# healthy, long enough for the longest cooldown and the probes that close the circuit.
FAULT_WINDOWS = ((0.10, 0.22), (0.34, 0.46), (0.58, 0.70))
BREAKERS = {
    "consecutive_failures": 5,
    "min_calls": 5,
    "window_size": 20,
    "window_seconds": 10.0,
    "error_rate_threshold": 0.5,
    "cooldown_seconds": 0.25,
    "cooldown_multiplier": 2.0,
    "max_cooldown_seconds": 1.0,
    "half_open_max_probes": 1,
    "half_open_successes": 2,
    "probe_timeout_seconds": 1.0,
}

TOPICS = [
    "binary search trees",
    "the French revolution",
    "photosynthesis",
    "SQL window functions",
    "prime factorisation",
    "the causes of inflation",
    "Rust ownership rules",
    "plate tectonics",
    "a cover letter for a data analyst",
    "gradient descent",
]
ASKS = ["Explain", "Summarize", "Write a short poem about", "Give three facts about", "Compare"]


# ---------------------------------------------------------------------------------------------
# What the server did, in order


class Events:
    """Server-side events in the order they happened, each with its monotonic time.

    `items` holds ``(kind, ...)`` tuples and `times` their times; written on the server's event
    loop, read after it stopped.
    """

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.times: list[float] = []
        self._lock = threading.Lock()

    def add(self, *event: Any) -> None:
        with self._lock:
            self.items.append(event)
            self.times.append(time.monotonic())


class RecordingMetrics(Metrics):
    def __init__(self, events: Events) -> None:
        super().__init__()
        self.events = events

    def breaker_transition(self, model: str, old: Any, new: Any, reason: str) -> None:
        super().breaker_transition(model, old, new, reason)
        self.events.add("transition", model, old.value, new.value, reason)

    def feedback(self, model: str, success: bool) -> None:
        super().feedback(model, success)
        self.events.add("feedback", model, success)


def recording_service(settings: Any, events: Events) -> Service:
    """A service whose breaker transitions, feedback and decisions are recorded in `events`."""
    service = Service.load(settings, metrics=RecordingMetrics(events), environ={})
    book = service.book
    remember = book.remember

    async def recorded(request_id: str, decision: Any, **text: Any) -> None:
        await remember(request_id, decision, **text)
        events.add("decision", request_id, decision.model)

    book.remember = recorded  # type: ignore[method-assign]
    return service


# ---------------------------------------------------------------------------------------------
# Server and clients


@dataclasses.dataclass
class Tally:
    """What the clients sent and got."""

    statuses: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    decisions: dict[str, str] = dataclasses.field(default_factory=dict)  # request id -> model
    feedback: dict[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
    failures_injected: int = 0
    windows: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    transport_errors: list[str] = dataclasses.field(default_factory=list)
    breaker_seen: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class Upstream:
    """The simulated model providers: `failing` fails every call in its windows."""

    def __init__(self, failing: str, started: float, seconds: float) -> None:
        self.failing = failing
        self.windows = [(started + a * seconds, started + b * seconds) for a, b in FAULT_WINDOWS]

    def call(self, model: str, now: float) -> bool:
        return model != self.failing or not any(a <= now < b for a, b in self.windows)


def _request(rng: random.Random) -> dict[str, Any]:
    text = f"{rng.choice(ASKS)} {rng.choice(TOPICS)}, request {rng.randrange(10**6)}."
    body: dict[str, Any]
    if rng.random() < 0.2:
        body = {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": text},
            ]
        }
    else:
        body = {"prompt": text}
    if rng.random() < 0.3:
        body["task_type"] = rng.choice(["qa", "coding", "writing"])
    if rng.random() < 0.2:
        body["user_id"] = f"user-{rng.randrange(50)}"
    return body


async def _client(k: int, http: httpx.AsyncClient, upstream: Upstream, end: float, tally: Tally):
    rng = random.Random(k)
    while time.monotonic() < end:
        try:
            response = await http.post("/route", json=_request(rng))
        except httpx.HTTPError as exc:
            tally.transport_errors.append(repr(exc))
            continue
        tally.statuses[("/route", response.status_code)] += 1
        if response.status_code != 200:
            continue
        decision = response.json()
        rid, model = decision["request_id"], decision["model"]
        tally.decisions[rid] = model
        ok = upstream.call(model, time.monotonic())
        tally.failures_injected += not ok
        if rng.random() < NO_FEEDBACK_SHARE:
            continue  # the caller never reports back: its decision row stays unanswered
        body: dict[str, Any] = {"request_id": rid, "success": ok}
        if ok:
            body |= {"latency_ms": float(rng.randrange(200, 2000)), "quality": 0.8}
        else:
            body |= {"latency_ms": 30_000.0, "error_type": "http_503"}
        try:
            answer = await http.post("/feedback", json=body)
        except httpx.HTTPError as exc:
            tally.transport_errors.append(repr(exc))
            continue
        tally.statuses[("/feedback", answer.status_code)] += 1
        if answer.status_code == 200:
            tally.feedback[rid] = (answer.json()["model"], ok)


async def _monitor(http: httpx.AsyncClient, watched: str, end: float, tally: Tally) -> None:
    """Reads /models and /metrics while the load runs, as an operator would."""
    while time.monotonic() < end:
        models = await http.get("/models")
        tally.statuses[("/models", models.status_code)] += 1
        if models.status_code == 200:
            by_name = {m["name"]: m for m in models.json()["models"]}
            tally.breaker_seen[by_name[watched]["breaker"]["state"]] += 1
        metrics = await http.get("/metrics")
        tally.statuses[("/metrics", metrics.status_code)] += 1
        await asyncio.sleep(0.2)


async def _drive(url: str, watched: str, seconds: float, tally: Tally) -> None:
    limits = httpx.Limits(max_connections=CLIENTS + 1)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        started = time.monotonic()
        upstream = Upstream(watched, started, seconds)
        tally.windows = upstream.windows
        end = started + seconds
        await asyncio.gather(
            *(_client(k, http, upstream, end, tally) for k in range(CLIENTS)),
            _monitor(http, watched, end, tally),
        )


# ---------------------------------------------------------------------------------------------
# Reading the results


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Prometheus samples of `name`: {sorted label pairs: value}."""
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(1) or "")))
            out[labels] = float(match.group(2))
    return out


@dataclasses.dataclass
class BreakerStory:
    """The watched model's breaker, replayed from the server's events."""

    trips_from_closed: list[tuple[float, int, str]]  # (time, consecutive failures, reason)
    reopened: int  # half-open -> open: a probe failed
    closed_again: list[float]  # times of half-open -> closed
    probes: int  # decisions for the model while half-open
    routed_while_open: list[str]
    final: str


def _replay(events: Events, model: str) -> BreakerStory:
    state, run = "closed", 0
    story = BreakerStory([], 0, [], 0, [], "closed")
    for event, at in zip(events.items, events.times, strict=True):
        kind = event[0]
        if kind == "transition" and event[1] == model:
            old, new, reason = event[2], event[3], event[4]
            assert old == state, f"transition {old}->{new} while replayed state is {state}"
            if (old, new) == ("closed", "open"):
                # The failure that tripped it is recorded right after the transition.
                story.trips_from_closed.append((at, run + 1, reason))
            elif (old, new) == ("half_open", "open"):
                story.reopened += 1
            elif (old, new) == ("half_open", "closed"):
                story.closed_again.append(at)
            if new == "closed":
                run = 0
            state = new
        elif kind == "feedback" and event[1] == model:
            run = 0 if event[2] else run + 1
        elif kind == "decision" and event[2] == model:
            if state == "open":
                story.routed_while_open.append(event[1])
            elif state == "half_open":
                story.probes += 1
    story.final = state
    return story


# ---------------------------------------------------------------------------------------------
# The soak


def test_soak_with_a_failing_upstream(tiny_artifact, catalog_path, tmp_path):
    log_path = tmp_path / "log" / "decisions.jsonl"
    settings = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        breakers=BREAKERS,
        stats={"window_seconds": 2.0},  # reliability scaling forgets a fault window quickly
        decision_log={"path": str(log_path), "max_bytes": 64 * 1024, "backup_count": 1_000},
    )
    events = Events()
    server = LiveServer(create_app(settings, service=recording_service(settings, events)))
    url = server.start()
    tally = Tally()
    try:
        first = httpx.post(f"{url}/route", json={"prompt": "Explain binary search trees."})
        assert first.status_code == 200
        watched = first.json()["model"]  # the router's favourite: it will fail
        tally.statuses[("/route", 200)] += 1
        tally.decisions[first.json()["request_id"]] = watched
        started = time.monotonic()
        asyncio.run(_drive(url, watched, SOAK_SECONDS, tally))
        elapsed = time.monotonic() - started
        final_metrics = httpx.get(f"{url}/metrics").text
    finally:
        server.stop()

    # The service held: every request answered, all with 200.
    requests = sum(tally.statuses.values())
    errors = sum(n for (_, status), n in tally.statuses.items() if status != 200)
    assert tally.transport_errors == []
    assert errors == 0, tally.statuses
    routed, answered = len(tally.decisions), len(tally.feedback)
    assert tally.statuses[("/route", 200)] == routed
    assert tally.statuses[("/feedback", 200)] == answered

    # The breaker's story, from the server's own ordering of events.
    story = _replay(events, watched)
    k = BREAKERS["consecutive_failures"]
    for _, failures, reason in story.trips_from_closed:
        assert failures <= k  # never later than the configured number of failures
        assert reason == f"{failures} consecutive failures" or reason.startswith("error rate ")
    # Each window trips it (and nothing else does: the model succeeds outside them), and it
    # closes again after each, before the next. LAG covers feedback still on its way.
    windows = tally.windows
    ends = [start for start, _ in windows[1:]] + [math.inf]
    trip_times = [at for at, _, _ in story.trips_from_closed]
    for (start, end), next_start in zip(windows, ends, strict=True):
        assert any(start <= t < end + LAG for t in trip_times)
        assert any(end <= t < next_start for t in story.closed_again)
    assert all(any(a <= t < b + LAG for a, b in windows) for t in trip_times)
    assert story.routed_while_open == []
    assert story.probes >= len(FAULT_WINDOWS)
    assert story.final == "closed"
    assert tally.failures_injected > 0
    assert tally.breaker_seen["open"] > 0  # an operator polling /models saw it open
    server_decisions = {e[1]: e[2] for e in events.items if e[0] == "decision"}
    assert server_decisions == tally.decisions  # each answer is the decision the server made

    # /metrics counts exactly what the clients saw.
    decisions = _samples(final_metrics, "promptroute_decisions_total")
    assert sum(decisions.values()) == routed
    feedback = _samples(final_metrics, "promptroute_feedback_total")
    sent = collections.Counter(
        (("model", m), ("outcome", "success" if ok else "failure"))
        for m, ok in tally.feedback.values()
    )
    assert {labels: n for labels, n in feedback.items() if n} == dict(sent)
    http = _samples(final_metrics, "promptroute_http_requests_total")
    assert http[(("endpoint", "/route"), ("status", "200"))] == routed
    assert http[(("endpoint", "/feedback"), ("status", "200"))] == answered
    # A decision stays pending after its first outcome: each fallback may still report one.
    assert _samples(final_metrics, "promptroute_pending_decisions")[()] == routed
    transitions = _samples(final_metrics, "promptroute_breaker_transitions_total")
    watched_transitions = sum(
        n for labels, n in transitions.items() if ("model", watched) in labels
    )
    assert watched_transitions == sum(
        1 for e in events.items if e[0] == "transition" and e[1] == watched
    )

    # The decision log: every decision once, joined with its outcome, across rotations.
    rows = read_joined_rows(log_path)
    ids = [row["id"] for row in rows]
    lost = len(set(tally.decisions) - set(ids))
    assert len(ids) == len(set(ids)) == routed
    assert set(ids) == set(tally.decisions)
    for row in rows:
        if row["id"] in tally.feedback:
            assert (row["model"], row["success"]) == tally.feedback[row["id"]]
        else:
            assert row["success"] is None
            assert row["model"] == tally.decisions[row["id"]]
    files = list(log_path.parent.iterdir())
    assert len(files) > 2  # it rotated, under concurrent writers, and lost nothing

    trips = len(story.trips_from_closed) + story.reopened
    print(
        f"\nsoak: {elapsed:.0f} s, {requests} requests ({routed} routed, {answered} feedback), "
        f"{CLIENTS} clients, error rate {errors / requests:.2%}, 5xx 0; faults injected: "
        f"{tally.failures_injected} failed calls to {watched} in {len(FAULT_WINDOWS)} windows, "
        f"survived; breaker trips {trips} ({len(story.trips_from_closed)} from closed), "
        f"probes {story.probes}, closed again {len(story.closed_again)}; decision-log rows "
        f"{len(rows)} in {len(files)} files, lines lost {lost}"
    )
