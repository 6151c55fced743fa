"""The FastAPI application factory: `create_app(settings)` → an app whose lifespan loads the model.

Nothing happens at import time or in `create_app` beyond wiring: the artifact is loaded and
verified, and every config reference checked, when the app starts (``with TestClient(app)``,
or uvicorn's startup). A failure there stops start-up with the error; the service never serves
half-configured. On shutdown, pending decisions are logged as unanswered and the log closed.

Middleware, outermost first: request metrics (so even a refused body is counted), the gateway's
access log (/v1 only), client keys (`serving.auth`: a guarded path without a valid key is refused
before its body is read), the body deadline (`serving.read_deadlines`: the whole body within
`limits.body_timeout_seconds`), the body-size limit (Content-Length checked up front, streamed
bytes counted as they arrive), then `serving.hot_path.HotPath`, which answers POST /route and
/feedback without FastAPI's routing and dependency solving (the caller's name from
`serving.auth.caller_of`) and checks other JSON bodies for repeated keys. The header deadline
is the server's: see `serving.server.uvicorn_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.access_log import GatewayAccessLog
from serving.auth import ClientAuth, ClientKeys
from serving.config import Settings
from serving.errors import BodyTooLarge, error_body, install_error_handlers
from serving.gateway import Gateway, Sleep, Upstreams
from serving.hot_path import HotPath
from serving.metrics import Metrics, RequestMetrics
from serving.read_deadlines import BodyDeadline
from serving.routes import api_router
from serving.routes import openai as openai_routes
from serving.routes.docs import install_docs
from serving.routes.ui import install_ui
from serving.service import Service

__all__ = ["create_app"]

_log = logging.getLogger("promptroute.app")

_DESCRIPTION = """\
Ask **which model should answer a prompt**: `POST /route` runs the decision pipeline (candidates,
capability, cost, latency, circuit breakers, static rules, experiments, the learned router) and
answers with the model, ranked fallbacks, scores and the reason. Report the outcome of the call
with `POST /feedback` so that latency, reliability, breakers and experiments learn from it, and
so the decision log becomes training data.
"""


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    environ: Mapping[str, str] | None = None,
    service: Service | None = None,
    expire_every_seconds: float = 30.0,
    sleep: Sleep = asyncio.sleep,
) -> FastAPI:
    """Build the app; the model is loaded when it starts.

    Parameters
    ----------
    settings : the validated configuration (defaults when None)
    clock, wall_clock : monotonic and unix time sources (fakes in tests)
    environ : where the admin key and upstream API key variables are read (``os.environ``
        when None)
    service : an already loaded service (``serve`` loads it before starting uvicorn, so
        that a bad artifact is a one-line error instead of a server traceback)
    expire_every_seconds : how often pending decisions past their age limit are logged and
        dropped, besides on every new decision
    sleep : how the /v1 gateway waits out an upstream's Retry-After (a fake in tests)
    """
    settings = settings if settings is not None else Settings()
    metrics = service.metrics if service is not None else Metrics(clock=wall_clock)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = service or Service.load(
            settings, clock=clock, wall_clock=wall_clock, metrics=metrics, environ=environ
        )
        try:  # the gateway's HTTP client: one per app, its connections pooled across requests
            upstreams = Upstreams.open(loaded.settings, os.environ if environ is None else environ)
        except BaseException:
            await loaded.close()
            raise
        app.state.service = loaded
        await loaded.start()
        app.state.gateway = Gateway(
            upstreams,
            loaded.settings.gateway,
            outcomes=loaded.outcomes,
            health=loaded.health,
            catalog=loaded.catalog,
            metrics=loaded.metrics,
            clock=loaded.clock,
            wall_clock=loaded.wall_clock,
            sleep=sleep,
        )
        expiry = asyncio.create_task(_expire_periodically(loaded, expire_every_seconds))
        # What is loaded by now lives as long as the app: frozen out of the cyclic collector's
        # sight, a full collection no longer walks the model, numpy, scikit-learn and FastAPI.
        # Walking them took 75 ms here, on whichever /route request triggered it.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # a process that builds many apps (tests) can then collect old ones
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
            app.state.gateway = None
            await upstreams.aclose()
            app.state.service = None
            await loaded.close()

    app = FastAPI(
        title="promptroute",
        summary="A learned LLM router: which model should answer this prompt?",
        description=_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        telemetry=_telemetry(),
        docs_url=None,  # served from installed files instead of a CDN (serving/routes/docs.py)
        redoc_url=None,
    )
    app.state.metrics = metrics
    app.state.service = None
    app.state.gateway = None
    install_error_handlers(app)
    app.include_router(api_router)
    app.include_router(openai_routes.router)
    install_docs(app)
    install_ui(app)
    app.add_middleware(HotPath, owner=app)  # innermost: inside the body limit and the metrics
    app.add_middleware(_BodyLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(BodyDeadline, seconds=settings.limits.body_timeout_seconds)

    def client_keys() -> ClientKeys | None:
        return app.state.service.clients if app.state.service is not None else None

    app.add_middleware(ClientAuth, keys=client_keys)
    if settings.gateway_access_log:
        app.add_middleware(GatewayAccessLog)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _telemetry() -> TelemetryConfig:
    """FastAPI's OpenTelemetry signals: each on only if its provider is configured by now.

    Left to itself, FastAPI asks the OpenTelemetry API on every request whether a tracer, meter
    or logger provider has been set since (three ``os.environ`` reads per request when none
    is). A deployment that uses OpenTelemetry configures it before the app is built
    (``opentelemetry-instrument``, or code that runs before `create_app`); it is decided here,
    once.
    """
    from opentelemetry import _logs, metrics, trace

    providers = {
        "tracing": trace.get_tracer_provider(),
        "metrics": metrics.get_meter_provider(),
        "logs": _logs.get_logger_provider(),
    }
    # The API's stand-ins until a provider is set; FastAPI tells them apart the same way.
    deferred = {"ProxyTracerProvider", "_ProxyMeterProvider", "ProxyLoggerProvider"}
    on = {name: type(p).__name__ not in deferred for name, p in providers.items()}
    return TelemetryConfig(tracing=on["tracing"], metrics=on["metrics"], logs=on["logs"])


async def _expire_periodically(service: Service, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        try:
            service.book.expire()
        except Exception:  # keep the task alive: the next put() expires them anyway
            _log.exception("expiring pending decisions failed")


class _BodyLimit:
    """Refuse request bodies over `max_bytes` with 413, by header and by bytes received."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await self._refuse(scope, receive, send)
                return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so the route's body reader hands it to the handlers.
                    raise BodyTooLarge(limit)
            return message

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watch)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(
            "body_too_large", f"request body exceeds the limit of {self.max_bytes} bytes"
        )
        await JSONResponse(body, status_code=413)(scope, receive, send)
