"""Durability: decision-log lines survive a killed writer and rotation; shutdown drains requests.

A writer process is killed with SIGKILL while it appends large rows to a rotating log, several
times over the same log: every line before the last stays valid JSON, nothing before it is
missing, and reopening the log drops the cut line so appending continues cleanly. Threads that
append while the log rotates every few lines lose nothing. A real uvicorn server asked to
shut down while requests are in flight lets each of them finish with 200, and their decisions
reach the log.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fakes import LiveServer
from fastapi import Request

from serving import create_app, load_settings
from serving.decision_log import DecisionLog, DecisionLogSettings, read_log_lines
from serving.deps import get_service
from serving.service import Service

ROOT = Path(__file__).resolve().parent.parent

# Appends rows of ~256 KB to a log rotating every few rows; row ids are "<round>-<n>", n from 0.
# With a third argument N, the N+1th write puts half its bytes on disk and the process kills
# itself with SIGKILL: a kill inside a write, for certain rather than by chance.
_WRITER = """
import importlib.util, os, signal, sys

# The module alone, not the `serving` package with the whole web stack: a quicker start.
spec = importlib.util.spec_from_file_location("decision_log", "serving/decision_log.py")
decision_log = sys.modules["decision_log"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(decision_log)
DecisionLog, DecisionLogSettings = decision_log.DecisionLog, decision_log.DecisionLogSettings

path, round_ = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    cut_after, real_write, writes = int(sys.argv[3]), os.write, [0]

    def write(fd, data):
        writes[0] += 1
        if writes[0] > cut_after:
            real_write(fd, bytes(data[: len(data) // 2]))
            os.kill(os.getpid(), signal.SIGKILL)
        return real_write(fd, data)

    os.write = write
log = DecisionLog(DecisionLogSettings(path=path, max_bytes=1_000_000, backup_count=1_000))
pad = "x" * 256_000
print("open", flush=True)
n = 0
while True:
    log.append({"id": f"{round_}-{n}", "prompt": pad, "model": "m", "success": True, "ts": 0})
    n += 1
"""


def _log_bytes(folder: Path) -> int:
    total = 0
    for entry in os.scandir(folder):
        try:
            total += entry.stat().st_size
        except FileNotFoundError:  # renamed by a rotation between the listing and the stat
            pass
    return total


def _kill_mid_write(path: Path, round_: int, rng: random.Random, cut_after: int | None) -> None:
    """Run a writer until SIGKILL: after ~3 MB at a random moment, or inside write `cut_after`."""
    before = _log_bytes(path.parent) if path.parent.exists() else 0
    args = [str(path), str(round_)] + ([] if cut_after is None else [str(cut_after)])
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"open\n"
        if cut_after is None:
            deadline = time.monotonic() + 30
            while _log_bytes(path.parent) < before + 3_000_000:  # a real process: wait for it
                assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
                assert time.monotonic() < deadline, "the writer made no progress"
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.01))
            writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        for stream in (writer.stdout, writer.stderr):
            if stream is not None:
                stream.close()
    assert writer.returncode == -signal.SIGKILL


def _files_oldest_first(path: Path) -> list[Path]:
    backups = sorted((int(p.name.rsplit(".", 1)[1]), p) for p in path.parent.glob(f"{path.name}.*"))
    return [p for _, p in reversed(backups)] + ([path] if path.exists() else [])


def test_a_writer_killed_mid_write_leaves_every_earlier_line_readable(tmp_path):
    path = tmp_path / "log" / "decisions.jsonl"
    rng = random.Random(5)
    # Two kills at a random moment, then two inside a write (one soon after a rotation).
    cut_after = [None, None, 12, 9]
    rounds = len(cut_after)
    cut_lines = 0
    for round_ in range(rounds):
        _kill_mid_write(path, round_, rng, cut_after[round_])
        # Straight after the kill, before anything repairs the log: only the very last bytes
        # of the newest file may be a cut line; every line before it is whole and valid.
        files = _files_oldest_first(path)
        for f in files[:-1]:
            assert f.read_bytes().endswith(b"\n"), f"{f.name} ends mid-line"
        tail = files[-1].read_bytes()
        cut_lines += bool(tail) and not tail.endswith(b"\n")
        ids = [row["id"] for row in read_log_lines(path)]  # raises on any broken earlier line
        mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"{round_}-")]
        assert mine == list(range(len(mine))) and len(mine) >= 3  # nothing lost before the last
        # Reopening drops the cut line, so the next writer's lines start clean.
        DecisionLog(DecisionLogSettings(path=str(path), max_bytes=1_000_000)).close()
        assert not files[-1].exists() or files[-1].read_bytes()[-1:] in (b"", b"\n")
    rows = list(read_log_lines(path))
    for round_ in range(rounds):
        mine = [int(r["id"].split("-")[1]) for r in rows if r["id"].startswith(f"{round_}-")]
        assert mine == list(range(len(mine)))
    assert [r["id"].split("-")[0] for r in rows] == sorted(r["id"].split("-")[0] for r in rows)
    assert cut_lines >= 2  # at least the two certain ones
    print(f"\nkilled {rounds} writers: {len(rows)} rows intact, {cut_lines} cut line(s) dropped")


def test_rotation_every_few_lines_loses_nothing_under_concurrent_writers(tmp_path):
    path = tmp_path / "decisions.jsonl"
    max_bytes = 1000
    settings = DecisionLogSettings(path=str(path), max_bytes=max_bytes, backup_count=1_000)
    threads_n, per_thread = 8, 150
    barrier = threading.Barrier(threads_n)
    with DecisionLog(settings) as log:

        def worker(k: int) -> None:
            barrier.wait()  # all start together, so appends and rotations interleave
            for i in range(per_thread):
                log.append({"id": f"{k}-{i}", "prompt": "p" * (50 + (i * 7) % 200), "model": "m"})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.lines_written == threads_n * per_thread
    files = list(tmp_path.iterdir())
    assert len(files) > threads_n * per_thread // 10  # a rotation every few lines
    for f in files:
        data = f.read_bytes()
        assert data.endswith(b"\n") and len(data) <= max_bytes
    rows = list(read_log_lines(path))
    assert len(rows) == len({r["id"] for r in rows}) == threads_n * per_thread
    for k in range(threads_n):  # each writer's rows in its order, across files
        mine = [int(r["id"].split("-")[1]) for r in rows if r["id"].startswith(f"{k}-")]
        assert mine == list(range(per_thread))


# ---------------------------------------------------------------------------------------------
# Graceful shutdown


def test_graceful_shutdown_lets_in_flight_requests_finish(tiny_artifact, catalog_path, tmp_path):
    log_path = tmp_path / "decisions.jsonl"
    config = load_settings(
        artifact=str(tiny_artifact),
        catalog=str(catalog_path),
        decision_log={"path": str(log_path)},
    )
    app = create_app(config, environ={})
    gate = threading.Event()
    inside = threading.Semaphore(0)

    async def slow_state(request: Request) -> Service:
        """A slow dependency: each request waits at the gate, holding its connection open."""
        inside.release()
        await asyncio.to_thread(gate.wait, 30)
        return await get_service(request)

    app.dependency_overrides[get_service] = slow_state
    server = LiveServer(app, graceful_shutdown_seconds=20)
    url = server.start()
    in_flight = 6

    def call(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30) as client:
            if i % 2:
                return client.post("/route", json={"prompt": f"Explain request number {i}."})
            return client.get("/models")

    with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
        futures = [pool.submit(call, i) for i in range(in_flight)]
        for _ in range(in_flight):  # every request is inside its handler
            assert inside.acquire(timeout=20)
        server.server.should_exit = True  # what SIGTERM does
        deadline = time.monotonic() + 20
        while any(s.is_serving() for s in server.server.servers):  # it stopped listening
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=5)
        assert not log_path.exists() or log_path.read_bytes() == b""  # nothing drained yet
        gate.set()
        responses = [f.result(timeout=30) for f in futures]
    server.thread.join(timeout=30)
    assert not server.thread.is_alive()
    assert [r.status_code for r in responses] == [200] * in_flight
    routed = {r.json()["request_id"] for r in responses if r.request.url.path == "/route"}
    assert len(routed) == in_flight // 2
    # Each decision was logged before its response: all there, none written twice at shutdown.
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(routed)
    assert all(r["kind"] == "decision" for r in rows)
