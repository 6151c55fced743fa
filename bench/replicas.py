"""The cost of sharing state through Redis, and what a second worker buys, over real HTTP.

Every configuration runs as a real `promptroute serve` (a child process, free 127.0.0.1
port) at the same time, idle while another is measured; a real `redis-server` (started here,
no persistence) holds the shared state. The load generator (a separate process: `wrk` when
installed, else `bench._load`) drives POST /route with real prompts at concurrency 64, one
`duration` slice per configuration per round, the order rotated each round; ratios are the
median of the per-round ratios, so every ratio compares slices measured minutes apart at most.

Configurations: state memory or redis × 1 or 2 workers × ASGI server uvicorn or granian (the
memory backend only with one worker: `serve` refuses more). The load generator's own CPU time
per second of load is reported with each slice: on a 2-core machine it competes with the
server's workers, which bounds what a second worker can show.
"""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import REPO, Target, child_env, free_port
from bench.http import _client, _summary, run_load, write_bodies

__all__ = ["CONFIGS", "run"]

CONCURRENCY = 64
SHARING_TARGET = 0.85
# (name, state backend, workers, server)
CONFIGS = (
    ("memory-1-uvicorn", "memory", 1, "uvicorn"),
    ("redis-1-uvicorn", "redis", 1, "uvicorn"),
    ("redis-2-uvicorn", "redis", 2, "uvicorn"),
    ("memory-1-granian", "memory", 1, "granian"),
    ("redis-1-granian", "redis", 1, "granian"),
    ("redis-2-granian", "redis", 2, "granian"),
)


class _Redis:
    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class _Serve:
    """`promptroute serve --config CFG --workers N --server S` on a free port."""

    def __init__(self, name: str, artifact: Path, config: Path, workers: int, server: str):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"promptroute-{name}-", suffix=".log")
        self.command = [
            sys.executable,
            "-m",
            "promptroute",
            "serve",
            "--model",
            str(artifact),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(workers),
            "--server",
            server,
        ]
        self.proc = subprocess.Popen(
            self.command, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=child_env()
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready: {self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-1500:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: graceful
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _config(folder: Path, name: str, backend: str, redis_url: str) -> Path:
    path = folder / f"{name}.yaml"
    state: dict[str, Any] = {"backend": backend}
    if backend == "redis":
        state.update(url=redis_url, prefix=name)
    path.write_text(json.dumps({"state": state}), encoding="utf-8")  # JSON is YAML
    return path


def _measure(tool: str, url: str, bodies: Path, duration: float) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = _summary(run_load(tool, url, concurrency=CONCURRENCY, bodies=bodies, duration=duration))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out["load_generator_cpu_per_s"] = round(cpu / duration, 2)
    return out


def _ratio(rows: dict[str, list[dict[str, Any]]], a: str, b: str) -> float | None:
    if a not in rows or b not in rows:
        return None
    ratios = [x["rps"] / y["rps"] for x, y in zip(rows[a], rows[b], strict=True) if y["rps"]]
    return round(float(np.median(ratios)), 3) if ratios else None


def run(
    artifact: str | Path,
    *,
    duration: float = 5.0,
    rounds: int = 3,
    warmup: float = 2.0,
    client: str = "auto",
    configs: tuple[tuple[str, str, int, str], ...] = CONFIGS,
) -> dict[str, Any]:
    """Requests/s of /route at concurrency 64 for each configuration, and the ratios."""
    tool = _client(client)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in configs}
    with tempfile.TemporaryDirectory(prefix="promptroute-replicas-") as tmp:
        folder = Path(tmp)
        bodies = write_bodies(folder / "bodies.jsonl", 300)
        redis = _Redis(folder)
        servers: list[_Serve] = []
        try:
            for name, backend, workers, server in configs:
                config = _config(folder, name, backend, redis.url)
                servers.append(_Serve(name, Path(artifact), config, workers, server))
            for s in servers:
                s.wait_ready()
            for s in servers:
                _measure(tool, f"{s.url}/route", bodies, warmup)
            for r in range(rounds):
                shift = r % len(servers)
                for s in servers[shift:] + servers[:shift]:
                    rows[s.name].append(_measure(tool, f"{s.url}/route", bodies, duration))
        finally:
            for s in servers:
                s.stop()
            redis.stop()
    table = {
        name: {
            "rps": round(float(np.median([x["rps"] for x in rs])), 1),
            "p50_ms": round(float(np.median([x["p50_ms"] for x in rs])), 2),
            "p99_ms": round(float(np.median([x["p99_ms"] for x in rs])), 2),
            "errors": sum(x["errors"] for x in rs),
            "load_generator_cpu_per_s": round(
                float(np.median([x["load_generator_cpu_per_s"] for x in rs])), 2
            ),
            "rounds": rs,
        }
        for name, rs in rows.items()
    }
    ratios = (
        {
            f"{server}: redis ÷ memory, 1 worker": _ratio(
                rows, f"redis-1-{server}", f"memory-1-{server}"
            )
            for server in ("uvicorn", "granian")
        }
        | {
            f"{server}: 2 workers ÷ 1, redis": _ratio(
                rows, f"redis-2-{server}", f"redis-1-{server}"
            )
            for server in ("uvicorn", "granian")
        }
        | {
            f"{backend}-{workers}: granian ÷ uvicorn": _ratio(
                rows, f"{backend}-{workers}-granian", f"{backend}-{workers}-uvicorn"
            )
            for backend, workers in (("memory", 1), ("redis", 1), ("redis", 2))
        }
    )
    targets = []
    for server in ("uvicorn", "granian"):
        sharing = ratios[f"{server}: redis ÷ memory, 1 worker"]
        if sharing is not None:
            targets.append(
                Target(
                    f"/route req/s at c=64, redis ÷ memory backend, 1 {server} worker",
                    f"≥ {SHARING_TARGET}",
                    f"{sharing:.2f}",
                    sharing >= SHARING_TARGET,
                ).to_dict()
            )
    errors = sum(t["errors"] for t in table.values())
    targets.append(Target("error responses under load", "0", str(errors), errors == 0).to_dict())
    return {
        "params": {
            "concurrency": CONCURRENCY,
            "duration_s": duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "client": tool,
            "artifact": str(artifact),
        },
        "by_config": table,
        "ratios": ratios,
        "targets": targets,
    }
