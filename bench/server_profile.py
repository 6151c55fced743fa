"""Where a served /route request's wall time goes: the server under cProfile, driven over HTTP.

The app runs in uvicorn in a child process (as `promptroute serve` runs it: httptools, asyncio)
with cProfile around the whole event loop; the load generator (`bench.http.run_load`, wrk when
installed) drives /route at one concurrency with real prompts, then with 100 KB prompts. Wall
time per request (the run's duration over its requests, at concurrency 1 the mean latency) is
split into the parts that explain the HTTP benchmark's ratios, as shares of it: the decision
(`Pipeline.decide`), the hot path's decoding and validation, the socket writes of the response
(which, on a loaded machine, include the client's turn on the CPU that the write wakes up), and
waiting in epoll. Profiler overhead inflates Python-heavy parts; read the shares, not the times.
"""

from __future__ import annotations

import json
import pstats
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench._common import REPO, child_env, free_port
from bench.http import LONG_CHARS, run_load, write_bodies, write_long_bodies

__all__ = ["run"]

_SERVER = """
import cProfile, sys
import uvicorn
from serving.app import create_app
from serving.config import load_settings
app = create_app(load_settings(None, artifact=sys.argv[1]))
profile = cProfile.Profile()
started = []

async def profiled(scope, receive, send):
    # From the first /route request on: start-up (loading, the lifespan's collection) is not
    # what is being explained.
    if not started and scope["type"] == "http" and scope["path"] == "/route":
        started.append(True)
        profile.enable()
    await app(scope, receive, send)

server = uvicorn.Server(uvicorn.Config(profiled, host="127.0.0.1", port=int(sys.argv[2]),
    lifespan="on", loop="asyncio", access_log=False, log_level="warning"))
try:
    server.run()
finally:
    profile.disable()
    profile.dump_stats(sys.argv[3])
"""

# (label, how pstats names the function: file suffix and function name)
_PARTS = (
    ("decision (Pipeline.decide)", "serving/pipeline.py", "decide"),
    ("of which features (transform_one)", "features/extractor.py", "transform_one"),
    ("decoding the body (json_body.decode_body)", "serving/json_body.py", "decode_body"),
    ("validation (pydantic)", "serving/hot_path.py", "_validated"),
    ("the hot path in all (HotPath._serve)", "serving/hot_path.py", "_serve"),
    ("socket writes of responses", "~", "<method 'send' of '_socket.socket' objects>"),
    ("waiting for events (epoll)", "~", "<method 'poll' of 'select.epoll' objects>"),
)


def _profile(artifact: Path, bodies: Path, concurrency: int, duration: float, tool: str) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="promptroute-profile-") as tmp:
        stats_path = Path(tmp) / "server.prof"
        cmd = [sys.executable, "-c", _SERVER, str(artifact), str(port), str(stats_path)]
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the profiled server did not start") from None
                    time.sleep(0.2)
            url = f"http://127.0.0.1:{port}/route"
            measured = run_load(
                tool, url, concurrency=concurrency, bodies=bodies, duration=duration
            )
        finally:
            proc.send_signal(2)  # SIGINT: uvicorn shuts down and the profile is written
            proc.wait(timeout=60)
        stats = pstats.Stats(str(stats_path))
    n = max(measured["requests"], 1)
    table: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    # The server's wall time per request while loaded (start-up excluded): at concurrency 1,
    # the time between one request's arrival and the next one's.
    wall = measured["duration_us"] / 1e6 / n * concurrency
    parts = {}
    for label, file_suffix, name in _PARTS:
        cum = sum(
            ct
            for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in table.items()
            if func == name and path.endswith(file_suffix)
        )
        parts[label] = {
            "ms_per_request": round(cum / n * 1000, 3),
            "share": round(cum / n / wall, 3),
        }
    top = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
    return {
        "requests": measured["requests"],
        "p50_ms": round(measured["latency_us"]["p50"] / 1000, 3),
        "wall_ms_per_request": round(wall * 1000, 3),
        "parts": parts,
        "top_by_own_time": [
            {
                "function": f"{Path(path).name}:{line}({func})",
                "ms_per_request": round(tt / n * 1000, 3),
            }
            for (path, line, func), (_cc, _nc, tt, _ct, _callers) in top
        ],
    }


def run(
    artifact: str | Path,
    *,
    concurrency: int = 1,
    duration: float = 5.0,
    long_chars: int = LONG_CHARS,
    client: str = "auto",
) -> dict[str, Any]:
    """The profiled server's time per /route request, real prompts and `long_chars` prompts."""
    from bench.http import _client

    tool = _client(client)
    with tempfile.TemporaryDirectory(prefix="promptroute-profile-bodies-") as tmp:
        short = write_bodies(Path(tmp) / "short.jsonl", 300)
        long = write_long_bodies(Path(tmp) / "long.jsonl", 40, long_chars)
        result = {
            "params": {
                "concurrency": concurrency,
                "duration_s": duration,
                "long_chars": long_chars,
                "client": tool,
            },
            "real_prompts": _profile(Path(artifact), short, concurrency, duration, tool),
            "long_prompts": _profile(Path(artifact), long, concurrency, duration, tool),
        }
    json.dumps(result, allow_nan=False)  # what `bench` saves must be strict JSON
    result["targets"] = []
    return result
