"""What every benchmark shares: statistics, real prompts, child processes and their memory.

Nothing here asserts a time. Statistics are over per-item medians (each prompt timed several
times, interleaved with what it is compared to), so one noisy neighbour on a shared machine
moves a single sample, not a percentile.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.text import Prompt
from training.logs import iter_records
from training.paths import bundled_data

__all__ = [
    "REPO",
    "Server",
    "Target",
    "child_env",
    "free_port",
    "loglog_slope",
    "machine_info",
    "percentiles_us",
    "proc_status_kb",
    "real_prompts",
    "run_measured",
    "tree_memory_kb",
]

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- statistics
def percentiles_us(values_ns: Sequence[float] | np.ndarray) -> dict[str, float]:
    """p50/p95/p99/mean/max of nanosecond samples, in microseconds (3 significant decimals)."""
    a = np.asarray(values_ns, dtype=np.float64) / 1000.0
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "n": int(a.size),
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(a.mean()), 3),
        "max": round(float(a.max()), 3),
    }


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) on log(x): y grows like x ** slope (None if < 2 points)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx = np.log([x for x, _ in pts])
    ly = np.log([y for _, y in pts])
    return round(float(np.polyfit(lx, ly, 1)[0]), 3)


@dataclass
class Target:
    """One line of a summary table: a target from the issue and what was measured."""

    metric: str
    target: str
    measured: str
    passed: bool | None  # None: not measured in this run, or no target
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "target": self.target,
            "measured": self.measured,
            "pass": self.passed,
            "note": self.note,
        }


def machine_info() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------------- prompts
@functools.lru_cache(maxsize=8)
def _prompts_of(path: Path) -> tuple[Prompt, ...]:
    return tuple(r.prompt for r in iter_records(path))


def real_prompts(n: int, *, seed: int = 0) -> list[tuple[str, Prompt]]:
    """`n` prompts (source file stem, Prompt) from the bundled datasets, an equal share from
    each (the short MMLU questions would otherwise be two thirds of the sample), shuffled."""
    files = bundled_data()
    rng = random.Random(seed)
    out: list[tuple[str, Prompt]] = []
    for i, path in enumerate(files):
        share = n // len(files) + (1 if i < n % len(files) else 0)
        prompts = _prompts_of(path)
        name = path.name.split(".")[0]
        out += [(name, p) for p in rng.sample(prompts, min(share, len(prompts)))]
    rng.shuffle(out)
    return out


# --------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                kids += [int(x) for x in text.split()]
    return kids


def tree_memory_kb(pid: int) -> dict[str, int]:
    """Summed RSS and PSS of a process and all its descendants, in kB.

    PSS divides shared pages among the processes that share them, so summing it over a tree
    (the trainer's worker processes share numpy and scikit-learn) does not double count.
    """
    rss = pss = 0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        todo += _children(p)
    return {"rss": rss, "pss": pss, "processes": len(seen)}


@dataclass
class _Poller:
    pid: int
    interval: float
    peak: dict[str, int] = field(
        default_factory=lambda: {"rss": 0, "pss": 0, "processes": 0, "hwm": 0}
    )
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            now = tree_memory_kb(self.pid)
            with contextlib.suppress(OSError, KeyError, ValueError):
                now["hwm"] = proc_status_kb(self.pid)["VmHWM"]
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            # Reading smaps of a process of several GB costs CPU the measured run then lacks;
            # after the first seconds, slower polling still sees memory that stays up.
            slow = time.monotonic() - start > 5.0
            self._stop.wait(max(self.interval, 0.5) if slow else self.interval)


def run_measured(
    cmd: Sequence[str], *, cwd: Path = REPO, poll_seconds: float = 0.05, timeout: float = 7200
) -> dict[str, Any]:
    """Run `cmd` to completion: wall time, exit code, output, and memory.

    Memory is polled every `poll_seconds` (every 0.5 s after the first 5 s): the summed PSS
    and RSS of the process tree (a spike shorter than the interval can be missed), and the main process's VmHWM, the kernel's
    own high-water mark of its RSS. (Not `wait4`'s ru_maxrss: exec records the parent's peak
    in it, so it reports the benchmark process's size, not the child's.)"""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=err, env=child_env())
        poller = _Poller(proc.pid, poll_seconds)
        thread = threading.Thread(target=poller.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        status, pid = 0, 0
        try:
            while True:
                pid, status = os.waitpid(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{cmd[:4]} still running after {timeout:.0f}s")
                time.sleep(0.02)
        finally:
            poller._stop.set()
            thread.join()
            if not pid:
                proc.kill()
                proc.wait()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "command": " ".join(str(c) for c in cmd),
            "exit_code": proc.returncode,
            "seconds": round(seconds, 2),
            "peak_tree_rss_mb": round(poller.peak["rss"] / 1024, 1),
            "peak_tree_pss_mb": round(poller.peak["pss"] / 1024, 1),
            "max_processes": poller.peak["processes"],
            "peak_rss_main_mb": round(poller.peak["hwm"] / 1024, 1),
            "stdout": out.read().decode("utf-8", "replace"),
            "stderr_tail": err.read().decode("utf-8", "replace")[-4000:],
        }


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # Children import the checkout's packages whatever their working directory.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


class Server:
    """`promptroute serve` on a free 127.0.0.1 port, as a child process; stopped on exit.

    ``with Server(artifact) as s:`` waits until ``GET /readyz`` answers 200 (the model is
    loaded), so that nothing is measured while the server still starts.
    """

    def __init__(self, artifact: Path, *, start_timeout: float = 180.0) -> None:
        self.artifact = Path(artifact)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="promptroute-bench-server-", suffix=".log")
        self.command = [
            sys.executable,
            "-m",
            "promptroute",
            "serve",
            "--model",
            str(self.artifact),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(
            self.command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=child_env()
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return self
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise TimeoutError(f"server not ready after {self.start_timeout:.0f}s")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")[-chars:]

    def post_json(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
