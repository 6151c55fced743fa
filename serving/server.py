"""`promptroute serve`: settings → loaded state → uvicorn, with a graceful shutdown.

Everything that can be wrong with the configuration or the artifact is found before uvicorn
starts, and reported as one line with exit code 2, like the rest of the CLI.
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

__all__ = ["serve", "uvicorn_config", "worker_app"]

_GRACEFUL_SHUTDOWN_SECONDS = 10
_WORKER_SETTINGS = "PROMPTROUTE__WORKER_SETTINGS"  # internal: serve() → its worker processes
_WORKER_STARTUP_SECONDS = 120


def serve(
    config: str | Path | None = None,
    model: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    default_model: Callable[[], Path] | None = None,
    workers: int | None = None,
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
    if settings.workers > 1:
        # Each worker process loads its own service from these (already checked) settings.
        asyncio.run(service.close())
        log.warning(
            "%d workers: each keeps its own statistics, breakers, experiments and pending "
            "decisions; POST /feedback must reach the worker that routed (the /v1 gateway "
            "records outcomes itself)",
            settings.workers,
        )
        os.environ[_WORKER_SETTINGS] = settings.model_dump_json()
        # The header deadline's protocol by import string: a class made here cannot reach the
        # worker processes; each sets its deadline from the settings (worker_app).
        options["http"] = "serving.read_deadlines:HeaderDeadlineProtocol"
        if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
            # A worker loads the model before it answers uvicorn's ping; the default 5 s had
            # busy 2-core machines kill and restart workers that were still loading.
            options["timeout_worker_healthcheck"] = _WORKER_STARTUP_SECONDS
        uvicorn.run("serving.server:worker_app", factory=True, workers=settings.workers, **options)
        return 0
    app = create_app(settings, service=service)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    try:
        server.run()
    finally:
        asyncio.run(
            service.close()
        )  # no-op after a normal lifespan shutdown; drains if startup was cut short
    return 0 if server.started else 1


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

    settings = Settings.model_validate_json(os.environ[_WORKER_SETTINGS])
    HeaderDeadlineProtocol.header_timeout = settings.limits.header_timeout_seconds
    return create_app(settings)
