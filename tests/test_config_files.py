"""The shipped config files, PROMPTROUTE_* environment variables, JSON logs and the gateway's
access log (issue 15: "configuration a person expects")."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from models.errors import ConfigError
from serving.config import Settings, load_settings
from serving.environment import EnvSettings, read_environment
from serving.log_format import JsonFormatter, log_config

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = ROOT / "serving" / "example-config.yaml"
REFERENCE = ROOT / "serving" / "reference-config.yaml"


def _keys(model: type[BaseModel], data: dict[str, Any], where: str = "") -> list[str]:
    """Every setting of `model` (nested sections included) that `data` does not spell out."""
    missing = []
    for name, info in model.model_fields.items():
        if name not in data:
            missing.append(f"{where}{name}")
            continue
        inner = info.annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            missing += _keys(inner, data[name], f"{where}{name}.")
    return missing


def test_the_reference_lists_every_setting_with_its_default() -> None:
    data = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    assert _keys(Settings, data) == []
    assert load_settings(REFERENCE) == Settings()


def test_the_minimal_config_loads_to_defaults() -> None:
    assert load_settings(MINIMAL) == Settings()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Several workers need the Redis backend (tests/test_crash.py starts them on a real Redis).
@pytest.mark.parametrize("workers", [1], ids=["one-process"])
def test_the_minimal_config_starts_as_shipped(tiny_artifact: Path, workers: int) -> None:
    """`promptroute serve --config serving/example-config.yaml`, as a user types it (the
    model given by PROMPTROUTE_ARTIFACT so that the test does not train the default one); with
    PROMPTROUTE_WORKERS=2, uvicorn's worker processes each load it."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTROUTE_", "OPENAI_"))}
    env.update(PROMPTROUTE_ARTIFACT=str(tiny_artifact), PROMPTROUTE_PORT=str(port))
    if workers > 1:
        env["PROMPTROUTE_WORKERS"] = str(workers)
    process = subprocess.Popen(
        [sys.executable, "-m", "promptroute", "serve", "--config", str(MINIMAL)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                ready = httpx.get(f"{base}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the service did not start in 120 s"
                time.sleep(0.2)
        assert ready.status_code == 200
        assert httpx.get(f"{base}/ui/", timeout=5).status_code == 200
        answer = httpx.post(f"{base}/route", json={"prompt": "2+2?"}, timeout=10)
        assert answer.status_code == 200
        if workers > 1:  # both workers up before stopping, so that both lines are there
            while process.poll() is None and time.monotonic() < deadline:
                if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert f"serving {tiny_artifact}" in output
    if workers == 1:
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit by SIGTERM).
        assert process.returncode == -signal.SIGTERM, output
        assert "Application shutdown complete." in output
    else:
        assert process.returncode == 0, output
        assert "2 workers: each keeps its own statistics" in output
        assert "died" not in output  # no worker killed while it was still loading


def test_environment_variables_override_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PROMPTROUTE_CONFIG": str(MINIMAL),
        "PROMPTROUTE_HOST": "0.0.0.0",
        "PROMPTROUTE_PORT": "9123",
        "PROMPTROUTE_WORKERS": "3",
        "PROMPTROUTE_LOG_FORMAT": "json",
        "PROMPTROUTE_ACCESS_LOG": "true",
        "PROMPTROUTE_ADMIN_KEY": "not-a-setting",  # read by name at start-up, not here
    }.items():
        monkeypatch.setenv(name, value)
    env = read_environment()
    assert env.config == str(MINIMAL)
    assert env.overrides() == {
        "host": "0.0.0.0",
        "port": 9123,
        "workers": 3,
        "log_format": "json",
        "access_log": True,
    }
    settings = load_settings(env.config, **env.overrides())
    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 9123, 3)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        pytest.param(
            "PROMPTROUTE_PORT",
            "eighty",
            "PROMPTROUTE_PORT: Input should be a valid integer",
            id="port",
        ),
        pytest.param(
            "PROMPTROUTE_WORKERS",
            "0",
            "PROMPTROUTE_WORKERS: Input should be greater than or equal to 1",
            id="workers",
        ),
        pytest.param(
            "PROMPTROUTE_LOG_FORMAT",
            "xml",
            "PROMPTROUTE_LOG_FORMAT: Input should be 'text' or 'json'",
            id="format",
        ),
    ],
)
def test_a_bad_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        read_environment()
    assert str(info.value).startswith(message)


def test_serve_refuses_a_bad_variable_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.server import serve

    monkeypatch.setenv("PROMPTROUTE_PORT", "eighty")
    assert serve() == 2
    err = capsys.readouterr().err
    assert err.startswith("promptroute: error: PROMPTROUTE_PORT: Input should be a valid integer")


def test_unset_variables_leave_the_file_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PROMPTROUTE_"):
            monkeypatch.delenv(name)
    assert EnvSettings().overrides() == {}


def test_json_log_lines_carry_the_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("promptroute.test-json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("route %s -> %s", "r-1", "gpt-4o", extra={"request_id": "r-1"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert line["message"] == "route r-1 -> gpt-4o"
    assert line["request_id"] == "r-1"
    assert line["level"] == "info" and line["logger"] == "promptroute.test-json"
    assert line["ts"].endswith("Z")
    config = log_config("json")
    assert config["formatters"]["default"] == {"()": "serving.log_format.JsonFormatter"}
    assert config["formatters"]["access"] == {"()": "serving.log_format.JsonFormatter"}
    assert "()" not in str(log_config("text")["formatters"]["default"].get("()", ""))
