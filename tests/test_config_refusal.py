"""Invalid configuration stops `promptroute serve` before it serves: exit 2, one line naming the field.

`tests/test_serving_ops.py` covers a quoted port, a missing artifact and a rule naming an unknown
model. This covers the rest of what the issue lists — unknown models wherever the config names
one, negative or non-finite prices in the catalog, YAML that does not parse — and checks that
a refused start never reaches uvicorn and leaves nothing behind (no decision-log file, the
process's logging untouched).
"""

from __future__ import annotations

import logging
from pathlib import Path

import granian.server
import pytest
import uvicorn
import yaml

from models.catalog import load_catalog
from serving import serve


@pytest.fixture(autouse=True)
def _never_serves(monkeypatch):
    def refuse(*_args, **_kwargs):
        pytest.fail("serve() started a server with an invalid configuration")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)
    monkeypatch.setattr(uvicorn, "run", refuse)
    monkeypatch.setattr(granian.server.Server, "serve", refuse)


@pytest.fixture(scope="module")
def catalog_data(tiny_router) -> dict:
    data = load_catalog().to_dict(only=tiny_router.models)
    return data


def _serve(tmp_path: Path, capsys, artifact: Path, config_text: str) -> str:
    """Run serve() on `config_text`; returns stderr after checking the exit code and its form."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text, encoding="utf-8")
    handlers = list(logging.getLogger("promptroute").handlers)
    assert serve(config=str(config), model=str(artifact)) == 2
    err = capsys.readouterr().err
    assert err.startswith("promptroute: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert logging.getLogger("promptroute").handlers == handlers
    return err.removeprefix("promptroute: error: ").strip()


def _catalog(tmp_path: Path, data: dict, **changes) -> Path:
    """`data` with the first model's fields changed, written as YAML; returns the path."""
    models = [dict(m) for m in data["models"]]
    models[0].update(changes)
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({**data, "models": models}), encoding="utf-8")
    return path


_LOG = "decision_log: {path: %s}\n"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            "rules:\n  - {name: r, match: {task_types: [x]}, model: gpt-5}\n",
            "rules[0].model: unknown model 'gpt-5'; known: ",
            id="rule-model",
        ),
        pytest.param(
            "rules:\n  - {name: r, match: {task_types: [x]}, candidates: [claude-v1, gpt-5]}\n",
            "rules[0].candidates[1]: unknown model 'gpt-5'; known: ",
            id="rule-candidate",
        ),
        pytest.param(
            "experiments:\n  - name: e\n    variants:\n      - {name: a, weight: 1}\n"
            "      - {name: b, weight: 1, model: gpt-5}\n",
            "experiments[0].variants[1].model: unknown model 'gpt-5'; known: ",
            id="variant-model",
        ),
    ],
)
def test_an_unknown_model_in_the_config_is_refused(
    tmp_path, capsys, tiny_artifact, tiny_router, config, message
):
    log = tmp_path / "decisions.jsonl"
    err = _serve(tmp_path, capsys, tiny_artifact, config + _LOG % log)
    assert err.startswith(message) and err.endswith(f"(routable with artifact {tiny_artifact})")
    assert all(name in err for name in tiny_router.models)  # the known models are listed
    assert not log.exists()  # the service never ran half-configured


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        pytest.param(
            {"input_price_per_1m": -1.0},
            "input_price_per_1m",
            "Input should be greater than or equal to 0",
            id="negative-input-price",
        ),
        pytest.param(
            {"output_price_per_1m": -0.01},
            "output_price_per_1m",
            "Input should be greater than or equal to 0",
            id="negative-output-price",
        ),
        pytest.param(
            {"input_price_per_1m": float("nan")},
            "input_price_per_1m",
            "Input should be greater than or equal to 0",  # NaN fails the bound check first
            id="nan-price",
        ),
        pytest.param(
            {"output_price_per_1m": float("inf")},
            "output_price_per_1m",
            "must be a finite number",
            id="infinite-price",
        ),
        pytest.param(
            {"context_window": 0},
            "context_window",
            "Input should be greater than 0",
            id="zero-window",
        ),
        pytest.param(
            {"capabilities": ["telepathy"]}, "capabilities.0", "Input should be ", id="capability"
        ),
    ],
)
def test_a_bad_catalog_entry_is_refused_naming_the_model_and_field(
    tmp_path, capsys, tiny_artifact, catalog_data, changes, field, reason
):
    catalog = _catalog(tmp_path, catalog_data, **changes)
    log = tmp_path / "decisions.jsonl"
    err = _serve(tmp_path, capsys, tiny_artifact, f"catalog: {catalog}\n" + _LOG % log)
    name = catalog_data["models"][0]["name"]
    assert err.startswith(f"{catalog}: models[{name}].{field}: ") and reason in err
    assert not log.exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        pytest.param(
            "port: 8000\nbreakers: {cooldown_seconds: 1\n",
            "config: invalid YAML at line 3, column 1: ",
            id="unclosed-flow",
        ),
        pytest.param(
            "breakers:\n\tcooldown_seconds: 1\n",
            "config: invalid YAML at line 2, column 1: found character '\\t'",
            id="tab",
        ),
        pytest.param(
            "port: 8000\nport: 9000\n",
            "config: invalid YAML at line 2, column 1: found duplicate key 'port'",
            id="duplicate-key",
        ),
        pytest.param(
            "- port: 8000\n", "config: top level must be a mapping, got list", id="not-a-mapping"
        ),
        pytest.param(
            "breakers: {cooldown_secs: 1}\n",
            "breakers.cooldown_secs: unknown field (expected one of: ",
            id="typo",
        ),
        pytest.param(
            "limits: {max_body_bytes: -1}\n",
            "limits.max_body_bytes: Input should be greater than 0",
            id="negative-limit",
        ),
        pytest.param(
            "breakers: {error_rate_threshold: .nan}\n",
            "breakers.error_rate_threshold: ",
            id="nan",
        ),
    ],
)
def test_config_that_does_not_parse_or_validate_is_refused(
    tmp_path, capsys, tiny_artifact, config, message
):
    err = _serve(tmp_path, capsys, tiny_artifact, config)
    assert err.startswith(f"{tmp_path / 'config.yaml'}: {message}")


def test_a_catalog_that_is_not_yaml_is_refused(tmp_path, capsys, tiny_artifact):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("models:\n  - {name: a, input_price_per_1m: [\n", encoding="utf-8")
    err = _serve(tmp_path, capsys, tiny_artifact, f"catalog: {catalog}\n")
    assert err.startswith(f"{catalog}: catalog: invalid YAML at line 3, column 1: ")


def test_an_unwritable_decision_log_is_refused(tmp_path, capsys, tiny_artifact):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    err = _serve(tmp_path, capsys, tiny_artifact, _LOG % (blocker / "decisions.jsonl"))
    assert str(blocker) in err
