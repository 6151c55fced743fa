"""`promptroute serve`: settings → loaded state → an ASGI server, with a graceful shutdown.

Everything that can be wrong with the configuration or the artifact is found before the server
starts, and reported as one line with exit code 2, like the rest of the CLI. The server is
granian by default (measured: see `DEFAULT_SERVER`), uvicorn on request; with granian, or with
several workers, each worker process builds its app from `worker_app` and the settings this
process validated.
"""

from __future__ import annotations

import asyncio
import copy
import logging.config
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS_ENV", "WORKERS_ENV", "serve", "worker_app"]

WORKERS_ENV = "PROMPTROUTE_WORKERS"
SETTINGS_ENV = "PROMPTROUTE_WORKER_SETTINGS"  # the validated settings, as JSON, for each worker

_GRACEFUL_SHUTDOWN_SECONDS = 10


SERVERS = ("granian", "uvicorn")
SERVER_ENV = "PROMPTROUTE_SERVER"
# Measured (python -m bench replicas, README "Several workers and replicas"): granian served
# 1.2x uvicorn's /route requests/s with one worker, and 2 workers doubled it, where uvicorn's
# second worker added nothing.
DEFAULT_SERVER = "granian"


def serve(
    config: str | Path | None = None,
    model: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    default_model: Callable[[], Path] | None = None,
    workers: int | None = None,
    server: str | None = None,
) -> int:
    """Run the HTTP service until interrupted; returns the process exit code.

    Parameters
    ----------
    config : a YAML config file (defaults when None)
    model : an artifact folder, overriding the config's `artifact`; with neither, the bundled
        default model
    host, port : override the config's
    default_model : called for the default model's folder when neither names an artifact (the
        CLI passes one that trains it from the bundled data the first time)
    workers : worker processes (default: $PROMPTROUTE_WORKERS, else 1); more than one needs
        ``state: {backend: redis}``, and gives each worker its own decision-log file
    server : the ASGI server, "uvicorn" or "granian" (default: $PROMPTROUTE_SERVER, else
        `DEFAULT_SERVER`; see the README for the measurement behind the choice)
    """
    import uvicorn

    from models.errors import PromptrouteError
    from serving.app import create_app
    from serving.config import load_settings
    from serving.service import Service

    overrides = {
        key: value
        for key, value in (("artifact", model), ("host", host), ("port", port))
        if value is not None
    }
    try:
        workers = _workers(workers)
        server = _server(server)
        settings = load_settings(config, **overrides)
        if workers > 1:
            settings = _for_workers(settings, workers)
        if settings.artifact is None and default_model is not None:
            artifact = default_model()
            settings = settings.model_copy(update={"artifact": str(artifact)})
        service = Service.load(settings)
        # Upstream API keys are read again in the lifespan; checking them here turns a missing
        # key into this one-line error instead of a failed uvicorn start-up.
        from serving.gateway import resolve_upstreams

        resolve_upstreams(settings, os.environ)
    except PromptrouteError as exc:
        print(f"promptroute: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the decision log's folder cannot be created
        print(f"promptroute: error: {exc}", file=sys.stderr)
        return 2
    # Configured only now, so that a refused start leaves the process's logging untouched.
    log_config = _log_config()
    logging.config.dictConfig(log_config)
    logging.getLogger("promptroute.server").info(
        "serving %s (router %s): %d routable models",
        service.models.artifact_path,
        service.models.current.version,
        len(service.models.current.universe),
    )
    if workers > 1 or server != "uvicorn":
        # Each worker loads its own service; this one only proved that the config loads.
        asyncio.run(service.close())
        del service
        return _serve_workers(settings, workers, server, log_config)
    app = create_app(settings, service=service)
    server_ = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            lifespan="on",
            # Not uvloop even when installed: under saturation it served some connections far
            # later than others (p99 820 ms vs 50 ms at concurrency 64, bench/http.py).
            loop="asyncio",
            timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
            log_config=log_config,
            access_log=settings.access_log,
        )
    )
    try:
        server_.run()
    finally:
        asyncio.run(
            service.close()
        )  # no-op after a normal lifespan shutdown; drains if startup was cut short
    return 0 if server_.started else 1


def _workers(workers: int | None) -> int:
    from models.errors import ConfigError

    if workers is None:
        raw = os.environ.get(WORKERS_ENV, "1")
        if not raw.strip().isdigit():
            raise ConfigError(WORKERS_ENV, f"must be a whole number >= 1, got {raw[:20]!r}")
        workers = int(raw)
    if workers < 1:
        raise ConfigError("workers", f"must be >= 1, got {workers}")
    return workers


def _server(server: str | None) -> str:
    from models.errors import ConfigError

    chosen = server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
    if chosen not in SERVERS:
        raise ConfigError("server", f"unknown ASGI server {chosen[:20]!r}; known: granian, uvicorn")
    return chosen


def _for_workers(settings: Any, workers: int) -> Any:
    """`settings` for several workers: shared state required, one decision log per process."""
    from models.errors import ConfigError

    if settings.state.backend != "redis":
        raise ConfigError(
            "state.backend",
            f"--workers {workers} needs the shared state backend: set state: {{backend: redis, "
            "url: redis://HOST:6379/0} in the config (with state in memory each worker would "
            "keep its own breakers, statistics and pending decisions, and feedback would miss)",
        )
    log = settings.decision_log.model_copy(update={"per_process": True})
    return settings.model_copy(update={"decision_log": log})


def _serve_workers(settings: Any, workers: int, server: str, log_config: dict[str, Any]) -> int:
    """Run `workers` processes of `worker_app` under `server`; /metrics adds them up."""
    import shutil
    import tempfile

    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    metrics_dir = None
    if workers > 1:
        # prometheus-client's multiprocess mode: each worker writes its samples to files here
        # and /metrics, in whichever worker answers, adds them all up. Set before any worker
        # imports prometheus_client.
        metrics_dir = tempfile.mkdtemp(prefix="promptroute-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if server == "granian":
            from granian.constants import Interfaces, Loops
            from granian.server import Server

            Server(
                "serving.server:worker_app",
                address=settings.host,
                port=settings.port,
                interface=Interfaces.ASGI,
                workers=workers,
                loop=Loops.asyncio,
                factory=True,
                log_access=settings.access_log,
                log_dictconfig=log_config,
                workers_kill_timeout=_GRACEFUL_SHUTDOWN_SECONDS,
            ).serve()
        else:
            import uvicorn

            uvicorn.run(
                "serving.server:worker_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=workers,
                lifespan="on",
                loop="asyncio",
                timeout_graceful_shutdown=_GRACEFUL_SHUTDOWN_SECONDS,
                log_config=log_config,
                access_log=settings.access_log,
            )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, plus the service's own "promptroute.*" loggers on the same handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("promptroute", "_granian"):  # _granian: granian's own start/stop messages
        config["loggers"][name] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def worker_app() -> Any:
    """The app of one worker process (an ASGI factory): the settings `serve` validated and
    put in the environment. Each worker loads the artifact itself in its lifespan."""
    from serving.app import create_app
    from serving.config import Settings

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV], strict=False)
    return create_app(settings)
