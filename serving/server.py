"""`promptroute serve`: settings → loaded state → an ASGI server, with a graceful shutdown.

Everything that can be wrong with the configuration or the artifact is found before the server
starts, and reported as one line with exit code 2, like the rest of the CLI. One worker runs on
uvicorn (its HTTP protocol carries the request-head deadline of `serving.read_deadlines`),
several on granian; ``--server`` picks either. With several workers, or
granian, each worker process builds its app from `worker_app` and the settings this process
validated; several workers need the shared state backend (Redis).
"""

from __future__ import annotations

import asyncio
import inspect
import logging.config
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn

    from serving.config import Settings

__all__ = ["DEFAULT_SERVER", "SERVERS", "serve", "uvicorn_config", "worker_app"]

_GRACEFUL_SHUTDOWN_SECONDS = 10
_WORKER_SETTINGS = "PROMPTROUTE__WORKER_SETTINGS"  # internal: serve() → its worker processes
_WORKER_STARTUP_SECONDS = 120

SERVERS = ("uvicorn", "granian")
SERVER_ENV = "PROMPTROUTE_SERVER"
# One worker (state in memory or in Redis): uvicorn, whose protocol enforces the request-head
# deadline (serving.read_deadlines) and which served more /route requests than one granian worker
# on a quiet machine (1.16x in memory, 1.18x with Redis). Several workers: granian, whose second
# worker added 1.57x where uvicorn's added 1.24x (`python -m bench replicas`, README "Several
# workers and replicas"). --server or PROMPTROUTE_SERVER overrides either.
DEFAULT_SERVER = "uvicorn"
WORKERS_SERVER = "granian"


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
    config : a YAML config file (PROMPTROUTE_CONFIG, else defaults, when None); the
        PROMPTROUTE_* variables of `serving.environment` override it, the arguments override both
    model : an artifact folder, overriding the config's `artifact`; with neither, the bundled
        default model
    host, port, workers : override the config's (and PROMPTROUTE_HOST/PORT/WORKERS)
    default_model : called for the default model's folder when neither names an artifact (the
        CLI passes one that trains it from the bundled data the first time)
    server : "uvicorn" or "granian" (default: $PROMPTROUTE_SERVER, else `DEFAULT_SERVER` for one
        worker and `WORKERS_SERVER` for several)

    More than one worker needs ``state: {backend: redis}`` and gives each worker its own
    decision-log file; /metrics adds the workers' figures up.
    """
    import uvicorn

    from models.errors import PromptrouteError
    from serving.app import create_app
    from serving.config import load_settings
    from serving.environment import read_environment
    from serving.service import Service

    flags = {
        key: value
        for key, value in (
            ("artifact", model),
            ("host", host),
            ("port", port),
            ("workers", workers),
        )
        if value is not None
    }
    try:
        env = read_environment()
        config = config if config is not None else env.config
        settings = load_settings(config, **{**env.overrides(), **flags})
        server = _server(server, several_workers=settings.workers > 1)
        if settings.workers > 1:
            settings = _for_workers(settings, settings.workers)
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
    from serving.log_format import log_config as build_log_config

    log_config = build_log_config(settings.log_format)
    logging.config.dictConfig(log_config)
    log = logging.getLogger("promptroute.server")
    log.info(
        "serving %s (router %s): %d routable models",
        service.models.artifact_path,
        service.models.current.version,
        len(service.models.current.universe),
    )
    options = {**_uvicorn_options(settings), "log_config": log_config}
    if settings.workers > 1 or server != "uvicorn":
        # Each worker process loads its own service from these (already checked) settings.
        asyncio.run(service.close())
        del service
        return _serve_workers(settings, server, options)
    app = create_app(settings, service=service)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    try:
        server.run()
    finally:
        asyncio.run(
            service.close()
        )  # no-op after a normal lifespan shutdown; drains if startup was cut short
    return 0 if server.started else 1


def _server(server: str | None, *, several_workers: bool) -> str:
    from models.errors import ConfigError

    chosen = (
        server
        or os.environ.get(SERVER_ENV)
        or (WORKERS_SERVER if several_workers else DEFAULT_SERVER)
    )
    if chosen not in SERVERS:
        raise ConfigError(
            "server", f"unknown ASGI server {chosen[:20]!r}; known: {', '.join(SERVERS)}"
        )
    return chosen


def _for_workers(settings: Settings, workers: int) -> Settings:
    """`settings` for several workers: shared state required, one decision log per process."""
    from models.errors import ConfigError

    if settings.state.backend != "redis":
        raise ConfigError(
            "state.backend",
            f"{workers} workers need the shared state backend: set state: {{backend: redis, "
            "url: redis://HOST:6379/0} in the config (with state in memory each worker would "
            "keep its own breakers, statistics and pending decisions, and feedback would miss)",
        )
    log = settings.decision_log.model_copy(update={"per_process": True})
    return settings.model_copy(update={"decision_log": log})


def _serve_workers(settings: Settings, server: str, options: dict[str, Any]) -> int:
    """Run `settings.workers` processes of `worker_app` under `server`; /metrics adds them up."""
    import shutil
    import tempfile

    import uvicorn

    workers = settings.workers
    os.environ[_WORKER_SETTINGS] = settings.model_dump_json()
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
                log_dictconfig=options["log_config"],
                workers_kill_timeout=_GRACEFUL_SHUTDOWN_SECONDS,
            ).serve()
        else:
            # The header deadline's protocol by import string: a class made here cannot reach
            # the worker processes; each sets its deadline from the settings (worker_app).
            options = {**options, "http": "serving.read_deadlines:HeaderDeadlineProtocol"}
            if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
                # A worker loads the model before it answers uvicorn's ping; the default 5 s had
                # busy 2-core machines kill and restart workers that were still loading.
                options["timeout_worker_healthcheck"] = _WORKER_STARTUP_SECONDS
            uvicorn.run("serving.server:worker_app", factory=True, workers=workers, **options)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration `serve` runs `app` with in one process (tests run the same).

    Its HTTP protocol closes connections whose request head does not arrive within
    `limits.header_timeout_seconds` (`serving.read_deadlines`); `overrides` go to uvicorn.
    """
    import uvicorn

    return uvicorn.Config(app, **{**_uvicorn_options(settings), **overrides})


def _uvicorn_options(settings: Settings) -> dict[str, Any]:
    from serving.read_deadlines import header_protocol

    return {
        "host": settings.host,
        "port": settings.port,
        "lifespan": "on",
        # Not uvloop even when installed: under saturation it served some connections far
        # later than others (p99 820 ms vs 50 ms at concurrency 64, bench/http.py).
        "loop": "asyncio",
        "http": header_protocol(settings.limits.header_timeout_seconds),
        "timeout_graceful_shutdown": _GRACEFUL_SHUTDOWN_SECONDS,
        "access_log": settings.access_log,
    }


def worker_app() -> Any:
    """The app of one worker process (``workers > 1``), from the settings `serve` checked."""
    from serving.app import create_app
    from serving.config import Settings
    from serving.read_deadlines import HeaderDeadlineProtocol

    settings = Settings.model_validate_json(os.environ[_WORKER_SETTINGS], strict=False)
    HeaderDeadlineProtocol.header_timeout = settings.limits.header_timeout_seconds
    return create_app(settings)
