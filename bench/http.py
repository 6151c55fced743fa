"""HTTP throughput and latency of POST /route against a no-op endpoint of the same server.

A real server (`promptroute serve --model ART`: one worker of the default ASGI server) runs on a free
127.0.0.1 port. A load generator in a separate process — `wrk` (one thread, `wrk_load.lua`)
when it is installed, else `bench._load` (asyncio + httpx with connection reuse) — drives it at
each concurrency for `rounds` slices of `duration` seconds per endpoint, alternating
/route and GET /healthz slice by slice (route first in even rounds, healthz first in odd ones).
Requests/s and latency percentiles are medians over the rounds; /route's throughput as a
fraction of the no-op's is the median of the per-round ratios, and so is the ratio of their
p50 latencies. Every /route body is a real prompt from the bundled data. Then the same at
concurrency 1 with 100 KB prompts (real prompts concatenated, `bench.long_inputs.build_text`),
again interleaved with /healthz. Any error response or socket error is counted and reported; the
load average is recorded before and after, since the machine may be shared.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import REPO, Server, Target, child_env, real_prompts
from bench.long_inputs import build_text
from serving.server import DEFAULT_SERVER

__all__ = ["run", "run_load", "write_bodies"]

CONCURRENCIES = (1, 8, 64)
FRACTION_TARGET = 0.70
P50_C1_TARGET = 1.5
P99_C8_TARGET_MS = 5.0
LONG_CHARS = 100 * 1024
LONG_P50_TARGET = 5.0
_LUA = Path(__file__).with_name("wrk_load.lua")


def _client(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice not in ("wrk", "python"):
        raise ValueError(f"client: must be auto, wrk or python, got {choice!r}")
    if choice == "wrk" and not shutil.which("wrk"):
        raise ValueError("client: wrk is not installed (apt-get install wrk)")
    return choice


def run_load(
    client: str,
    url: str,
    *,
    concurrency: int,
    bodies: Path | None = None,
    duration: float | None = None,
    count: int | None = None,
) -> dict[str, Any]:
    """One load-generator run in its own process; the JSON line it printed, as a dict."""
    if client == "wrk":
        if count is not None or duration is None:
            raise ValueError("wrk runs for a duration, not a request count")
        cmd = [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "10s",
            "-s",
            str(_LUA),
            url,
        ]
        if bodies is not None:
            cmd += ["--", str(bodies)]
    else:
        cmd = [sys.executable, "-m", "bench._load", url, "--concurrency", str(concurrency)]
        cmd += ["--duration", str(duration)] if count is None else ["--count", str(count)]
        if bodies is not None:
            cmd += ["--bodies", str(bodies)]
    done = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env=child_env(), timeout=600
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    seconds = run["duration_us"] / 1e6
    return {
        "requests": run["requests"],
        "rps": round(run["requests"] / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(run["latency_us"]["p50"] / 1000, 3),
        "p90_ms": round(run["latency_us"]["p90"] / 1000, 3),
        "p99_ms": round(run["latency_us"]["p99"] / 1000, 3),
        "errors": sum(run["errors"].values()),
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return round(float(np.median([r[key] for r in rows])), 3)


def write_bodies(path: Path, n: int, seed: int = 0) -> Path:
    """`n` /route bodies of real prompts, one JSON object per line."""
    with path.open("w", encoding="utf-8") as f:
        for _, p in real_prompts(n, seed=seed):
            f.write(json.dumps({"prompt": p.text}) + "\n")
    return path


def write_long_bodies(path: Path, n: int, chars: int, seed: int = 0) -> Path:
    """`n` /route bodies, each a different prompt of exactly `chars` characters."""
    pool = [p.text for _, p in real_prompts(3000, seed=seed)]
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": build_text(pool, chars, rng)}) + "\n")
    return path


def _compare(
    tool: str,
    route_url: str,
    noop_url: str,
    bodies: Path,
    *,
    concurrency: int,
    duration: float,
    rounds: int,
    warmup: float,
) -> dict[str, Any]:
    """/route and the no-op at one concurrency, slice by slice, alternating which goes first."""
    if warmup > 0:
        run_load(tool, route_url, concurrency=concurrency, bodies=bodies, duration=warmup)
    rows: dict[str, list[dict[str, Any]]] = {"route": [], "noop": []}
    for r in range(rounds):
        for name in ("route", "noop") if r % 2 == 0 else ("noop", "route"):
            url, b = (route_url, bodies) if name == "route" else (noop_url, None)
            measured = run_load(tool, url, concurrency=concurrency, bodies=b, duration=duration)
            rows[name].append(_summary(measured))
    pairs = list(zip(rows["route"], rows["noop"], strict=True))
    fractions = [a["rps"] / b["rps"] if b["rps"] else 0.0 for a, b in pairs]
    slowdowns = [a["p50_ms"] / b["p50_ms"] if b["p50_ms"] else 0.0 for a, b in pairs]
    row: dict[str, Any] = {
        name: {
            "rps": _median(rs, "rps"),
            "p50_ms": _median(rs, "p50_ms"),
            "p99_ms": _median(rs, "p99_ms"),
            "errors": sum(x["errors"] for x in rs),
            "rounds": rs,
        }
        for name, rs in rows.items()
    }
    row["route_fraction_of_noop"] = round(float(np.median(fractions)), 3)
    row["route_p50_over_noop_p50"] = round(float(np.median(slowdowns)), 3)
    return row


def _load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(
    artifact: str | Path,
    *,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
    duration: float = 2.0,
    rounds: int = 3,
    warmup: float = 1.0,
    client: str = "auto",
    n_bodies: int = 300,
    long_chars: int = LONG_CHARS,
    n_long_bodies: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """Requests/s and latency of /route and of GET /healthz, interleaved, per concurrency; then
    /route with `long_chars`-character prompts against /healthz at concurrency 1."""
    tool = _client(client)
    load_before = _load_avg()
    with tempfile.TemporaryDirectory(prefix="promptroute-bench-") as tmp:
        bodies = write_bodies(Path(tmp) / "bodies.jsonl", n_bodies, seed)
        long_bodies = write_long_bodies(Path(tmp) / "long.jsonl", n_long_bodies, long_chars, seed)
        first = json.loads(bodies.read_text().splitlines()[0])
        with Server(Path(artifact)) as server:
            status, answer = server.post_json("/route", first)
            if status != 200:
                raise RuntimeError(f"POST /route answered {status}: {answer}")
            route_url, noop_url = f"{server.url}/route", f"{server.url}/healthz"
            runs = {"duration": duration, "rounds": rounds, "warmup": warmup}
            by_c = {
                str(c): _compare(tool, route_url, noop_url, bodies, concurrency=c, **runs)
                for c in concurrencies
            }
            long = _compare(tool, route_url, noop_url, long_bodies, concurrency=1, **runs)
            server_log = server.log_tail(600)
    result: dict[str, Any] = {
        "params": {
            "concurrencies": list(concurrencies),
            "duration_s": duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "client": tool,
            "n_bodies": n_bodies,
            "long_chars": long_chars,
            "n_long_bodies": n_long_bodies,
            "artifact": str(artifact),
        },
        "load_avg": {"before": load_before, "after": _load_avg()},
        "server": {
            "command": "promptroute serve --model ART --host 127.0.0.1 --port PORT",
            "note": f"one {DEFAULT_SERVER} worker, default settings (access log off)",
            "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
            "loop": "asyncio",  # serving/server.py pins it
            "log_tail": server_log,
        },
        "by_concurrency": by_c,
        "long_prompt_c1": long,
    }
    targets = []
    top = str(max(concurrencies))
    if top in by_c:
        frac = by_c[top]["route_fraction_of_noop"]
        at64 = max(concurrencies) >= 64
        targets.append(
            Target(
                f"/route throughput as a fraction of GET /healthz at concurrency {top}",
                f"≥ {FRACTION_TARGET:.0%}" if at64 else "(target at 64)",
                f"{frac:.0%} ({by_c[top]['route']['rps']:.0f} vs {by_c[top]['noop']['rps']:.0f} req/s)",
                frac >= FRACTION_TARGET if at64 else None,
            ).to_dict()
        )
    if "1" in by_c:
        slow = by_c["1"]["route_p50_over_noop_p50"]
        targets.append(
            Target(
                "/route p50 ÷ GET /healthz p50 at concurrency 1",
                f"≤ {P50_C1_TARGET:g}",
                f"{slow:.2f} ({by_c['1']['route']['p50_ms']:.3f} vs "
                f"{by_c['1']['noop']['p50_ms']:.3f} ms)",
                slow <= P50_C1_TARGET,
            ).to_dict()
        )
    slow = long["route_p50_over_noop_p50"]
    targets.append(
        Target(
            f"/route p50 with {long_chars:,}-character prompts ÷ GET /healthz p50, concurrency 1",
            f"≤ {LONG_P50_TARGET:g}" if long_chars == LONG_CHARS else "(target at 100 KB)",
            f"{slow:.2f} ({long['route']['p50_ms']:.3f} vs {long['noop']['p50_ms']:.3f} ms)",
            slow <= LONG_P50_TARGET if long_chars == LONG_CHARS else None,
        ).to_dict()
    )
    if "8" in by_c:
        p99 = by_c["8"]["route"]["p99_ms"]
        targets.append(
            Target(
                "/route p99 at concurrency 8",
                f"≤ {P99_C8_TARGET_MS:g} ms",
                f"{p99:.2f} ms (no-op {by_c['8']['noop']['p99_ms']:.2f} ms)",
                p99 <= P99_C8_TARGET_MS,
            ).to_dict()
        )
    errors = sum(v[e]["errors"] for v in (*by_c.values(), long) for e in ("route", "noop"))
    targets.append(Target("error responses under load", "0", str(errors), errors == 0).to_dict())
    result["targets"] = targets
    return result
