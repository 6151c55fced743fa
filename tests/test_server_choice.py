"""Which ASGI server `serve` runs: uvicorn for one worker, granian for several, overridable."""

from __future__ import annotations

import pytest

from models.errors import ConfigError
from serving.server import DEFAULT_SERVER, SERVER_ENV, WORKERS_SERVER, _server


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(SERVER_ENV, raising=False)


def test_one_worker_runs_uvicorn_several_run_granian() -> None:
    # One worker keeps uvicorn whatever the state backend: it carries the request-head deadline
    # and served more requests than one granian worker in `bench replicas`.
    assert _server(None, several_workers=False) == DEFAULT_SERVER == "uvicorn"
    assert _server(None, several_workers=True) == WORKERS_SERVER == "granian"


@pytest.mark.parametrize("several", [False, True])
def test_flag_beats_environment_beats_default(monkeypatch, several: bool) -> None:
    monkeypatch.setenv(SERVER_ENV, "granian")
    assert _server(None, several_workers=several) == "granian"
    assert _server("uvicorn", several_workers=several) == "uvicorn"


def test_unknown_server_names_the_field() -> None:
    with pytest.raises(ConfigError) as err:
        _server("gunicorn", several_workers=False)
    assert err.value.field == "server"
    assert "unknown ASGI server 'gunicorn'" in str(err.value)
    assert "uvicorn, granian" in str(err.value)
