"""Serving footprint: the server's RSS after start and after N requests, and the artifact size.

The server is a fresh `promptroute serve` process; RSS is VmRSS from /proc/PID/status (VmHWM is
the peak). "After start" is read once /readyz answers and the server has been idle for
`settle_seconds`; then `n_requests` POST /route requests with real prompts are sent by the asyncio load
generator (`bench._load`, concurrency 8) and RSS is read again.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import Server, Target, proc_status_kb
from bench.http import run_load, write_bodies

__all__ = ["run"]

RSS_TARGET_MB = 250.0


def run(
    artifact: str | Path,
    *,
    n_requests: int = 10_000,
    concurrency: int = 8,
    settle_seconds: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """RSS (MB) after start and after `n_requests` requests; artifact bytes on disk."""
    folder = Path(artifact)
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    with tempfile.TemporaryDirectory(prefix="promptroute-bench-") as tmp:
        bodies = write_bodies(Path(tmp) / "bodies.jsonl", 300, seed)
        with Server(folder) as server:
            time.sleep(settle_seconds)
            start = proc_status_kb(server.pid)
            sent = run_load(
                "python",
                f"{server.url}/route",
                concurrency=concurrency,
                bodies=bodies,
                count=n_requests,
            )
            after = proc_status_kb(server.pid)
    rss_after = after["VmRSS"] / 1024
    result: dict[str, Any] = {
        "params": {"n_requests": n_requests, "concurrency": concurrency, "artifact": str(folder)},
        "rss_after_start_mb": round(start["VmRSS"] / 1024, 1),
        "rss_after_requests_mb": round(rss_after, 1),
        "peak_rss_mb": round(after["VmHWM"] / 1024, 1),
        "requests_sent": sent["requests"],
        "request_errors": sum(sent["errors"].values()),
        "artifact_bytes": sum(files.values()),
        "artifact_files": files,
    }
    result["targets"] = [
        Target(
            f"serving RSS after {n_requests} requests",
            f"≤ {RSS_TARGET_MB:g} MB",
            f"{rss_after:.0f} MB (after start {start['VmRSS'] / 1024:.0f} MB, "
            f"peak {after['VmHWM'] / 1024:.0f} MB)",
            rss_after <= RSS_TARGET_MB,
        ).to_dict(),
        Target(
            "artifact size on disk",
            "(no target)",
            f"{sum(files.values()) / 1e6:.2f} MB",
            None,
        ).to_dict(),
    ]
    return result
