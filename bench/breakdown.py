"""Where a /route request's time goes: the ASGI app called in-process, no server, no sockets.

`bench/http.py` measures the service end to end; this explains its /route ÷ no-op ratio by
timing, on the same real prompts and interleaved round by round (medians per item over the
rounds, then the median over items):

- ``noop_get``: GET /healthz, the HTTP benchmark's no-op (through FastAPI's router);
- ``noop_post``: a POST carrying the same JSON body to an endpoint with /route's signature (the
  validated `RouteRequest` and the service-state dependency) that does nothing, through FastAPI's
  router — added to this benchmark's own app instance only, never to the product;
- ``route``: POST /route, as served: by `serving.hot_path`, ahead of FastAPI's router;
- ``route_fastapi``: POST /route through FastAPI's router and dependency solving instead (what
  the service did before the hot path; selected by an identity dependency override);
- ``pipeline``: /route's own work called directly in a loop — decoding, validation,
  `build_query` (limits, normalisation), `pipeline.route` (the eight stages, pending store,
  metrics) and rendering the answer;
- ``features`` and ``head``: the learned router's two steps inside it.

``route − pipeline`` is what serving a /route request costs beyond its own work (middleware,
the hot path's plumbing; caches colder than in the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
from fastapi import Body
from fastapi.responses import Response

from bench._common import real_prompts

# At module level, not inside `_app`: FastAPI resolves the no-op endpoint's (postponed)
# annotations in this module's namespace.
from serving.app import create_app
from serving.config import load_settings
from serving.deps import PipelineDep, get_service
from serving.json_body import loads
from serving.routes.route import build_query
from serving.schemas import RouteRequest

__all__ = ["run"]


async def _call(app: Any, method: str, path: str, body: bytes = b"") -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


def _app(artifact: Path) -> Any:
    app = create_app(load_settings(None, artifact=str(artifact)))

    @app.post("/__bench_noop", include_in_schema=False)
    async def noop_post(body: Annotated[RouteRequest, Body()], pipeline: PipelineDep) -> Response:
        return Response(b"{}", media_type="application/json")

    return app


@contextlib.contextmanager
def _through_fastapi(app: Any, on: bool) -> Iterator[None]:
    """While open (and `on`), FastAPI's router serves /route: the hot path steps aside whenever
    a dependency is overridden, and this override changes nothing else."""
    if on:
        app.dependency_overrides[get_service] = get_service
    try:
        yield
    finally:
        app.dependency_overrides.clear()


async def _measure(artifact: Path, bodies: list[bytes], rounds: int) -> dict[str, np.ndarray]:
    app = _app(artifact)
    n = len(bodies)
    names = ("noop_get", "noop_post", "route", "route_fastapi", "pipeline", "features", "head")
    times = {name: np.empty((rounds, n), dtype=np.int64) for name in names}
    clock = time.perf_counter_ns
    async with app.router.lifespan_context(app):
        pipeline = app.state.service.pipeline
        router = pipeline.models.current.router
        head = router.heads[router.default_strategy]
        limits = pipeline.settings.limits
        queries = [build_query(RouteRequest.model_validate_json(b), limits) for b in bodies]
        for b in bodies:  # warm-up, untimed; every status checked once
            for method, path in (
                ("GET", "/healthz"),
                ("POST", "/__bench_noop"),
                ("POST", "/route"),
                ("POST", "/route (FastAPI)"),
            ):
                with _through_fastapi(app, path.endswith("(FastAPI)")):
                    status = await _call(
                        app, method, path.split()[0], b if method == "POST" else b""
                    )
                if status != 200:
                    raise RuntimeError(f"{method} {path} answered {status}")
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                row = times[name][r]
                for i, b in enumerate(bodies):
                    if name == "noop_get":
                        t0 = clock()
                        await _call(app, "GET", "/healthz")
                    elif name == "noop_post":
                        t0 = clock()
                        await _call(app, "POST", "/__bench_noop", b)
                    elif name == "route":
                        t0 = clock()
                        await _call(app, "POST", "/route", b)
                    elif name == "route_fastapi":
                        with _through_fastapi(app, True):
                            t0 = clock()
                            await _call(app, "POST", "/route", b)
                    elif name == "pipeline":
                        t0 = clock()
                        body = RouteRequest.model_validate(loads(b), from_attributes=True)
                        query = build_query(body, limits)
                        orjson.dumps((await pipeline.route(query)).to_response())
                    elif name == "features":
                        t0 = clock()
                        router.featurizer.transform_one(queries[i].prompt)
                    else:
                        feats = router.featurizer.transform_one(queries[i].prompt)
                        t0 = clock()
                        head.logits_one(*feats, router.n_dense)
                    row[i] = clock() - t0
    return times


def run(artifact: str | Path, *, n_prompts: int = 300, rounds: int = 5, seed: int = 0) -> dict:
    """Medians (µs) of each measurement over `n_prompts` real prompts × `rounds`."""
    bodies = [
        json.dumps({"prompt": p.text}).encode() for _, p in real_prompts(n_prompts, seed=seed)
    ]
    times = asyncio.run(_measure(Path(artifact), bodies, rounds))
    us = {
        name: round(float(np.median(np.median(t, axis=0))) / 1000, 1) for name, t in times.items()
    }
    return {
        "params": {"n_prompts": len(bodies), "rounds": rounds, "seed": seed},
        "median_us": us,
        "route_beyond_pipeline_us": round(us["route"] - us["pipeline"], 1),
        "route_over_noop_get": round(us["route"] / us["noop_get"], 2) if us["noop_get"] else None,
        "route_fastapi_over_route": round(us["route_fastapi"] / us["route"], 2)
        if us["route"]
        else None,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "targets": [],
    }
