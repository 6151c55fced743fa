"""Operations: health, models, metrics, docs, admin auth, hot reload, start-up checks, serve()."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fakes import TestClient

import serving
from models.artifact import ARRAYS
from models.catalog import load_catalog
from models.errors import ArtifactError, ConfigError
from serving import create_app, load_settings, serve
from serving.service import Service

KEY = "s3cret-admin-key"
PROMPT = "Translate 'good morning' into French."


@pytest.fixture(scope="module")
def catalog_path(tmp_path_factory, tiny_router) -> Path:
    # Two catalog models the router does not know: listed by /models, never routable.
    data = load_catalog().to_dict(
        only=[*tiny_router.models, "gemma-2-9b-it", "qwen2.5-7b-instruct"]
    )
    path = tmp_path_factory.mktemp("catalog") / "catalog.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture
def make_client(tiny_artifact, catalog_path):
    with contextlib.ExitStack() as stack:

        def make(environ=None, **overrides):
            config = load_settings(
                artifact=str(tiny_artifact), catalog=str(catalog_path), **overrides
            )
            app = create_app(config, environ={} if environ is None else environ)
            return stack.enter_context(TestClient(app))

        yield make


@pytest.fixture
def admin(make_client, tmp_path):
    # Reloads may name artifacts under tmp_path (the copies each test makes).
    return make_client(environ={"PROMPTROUTE_ADMIN_KEY": KEY}, artifacts_dir=str(tmp_path))


def tampered_copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    payload = dest / ARRAYS
    data = bytearray(payload.read_bytes())
    data[len(data) // 2] ^= 0xFF
    payload.write_bytes(bytes(data))
    return dest


def test_package_api():
    assert serving.__all__ == ["Settings", "create_app", "load_settings", "serve"]
    assert all(hasattr(serving, name) for name in serving.__all__)


# ---------------------------------------------------------------------------------------------
# Health, readiness, models, metrics, docs


def test_health_and_readiness(make_client, tiny_artifact):
    version = json.loads((tiny_artifact / "manifest.json").read_text())["router_version"]
    client = make_client()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready",
        "router_version": version,
        "state": {"backend": "memory", "degraded": False},
    }


def test_not_ready_before_start_up(tiny_artifact):
    app = create_app(load_settings(artifact=str(tiny_artifact)), environ={})
    client = TestClient(app)  # no `with`: the lifespan has not run, nothing is loaded
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "not_ready"
    response = client.post("/route", json={"prompt": PROMPT})
    assert response.status_code == 503
    assert response.json() == {
        "error": {"code": "not_ready", "message": "the service has not loaded a model yet"}
    }


def test_models_lists_the_catalog_with_live_state(make_client, tiny_router):
    client = make_client()
    rid = client.post("/route", json={"prompt": PROMPT, "candidates": ["claude-v1"]}).json()
    client.post("/feedback", json={"request_id": rid["request_id"], "success": False})
    body = client.get("/models").json()
    assert body["router_version"] == tiny_router.version
    models = {m["name"]: m for m in body["models"]}
    assert len(models) == 14
    assert {m for m, info in models.items() if not info["routable"]} == {
        "gemma-2-9b-it",
        "qwen2.5-7b-instruct",
    }
    claude = models["claude-v1"]
    assert claude["input_price_per_1m"] == 8.0 and claude["context_window"] == 100000
    assert claude["stats"]["calls"] == 1 and claude["stats"]["success_rate"] == 0.0
    assert claude["breaker"]["state"] == "closed"
    assert claude["breaker"]["consecutive_failures"] == 1
    assert models["claude-v2"]["stats"] == {
        "calls": 0,
        "success_rate": None,
        "latency_ms": None,
        "mean_quality": None,
    }


def test_a_candidate_without_learned_scores_is_chosen_by_catalog_preference(make_client):
    client = make_client()
    response = client.post("/route", json={"prompt": PROMPT, "candidates": ["gemma-2-9b-it"]})
    assert response.status_code == 200
    body = response.json()
    assert (body["model"], body["fallbacks"], body["scores"]) == ("gemma-2-9b-it", [], {})
    assert body["reason"]["stage"] == "catalog_preference"
    assert "no model with learned scores can take this request" in body["reason"]["detail"]
    assert body["estimated_cost_usd"] > 0


def test_unscored_models_follow_the_ranked_ones_and_are_never_scored(make_client):
    client = make_client()
    body = client.post("/route", json={"prompt": PROMPT}).json()
    assert body["reason"]["stage"] == "classifier"
    assert body["fallbacks"][-2:] == ["gemma-2-9b-it", "qwen2.5-7b-instruct"]  # catalog order
    assert not {"gemma-2-9b-it", "qwen2.5-7b-instruct"} & set(body["scores"])
    assert "without learned scores, listed last" in body["reason"]["detail"]


def test_models_say_why_a_model_is_not_routable(make_client):
    body = client_models = make_client().get("/models").json()
    notes = {m["name"]: m["why_not_routable"] for m in body["models"]}
    assert notes["claude-v1"] is None
    assert "has no learned scores for gemma-2-9b-it" in notes["gemma-2-9b-it"]
    del client_models


def test_metrics_in_prometheus_format(make_client):
    breakers = {"consecutive_failures": 1, "min_calls": 1, "window_size": 2}
    client = make_client(breakers=breakers)
    rid = client.post("/route", json={"prompt": PROMPT, "candidates": ["claude-v1"]}).json()
    client.post("/feedback", json={"request_id": rid["request_id"], "success": False})
    client.post("/route", json={"prompt": PROMPT, "candidates": ["claude-v1"]})  # 422: open
    client.post("/route", json={"prompt": PROMPT, "max_latency_ms": 1000})
    client.get("/experiments/none")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    lines = set(response.text.splitlines())
    expected = [
        'promptroute_decisions_total{model="claude-v1",stage="classifier"} 1.0',
        'promptroute_filter_removals_total{filter="candidates"} 26.0',  # 13 others, twice
        'promptroute_filter_removals_total{filter="breaker"} 1.0',
        'promptroute_filter_removals_total{filter="latency"} 6.0',
        'promptroute_breaker_state{model="claude-v1"} 2.0',
        'promptroute_breaker_state{model="claude-v2"} 0.0',
        'promptroute_breaker_transitions_total{from_state="closed",model="claude-v1",to_state="open"} 1.0',
        'promptroute_feedback_total{model="claude-v1",outcome="failure"} 1.0',
        "promptroute_no_eligible_total 1.0",
        'promptroute_http_requests_total{endpoint="/route",status="200"} 2.0',
        'promptroute_http_requests_total{endpoint="/route",status="422"} 1.0',
        'promptroute_http_requests_total{endpoint="/experiments/{name}",status="404"} 1.0',
        "promptroute_decision_seconds_count 2.0",
        "promptroute_pending_decisions 1.0",
    ]
    assert [line for line in expected if line not in lines] == []
    assert any(
        line.startswith('promptroute_decision_seconds_bucket{le="2.5e-05"}') for line in lines
    )


def test_unknown_paths_and_methods(make_client):
    client = make_client()
    assert client.get("/nope").json() == {"error": {"code": "not_found", "message": "Not Found"}}
    response = client.get("/route")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_openapi_docs_with_request_examples(make_client):
    client = make_client()
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/route"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["examples"]) == {"prompt", "constrained", "messages", "vision"}
    assert (
        "examples"
        in spec["paths"]["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    )
    assert {"/route", "/feedback", "/models", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    assert "/admin/breakers/{model}/reset" in spec["paths"]


# ---------------------------------------------------------------------------------------------
# Admin


@pytest.mark.parametrize(
    ("environ", "headers", "status", "code"),
    [
        pytest.param({}, {"X-API-Key": KEY}, 403, "admin_disabled", id="no-key-configured"),
        pytest.param({"PROMPTROUTE_ADMIN_KEY": ""}, {}, 403, "admin_disabled", id="empty-key"),
        pytest.param({"PROMPTROUTE_ADMIN_KEY": KEY}, {}, 401, "unauthorized", id="missing"),
        pytest.param(
            {"PROMPTROUTE_ADMIN_KEY": KEY}, {"X-API-Key": "wrong"}, 401, "unauthorized", id="wrong"
        ),
        pytest.param(
            {"PROMPTROUTE_ADMIN_KEY": KEY},
            {"Authorization": f"Basic {KEY}"},
            401,
            "unauthorized",
            id="not-bearer",
        ),
        pytest.param({"PROMPTROUTE_ADMIN_KEY": KEY}, {"X-API-Key": KEY}, 200, None, id="x-api-key"),
        pytest.param(
            {"PROMPTROUTE_ADMIN_KEY": KEY},
            {"Authorization": f"Bearer {KEY}"},
            200,
            None,
            id="bearer",
        ),
    ],
)
def test_admin_auth(make_client, environ, headers, status, code):
    client = make_client(environ=environ)
    response = client.post("/admin/breakers/claude-v1/reset", headers=headers)
    assert response.status_code == status
    if code is not None:
        assert response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"


def test_admin_key_env_var_is_configurable(make_client):
    client = make_client(environ={"OTHER_KEY": KEY}, admin_api_key_env="OTHER_KEY")
    assert client.post("/admin/reload", headers={"X-API-Key": KEY}).status_code == 200


def test_breaker_reset(admin):
    model = "meta/llama-2-70b-chat"  # a name with a slash
    for _ in range(5):  # the default breaker opens after 5 consecutive failures
        rid = admin.post("/route", json={"prompt": PROMPT, "candidates": [model]}).json()[
            "request_id"
        ]
        admin.post("/feedback", json={"request_id": rid, "success": False})
    assert admin.post("/route", json={"prompt": PROMPT, "candidates": [model]}).status_code == 422
    response = admin.post(f"/admin/breakers/{model}/reset", headers={"X-API-Key": KEY})
    assert response.status_code == 200
    assert response.json()["model"] == model
    assert response.json()["breaker"]["state"] == "closed"
    assert admin.post("/route", json={"prompt": PROMPT, "candidates": [model]}).status_code == 200
    unknown = admin.post("/admin/breakers/gpt-5/reset", headers={"X-API-Key": KEY})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "unknown_model"


def test_reload_swaps_in_a_verified_artifact(admin, tiny_artifact, tmp_path):
    before = admin.get("/readyz").json()["router_version"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    response = admin.post("/admin/reload", json={"artifact": str(copy)}, headers={"X-API-Key": KEY})
    assert response.status_code == 200
    body = response.json()
    assert body["artifact"] == str(copy.resolve())
    assert body["router_version"] == body["previous_version"] == before
    assert len(body["models"]) == 12
    # Without a body: the configured (now: the last loaded) artifact again.
    again = admin.post("/admin/reload", headers={"X-API-Key": KEY})
    assert again.status_code == 200 and again.json()["artifact"] == str(copy.resolve())


@pytest.mark.parametrize("problem", ["tampered", "missing"])
def test_reload_failure_keeps_the_old_model(admin, tiny_artifact, tmp_path, problem):
    before = admin.get("/readyz").json()["router_version"]
    target = (
        tampered_copy(tiny_artifact, tmp_path / "bad")
        if problem == "tampered"
        else tmp_path / "none"
    )
    response = admin.post(
        "/admin/reload", json={"artifact": str(target)}, headers={"X-API-Key": KEY}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("reload_failed", "artifact")
    assert error["message"].endswith(f"; still serving router {before}")
    assert (
        "does not match the manifest" if problem == "tampered" else "not an artifact folder"
    ) in error["message"]
    assert admin.get("/readyz").json()["router_version"] == before
    assert admin.post("/route", json={"prompt": PROMPT}).status_code == 200


def test_a_rule_still_pins_a_model_the_reloaded_artifact_has_no_scores_for(
    tiny_artifact, catalog_path, tmp_path
):
    # The rule names a catalog model; an artifact without learned scores for it can still be
    # swapped in, and the rule keeps sending its requests there (the model stays in the catalog).
    from models.artifact import load_router, save_router

    router, manifest = load_router(tiny_artifact)
    keep = [i for i, m in enumerate(router.models) if m != "claude-v1"]
    from models.router import LinearHead

    # plain heads over the kept models (gain and domain columns index the full model list)
    router.heads = {
        name: LinearHead(head.kind, head.dense_w[:, keep], head.hashed_w[:, keep], head.bias[keep])
        for name, head in router.heads.items()
    }
    router.knob_mix = None
    router.models = tuple(router.models[i] for i in keep)
    for name in ("input_price", "output_price", "output_tokens"):
        setattr(router, name, getattr(router, name)[keep])
    save_router(router, tmp_path / "smaller", catalog=manifest["catalog"], training={}, metrics={})
    rule = {"name": "pin", "match": {"task_types": ["x"]}, "model": "claude-v1"}
    config = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        rules=[rule],
        artifacts_dir=str(tmp_path),
    )
    with TestClient(create_app(config, environ={"PROMPTROUTE_ADMIN_KEY": KEY})) as client:
        response = client.post(
            "/admin/reload",
            json={"artifact": str(tmp_path / "smaller")},
            headers={"X-API-Key": KEY},
        )
        assert response.status_code == 200, response.text
        assert "claude-v1" not in response.json()["models"]
        body = client.post("/route", json={"prompt": PROMPT, "task_type": "x"}).json()
        assert (body["model"], body["reason"]["stage"]) == ("claude-v1", "rule")
        info = {m["name"]: m for m in client.get("/models").json()["models"]}["claude-v1"]
        assert info["routable"] is False and "no learned scores" in info["why_not_routable"]


# ---------------------------------------------------------------------------------------------
# Start-up checks and serve()


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        pytest.param(
            {"rules": [{"name": "r", "match": {"task_types": ["x"]}, "model": "gpt-5"}]},
            ConfigError,
            "rules[0].model: unknown model 'gpt-5'",
            id="rule-model",
        ),
        pytest.param(
            {
                "experiments": [
                    {
                        "name": "e",
                        "variants": [
                            {"name": "a", "weight": 1},
                            {"name": "b", "weight": 1, "model": "gpt-5"},
                        ],
                    }
                ]
            },
            ConfigError,
            "experiments[0].variants[1].model: unknown model 'gpt-5'",
            id="variant-not-routable",
        ),
        pytest.param(
            {"catalog": "/nonexistent/catalog.yaml"}, ConfigError, "no such file", id="catalog"
        ),
        pytest.param(
            {"artifact": "/nonexistent/artifact"}, ArtifactError, "not an artifact", id="artifact"
        ),
    ],
)
def test_start_up_refuses_a_bad_config(tiny_artifact, catalog_path, overrides, error, message):
    config = load_settings(
        **{"artifact": str(tiny_artifact), "catalog": str(catalog_path), **overrides}
    )
    app = create_app(config, environ={})
    with pytest.raises(error, match=message.replace("[", r"\[").replace("]", r"\]")):
        with TestClient(app):
            pass


def test_start_up_refuses_a_tampered_artifact(tiny_artifact, tmp_path):
    bad = tampered_copy(tiny_artifact, tmp_path / "bad")
    with pytest.raises(ArtifactError, match="refusing to load it"):
        Service.load(load_settings(artifact=str(bad)), environ={})


def test_catalog_defaults_to_the_artifacts_snapshot(tiny_artifact):
    state = Service.load(load_settings(artifact=str(tiny_artifact)), environ={})
    try:
        manifest = json.loads((tiny_artifact / "manifest.json").read_text())
        assert state.catalog.names == tuple(m["name"] for m in manifest["catalog"]["models"])
        assert state.models.current.universe == frozenset(state.models.current.names)
    finally:
        asyncio.run(state.close())


@pytest.mark.parametrize(
    ("config_text", "kwargs", "message"),
    [
        pytest.param("port: '8000'\n", {}, "port: Input should be a valid integer", id="config"),
        pytest.param(
            "", {"model": "/nonexistent/artifact"}, "not an artifact folder", id="artifact"
        ),
        pytest.param(
            "rules:\n  - {name: r, match: {task_types: [x]}, model: gpt-5}\n",
            {},
            "rules[0].model: unknown model 'gpt-5'",
            id="rule",
        ),
    ],
)
def test_serve_reports_problems_and_exits_2(
    tmp_path, capsys, tiny_artifact, config_text, kwargs, message
):
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    kwargs = {"model": str(tiny_artifact), **kwargs}
    assert serve(config=str(config), **kwargs) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptroute: error: ") and message in err
    assert "Traceback" not in err
