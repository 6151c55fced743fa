"""The /ui dashboard in a real headless Chromium: after a scripted load it shows the numbers of
/metrics and /models, and its admin actions ask for the key and work."""

from __future__ import annotations

import math
import os
from collections import defaultdict

import httpx
import pytest
from fakes import LiveServer, offline_page
from prometheus_client.parser import text_string_to_metric_families

from serving.activity import histogram_quantile
from serving.app import create_app
from serving.config import load_settings
from serving.metrics import DECISION_BUCKETS

ADMIN_KEY = "s3cret-for-tests"
PROMPTS = [
    "Write a Python function that merges two sorted lists",
    "What is the capital of Australia?",
    "Solve x^2 - 5x + 6 = 0 step by step",
    "Translate 'good morning' into French",
    "Prove that the square root of 2 is irrational.",
    "Summarise the causes of the First World War in three sentences.",
]


@pytest.fixture(scope="module")
def loaded_server(tiny_artifact, catalog_path):
    """A real server after a scripted load: routed requests, feedback, one tripped breaker."""
    settings = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        experiments=[
            {
                "name": "knob-test",
                "variants": [
                    {"name": "control", "weight": 1},
                    {"name": "cheaper", "weight": 1, "knob": 2.0},
                ],
            }
        ],
    )
    server = LiveServer(create_app(settings, environ={"PROMPTROUTE_ADMIN_KEY": ADMIN_KEY}))
    url = server.start()
    with httpx.Client(base_url=url, timeout=10) as client:
        chosen = []
        for i in range(60):
            body = {"prompt": PROMPTS[i % len(PROMPTS)], "user_id": f"user-{i}"}
            body["priority"] = ("quality", "balanced", "cost")[i % 3]
            answer = client.post("/route", json=body)
            assert answer.status_code == 200, answer.text
            chosen.append(answer.json())
        for i, decision in enumerate(chosen[:40]):
            feedback = {
                "request_id": decision["request_id"],
                "success": i % 4 != 0,
                "latency_ms": 300.0 + 17 * i,
                "quality": 0.5 + (i % 5) / 10,
            }
            assert client.post("/feedback", json=feedback).status_code == 200
        # Trip one model's circuit: consecutive failures on its routed requests.
        victim = chosen[40]["model"]
        for _ in range(6):
            answer = client.post("/route", json={"prompt": "hello", "candidates": [victim]})
            if answer.status_code != 200:
                break
            rid = answer.json()["request_id"]
            client.post("/feedback", json={"request_id": rid, "success": False, "latency_ms": 50})
        assert client.get("/models").json()["models"]
    yield url, victim
    server.stop()


