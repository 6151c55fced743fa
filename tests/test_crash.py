"""Nothing acknowledged is lost when the server is killed with SIGKILL (issue 11, item 8), and
`serve --workers 2` on one Redis behaves as one service: feedback reaches any worker, /metrics
adds up, every worker writes its own decision-log file.

Real `promptroute serve` processes on free loopback ports; the process group is killed with
SIGKILL, so no shutdown code runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from promptroute.cli import expand_logs
from serving.decision_log import read_joined_rows
from training.logs import load_records

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Serve:
    def __init__(self, tmp: Path, artifact: Path, catalog: Path, config: dict, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        path = tmp / "config.yaml"
        path.write_text(json.dumps({"catalog": str(catalog), **config}), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.out = (tmp / "server.out").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "promptroute", "serve", "--model", str(artifact)]
            + ["--config", str(path), "--port", str(self.port), *args],
            cwd=ROOT,
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches every worker
        )
        self.tmp = tmp

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, (self.tmp / "server.out").read_text()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.out.close()


@pytest.fixture
def serve(tmp_path, tiny_artifact, catalog_path):
    started: list[_Serve] = []

    def start(config: dict, *args: str) -> _Serve:
        server = _Serve(tmp_path, tiny_artifact, catalog_path, config, *args)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()


def _traffic(url: str, n: int) -> tuple[dict[str, str], dict[str, bool]]:
    """`n` routed decisions, feedback for two in three; (id -> model, id -> success)."""
    decisions: dict[str, str] = {}
    outcomes: dict[str, bool] = {}
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(n):
            r = client.post("/route", json={"prompt": f"Explain the number {i} to a child."})
            assert r.status_code == 200, r.text
            decisions[r.json()["request_id"]] = r.json()["model"]
            if i % 3:
                fb = {"request_id": r.json()["request_id"], "success": i % 2 == 0}
                assert client.post("/feedback", json=fb).status_code == 200
                outcomes[r.json()["request_id"]] = i % 2 == 0
    return decisions, outcomes


def test_sigkill_loses_no_acknowledged_decision(serve, tmp_path):
    log = tmp_path / "logs" / "decisions.jsonl"
    server = serve({"decision_log": {"path": str(log)}})
    decisions, outcomes = _traffic(server.url, 60)
    server.kill()  # no lifespan shutdown, no drain
    rows = read_joined_rows(log)
    assert {r["id"]: r["model"] for r in rows} == decisions  # all 60, once each
    assert {r["id"]: r["success"] for r in rows if r["success"] is not None} == outcomes
    report = load_records([str(log)], skip_invalid=True)
    assert sum(len(rec.outcomes) for rec in report.records) == len(outcomes)
    assert len(report.skipped) == len(decisions) - len(outcomes)  # unlabelled, and said so


def test_serve_with_two_workers_on_redis(serve, tmp_path, redis_url):
    logs = tmp_path / "logs"
    config = {
        "decision_log": {"path": str(logs / "decisions.jsonl")},
        "state": {"backend": "redis", "url": redis_url},
    }
    server = serve(config, "--workers", "2", "--server", "uvicorn")
    decisions, outcomes = _traffic(server.url, 60)  # every feedback 200, whichever worker
    scrapes = [httpx.get(f"{server.url}/metrics").text for _ in range(6)]
    routed = [
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith('promptroute_http_requests_total{endpoint="/route",status="200"}')
        )
        for text in scrapes
    ]
    assert routed == [60.0] * 6  # the same total whichever worker answers
    server.kill()
    files = expand_logs([str(logs)])
    assert len(files) == 2  # one file per worker, named for its process
    assert all(Path(f).name.startswith("decisions.") and f.endswith(".jsonl") for f in files)
    rows = read_joined_rows(*files)
    assert {r["id"]: r["model"] for r in rows} == decisions
    assert {r["id"]: r["success"] for r in rows if r["success"] is not None} == outcomes


def test_more_than_one_worker_needs_redis(tmp_path, tiny_artifact, catalog_path):
    done = subprocess.run(
        [sys.executable, "-m", "promptroute", "serve", "--model", str(tiny_artifact)]
        + ["--workers", "2"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(
        "promptroute: error: state.backend: 2 workers need the shared state backend: set "
        "state: {backend: redis, url: redis://HOST:6379/0} in the config"
    )
