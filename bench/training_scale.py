"""Training time and memory as the logs grow, for the in-memory trainer and the streaming one.

Logs of n records are resampled with replacement (seeded) from the train side of the bundled
data and written once as .jsonl.gz under `workdir`. Each training is a child process —
`python -m promptroute train` (in memory, `training/trainer.py`) or `python -m bench
train-streaming` (`training/streaming.py`) — timed by wall clock, with its memory polled every
50 ms (every 0.5 s after the first 5 s): the summed PSS of the process and its workers (shared
pages counted once), their summed RSS, and the kernel's peak RSS of the main process. The
growth exponent is the log-log slope of time (and memory) against n. Each artifact is then
evaluated on the bundled data's test side, which the resampled logs never contain, so a faster
path that routes worse would show.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import Target, loglog_slope, run_measured
from training.paths import bundled_data
from training.split import is_test

__all__ = ["resample_logs", "run"]

SECONDS_PER_100K_TARGET = 60.0
STREAM_MEMORY_TARGET_MB = 4096.0
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "promptroute-bench"


def _train_lines() -> list[bytes]:
    lines = []
    for path in bundled_data():
        with gzip.open(path, "rb") as f:
            for line in f:
                if line.strip() and not is_test(json.loads(line)["prompt"]):
                    lines.append(line if line.endswith(b"\n") else line + b"\n")
    return lines


def resample_logs(n: int, path: Path, *, seed: int = 0) -> Path:
    """Write `n` lines drawn with replacement from the bundled train side to `path` (gzip),
    unless it already exists; written under a temporary name and renamed when complete."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = _train_lines()
    rng = random.Random(seed)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(tmp, "wb", compresslevel=1) as f:
            left = n
            while left:
                batch = min(left, 10_000)
                f.write(b"".join(rng.choices(lines, k=batch)))
                left -= batch
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _evaluate(artifact: Path) -> dict[str, Any] | None:
    """AIQ of an artifact on the test side of the bundled data (None if it cannot be read)."""
    from models.artifact import load_router
    from models.catalog import Catalog
    from training.evaluate import evaluate
    from training.logs import load_records
    from training.split import split_records

    router, manifest = load_router(artifact)
    records = split_records(load_records(list(bundled_data())).records, "test")
    report = evaluate(router, records, Catalog.from_dict(manifest["catalog"]))
    return {
        "aiq": report["router"]["aiq"],
        "zero_router_aiq": report["zero_router"]["aiq"],
        "records": report["n"],
    }


def _run(kind: str, n: int, logs: Path, out: Path, extra: Sequence[str]) -> dict[str, Any]:
    if kind == "batch":
        cmd = [sys.executable, "-m", "promptroute", "train", "--logs", str(logs), "--out", str(out)]
    else:
        cmd = [sys.executable, "-m", "bench", "train-streaming", "--logs", str(logs)]
        cmd += ["--out", str(out)]
    run = run_measured([*cmd, *extra])
    if run["exit_code"] != 0:
        raise RuntimeError(f"{kind} training of {n} records failed:\n{run['stderr_tail']}")
    summary = json.loads(run.pop("stdout"))
    run.pop("stderr_tail")
    run["records"] = n
    run["trainer_seconds"] = summary.get("train_seconds")
    return run