def _metrics(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics").text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _open_dashboard(browser, url: str):
    page, refused = offline_page(browser, url)
    page.goto(f"{url}/ui/")
    page.wait_for_selector("body[data-loaded]", timeout=20_000)
    # Freeze it: the numbers compared below must come from one refresh.
    page.locator("#auto").uncheck()
    page.locator("#refresh").click()
    page.wait_for_function("Number(document.body.dataset.loaded) >= 2", timeout=20_000)
    return page, refused


def test_dashboard_shows_the_numbers_of_metrics_and_models(browser, loaded_server) -> None:
    url, victim = loaded_server
    page, refused = _open_dashboard(browser, url)
    try:
        metrics = _metrics(url)
        models = httpx.get(f"{url}/models").json()["models"]
        decisions: dict[str, float] = defaultdict(float)
        for sample in metrics["promptroute_decisions"]:
            if sample.name.endswith("_total"):
                decisions[sample.labels["model"]] += sample.value
        spend = {
            s.labels["model"]: s.value
            for s in metrics["promptroute_estimated_spend_usd"]
            if s.name.endswith("_total")
        }
        routed = {m: n for m, n in decisions.items() if n}
        assert sum(routed.values()) >= 60

        traffic = page.locator("#traffic tbody tr")
        assert traffic.count() == len(routed)
        total = sum(routed.values())
        for model, n in routed.items():
            row = page.locator(f"#traffic tr[data-model='{model}']")
            # Everything happened within the window: window numbers equal the totals.
            for field in ("decisions", "total-decisions"):
                cell = row.locator(f"[data-field='{field}']")
                assert float(cell.get_attribute("data-value")) == n
                assert cell.inner_text().replace(",", "") == str(int(n))
            for field in ("spend", "total-spend"):
                shown = float(row.locator(f"[data-field='{field}']").get_attribute("data-value"))
                assert math.isclose(shown, spend[model], rel_tol=1e-9)
            share = float(row.locator("[data-field='share']").get_attribute("data-value"))
            assert math.isclose(share, n / total, rel_tol=1e-12)
        assert page.locator("#kpi-decisions").inner_text().replace(",", "") == str(int(total))

        # Decision time: the dashboard's percentiles are those of /metrics' histogram.
        cumulative = [
            s.value for s in metrics["promptroute_decision_seconds"] if s.name.endswith("_bucket")
        ]
        counts = [int(b - a) for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]
        latency = page.locator("#kpi-latency")
        for q, attr in ((0.5, "data-p50"), (0.99, "data-p99")):
            expected = histogram_quantile(q, DECISION_BUCKETS, counts)
            assert math.isclose(float(latency.get_attribute(attr)), expected, rel_tol=1e-9)

        # Live health: exactly /models' breaker states, calls, success rates and latency.
        health = page.locator("#health tbody tr")
        assert health.count() == len(models)
        for m in models:
            row = page.locator(f"#health tr[data-model='{m['name']}']")
            assert (
                row.locator("[data-field='breaker']").get_attribute("data-value")
                == (m["breaker"]["state"])
            )
            assert row.locator("[data-field='calls']").inner_text() == str(m["stats"]["calls"])
            rate = m["stats"]["success_rate"]
            shown = row.locator("[data-field='success-rate']")
            if rate is None:
                assert shown.inner_text() == "–"
            else:
                assert float(shown.get_attribute("data-value")) == rate
                assert shown.inner_text() == f"{100 * rate:.1f}%"
            p50 = (m["stats"]["latency_ms"] or {}).get("p50")
            if p50 is not None:
                cell = row.locator("[data-field='latency-p50']")
                assert float(cell.get_attribute("data-value")) == p50
        victim_row = page.locator(f"#health tr[data-model='{victim}']")
        assert victim_row.locator(".state").inner_text() == "open"
        transition = page.locator(f"#transitions li[data-model='{victim}']").first
        assert "closed" in transition.inner_text() and "open" in transition.inner_text()

        # Experiments: the variants' counts and p-value as /experiments reports them.
        experiment = httpx.get(f"{url}/experiments/knob-test").json()
        for variant in experiment["variants"]:
            row = page.locator(
                f"[data-experiment='knob-test'] tr[data-variant='{variant['name']}']"
            )
            assert row.locator("[data-field='assigned']").inner_text() == str(variant["assigned"])
            assert row.locator("[data-field='feedback']").inner_text() == str(variant["feedback"])
        # The artifact: its version, and the curve drawn with the balanced knob's point on it.
        artifact = httpx.get(f"{url}/artifact").json()
        assert page.locator("#router-version").inner_text() == artifact["router_version"]
        assert artifact["cv_curve"], "the artifact should carry its cross-validated curve"
        assert page.locator("#curve circle[data-knob='balanced']").count() == 1
        assert artifact["scored"] == sorted(m["name"] for m in models if m["routable"])
        assert page.locator("#artifact-facts dd[data-field='models']").inner_text() == (
            f"{len(artifact['scored'])} with learned scores, of {len(models)} in the catalog"
        )
        assert refused == []
        shots = os.environ.get("PROMPTROUTE_SCREENSHOTS")  # a folder: look at the page yourself
        if shots:
            page.screenshot(path=os.path.join(shots, "dashboard.png"), full_page=True)
    finally:
        page.close()


def test_breaker_reset_asks_for_the_admin_key(browser, loaded_server) -> None:
    url, victim = loaded_server
    page, _refused = _open_dashboard(browser, url)
    try:
        row = page.locator(f"#health tr[data-model='{victim}']")
        # A wrong key: the service's 401 is shown and nothing changes.
        row.locator("[data-action='reset']").click()
        page.locator("#key-input").fill("wrong")
        page.locator("#key-ok").click()
        page.wait_for_selector("#notice.bad", timeout=10_000)
        assert "401" in page.locator("#notice").inner_text()
        assert httpx.get(f"{url}/models").json()["models"]
        # The right key closes the circuit, and the page shows it.
        row.locator("[data-action='reset']").click()
        page.locator("#key-input").fill(ADMIN_KEY)
        page.locator("#key-ok").click()
        page.wait_for_selector("#notice.ok", timeout=10_000)
        state = {
            m["name"]: m["breaker"]["state"] for m in httpx.get(f"{url}/models").json()["models"]
        }
        assert state[victim] == "closed"
        page.wait_for_function(
            f"document.querySelector(\"#health tr[data-model='{victim}'] .state\").textContent === 'closed'",
            timeout=10_000,
        )
    finally:
        page.close()


def test_reload_asks_for_the_key_and_reports_the_versions(browser, loaded_server) -> None:
    url, _victim = loaded_server
    page, _refused = _open_dashboard(browser, url)
    try:
        version = httpx.get(f"{url}/artifact").json()["router_version"]
        page.locator("#reload-form button").click()
        page.locator("#key-input").fill(ADMIN_KEY)
        page.locator("#key-ok").click()
        page.wait_for_selector("#notice.ok", timeout=30_000)
        assert f"router {version} → {version}" in page.locator("#notice").inner_text()
        # A path that is no artifact: the service's refusal is shown, the old model serves on.
        page.locator("#reload-path").fill("/nonexistent/artifact")
        page.locator("#reload-form button").click()  # the key is remembered for the tab
        page.wait_for_selector("#notice.bad", timeout=30_000)
        text = page.locator("#notice").inner_text()
        assert text.startswith("/admin/reload: 422 ") and f"still serving router {version}" in text
    finally:
        page.close()
