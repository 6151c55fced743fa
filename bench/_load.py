"""A small HTTP load generator: `concurrency` asyncio workers over reused connections.

Run as its own process (``python -m bench._load URL [--bodies FILE] ...``) so that the client
does not share an interpreter with the server. With ``--bodies`` it POSTs those JSON bodies
(one per line) in turn; otherwise it GETs the URL. It stops after ``--duration`` seconds or
``--count`` requests and prints one JSON line shaped like `wrk_load.lua`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx
import numpy as np

__all__ = ["load", "main"]


async def load(
    url: str,
    *,
    bodies: list[bytes] | None,
    concurrency: int,
    duration: float | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """Drive `url` until `duration` seconds pass or `count` requests are sent."""
    if (duration is None) == (count is None):
        raise ValueError("give exactly one of duration or count")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[int] = []
    errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}
    issued = 0
    headers = {"content-type": "application/json"}
    clock = time.perf_counter_ns

    async with httpx.AsyncClient(limits=limits, timeout=30.0) as client:
        start = clock()
        deadline = start + int((duration or 0) * 1e9)

        async def worker(offset: int) -> None:
            nonlocal issued
            i = offset
            while True:
                if count is not None:
                    if issued >= count:
                        return
                    issued += 1
                elif clock() >= deadline:
                    return
                t0 = clock()
                try:
                    if bodies:
                        r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
                    else:
                        r = await client.get(url)
                except httpx.TimeoutException:
                    errors["timeout"] += 1
                    continue
                except httpx.ConnectError:
                    errors["connect"] += 1
                    continue
                except httpx.HTTPError:
                    errors["read"] += 1
                    continue
                latencies.append(clock() - t0)
                if not 200 <= r.status_code < 400:
                    errors["status"] += 1
                i += 1

        await asyncio.gather(*(worker(k * 7919) for k in range(concurrency)))
        elapsed = clock() - start
    lat = np.asarray(latencies, dtype=np.float64) / 1000.0
    pct = np.percentile(lat, [50, 90, 99]) if lat.size else [0.0, 0.0, 0.0]
    return {
        "requests": len(latencies),
        "duration_us": elapsed // 1000,
        "errors": errors,
        "latency_us": {
            "p50": int(pct[0]),
            "p90": int(pct[1]),
            "p99": int(pct[2]),
            "max": int(lat.max()) if lat.size else 0,
            "mean": round(float(lat.mean()), 1) if lat.size else 0.0,
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._load", description=__doc__)
    p.add_argument("url")
    p.add_argument("--bodies", help="file of JSON bodies to POST, one per line")
    p.add_argument("--concurrency", type=int, default=1)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--duration", type=float)
    g.add_argument("--count", type=int)
    a = p.parse_args(argv)
    bodies = None
    if a.bodies:
        with open(a.bodies, "rb") as f:
            bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    result = asyncio.run(
        load(a.url, bodies=bodies, concurrency=a.concurrency, duration=a.duration, count=a.count)
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