def _growth(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """Log-log slopes against n: wall time (with ~2 s of imports and loading, which flatten
    it at small n), the trainer's own time, and peak memory."""
    ns = [r["records"] for r in rows]
    return {
        "time_exponent": loglog_slope(ns, [r["seconds"] for r in rows]),
        "trainer_time_exponent": loglog_slope(ns, [r["trainer_seconds"] or 0 for r in rows]),
        "memory_exponent": loglog_slope(ns, [r["peak_tree_pss_mb"] for r in rows]),
    }


def run(
    *,
    sizes: Sequence[int] = (1000, 10_000),
    stream_sizes: Sequence[int] = (20_000,),
    workdir: Path = DEFAULT_WORKDIR,
    train_args: Sequence[str] = (),
    stream_args: Sequence[str] = (),
    evaluate: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Time, memory and test AIQ of batch training at `sizes` and streaming at `stream_sizes`."""
    workdir = Path(workdir)
    batch, stream = [], []
    for kind, ns, extra, rows in (
        ("batch", sizes, train_args, batch),
        ("stream", stream_sizes, stream_args, stream),
    ):
        for n in ns:
            logs = resample_logs(n, workdir / f"resampled-{n}-seed{seed}.jsonl.gz", seed=seed)
            out = workdir / f"artifact-{kind}-{n}"
            row = _run(kind, n, logs, out, extra)
            row["logs_bytes"] = logs.stat().st_size
            if evaluate:
                row["test_side"] = _evaluate(out)
            rows.append(row)
    result: dict[str, Any] = {
        "params": {
            "sizes": list(sizes),
            "stream_sizes": list(stream_sizes),
            "train_args": list(train_args),
            "stream_args": list(stream_args),
            "seed": seed,
            "workdir": str(workdir),
        },
        "batch": batch,
        "batch_growth": _growth(batch),
        "stream": stream,
        "stream_growth": _growth(stream),
    }
    result["targets"] = _targets(batch, stream, result["batch_growth"]["time_exponent"])
    return result


def _targets(
    batch: list[dict[str, Any]], stream: list[dict[str, Any]], slope: float | None
) -> list[dict[str, Any]]:
    targets = []
    at_100k = [r for r in batch if r["records"] == 100_000]
    if at_100k:
        s = at_100k[0]["seconds"]
        targets.append(
            Target(
                "batch training, 100k records",
                f"≤ {SECONDS_PER_100K_TARGET:g} s",
                f"{s:.0f} s, peak {at_100k[0]['peak_tree_pss_mb']:.0f} MB",
                s <= SECONDS_PER_100K_TARGET,
            ).to_dict()
        )
    elif batch:
        top = max(batch, key=lambda r: r["records"])
        guess = top["seconds"] * (100_000 / top["records"]) ** slope if slope is not None else None
        targets.append(
            Target(
                "batch training, 100k records",
                f"≤ {SECONDS_PER_100K_TARGET:g} s",
                f"not run (≈ {guess:.0f} s extrapolated from {top['records']} records, "
                f"exponent {slope})"
                if guess is not None
                else "not run",
                None,
                "run `python -m bench training --full` to measure it",
            ).to_dict()
        )
    for r in stream:
        per_100k = r["seconds"] * 100_000 / r["records"]
        small = r["records"] < 100_000
        targets.append(
            Target(
                f"streaming training, {r['records']:,} records",
                f"≤ {SECONDS_PER_100K_TARGET:g} s per 100k",
                f"{r['seconds']:.0f} s ({per_100k:.0f} s per 100k)",
                None if small else per_100k <= SECONDS_PER_100K_TARGET,
                "below 100k records, start-up and the held-out sample (fixed costs) dominate"
                if small
                else "",
            ).to_dict()
        )
    big = [r for r in stream if r["records"] >= 1_000_000]
    if big:
        mem = big[0]["peak_tree_pss_mb"]
        targets.append(
            Target(
                f"streaming training, {big[0]['records']:,} records: peak memory",
                f"≤ {STREAM_MEMORY_TARGET_MB / 1024:g} GB",
                f"{mem:.0f} MB PSS ({big[0]['peak_tree_rss_mb']:.0f} MB RSS)",
                mem <= STREAM_MEMORY_TARGET_MB,
            ).to_dict()
        )
    elif stream:
        top = max(stream, key=lambda r: r["records"])
        targets.append(
            Target(
                "streaming training, 1M records: peak memory",
                f"≤ {STREAM_MEMORY_TARGET_MB / 1024:g} GB",
                f"not run; {top['peak_tree_pss_mb']:.0f} MB at {top['records']:,} records",
                None,
                "run `python -m bench training --full` to measure it",
            ).to_dict()
        )
    return targets
