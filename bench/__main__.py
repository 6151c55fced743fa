"""`python -m bench COMMAND`: run benchmarks, write bench/results/NAME.json and SUMMARY.md.

Commands: all, decision, long-inputs, http, breakdown, server-profile, footprint, artifact-io,
replicas, training [--full], loop, summary, and train-streaming (streaming training as a command,
for the training benchmark's child process).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench._common import REPO, child_env, machine_info

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_ARTIFACT = Path("/tmp/bench-art")
FULL_SIZES = (1000, 10_000, 100_000)
FULL_STREAM_SIZES = (100_000, 1_000_000)


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ensure_artifact(path: Path) -> Path:
    """`path` if it holds an artifact this code can read, with the featurizer and training
    options the code uses by default; else train it there (train side of the bundled data,
    about a minute). An older artifact would benchmark another featurizer (a 16 KiB scan
    window, say) or model than users get."""
    from models.artifact import read_manifest
    from models.errors import ArtifactError
    from training.build import stale_defaults
    from training.paths import bundled_data

    try:
        read_manifest(path)
        changed = stale_defaults(path)
        if not changed:
            return path
        _say(f"training the benchmark artifact at {path} ({changed}: not the defaults)")
    except ArtifactError as exc:
        _say(f"training the benchmark artifact at {path} ({exc})")
    cmd = [sys.executable, "-m", "promptroute", "train", "--split", "train", "--out", str(path)]
    cmd += ["--logs", *[str(p) for p in bundled_data()]]
    subprocess.run(cmd, cwd=REPO, env=child_env(), check=True, stdout=subprocess.DEVNULL)
    return path


def _save(name: str, command: str, run: Callable[[], dict[str, Any]], out: Path) -> dict:
    _say(f"{name}: running")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    machine = machine_info()
    result = run()
    result = {
        "benchmark": name,
        "command": command,
        "started_at": started,
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": machine,
        **result,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    for t in result.get("targets", []):
        status = {True: "pass", False: "MISS", None: "-"}[t["pass"]]
        _say(f"  {status:4s} {t['metric']}: {t['measured']} (target {t['target']})")
    return result


def _train_streaming(a: argparse.Namespace) -> int:
    from models.artifact import save_router
    from models.catalog import load_catalog
    from training.streaming import StreamingOptions, train_streaming

    catalog = load_catalog(a.catalog)
    opts = StreamingOptions(
        chunk_size=a.chunk_size, epochs=a.epochs, split=a.split, skip_invalid=a.skip_invalid
    )
    result = train_streaming(a.logs, catalog, opts, progress=_say)
    manifest = save_router(
        result.router,
        a.out,
        catalog=catalog.to_dict(),
        training={
            "files": [str(p) for p in a.logs],
            "method": "streaming",
            "split": a.split,
            "records_used": result.report["n_records"],
            "options": result.report["options"],
        },
        metrics={k: v for k, v in result.report.items() if k != "options"},
    )
    r = result.report
    summary = {
        "artifact": str(a.out),
        "router_version": manifest["router_version"],
        "records": r["n_records"],
        "holdout": r["n_holdout"],
        "default_knob": r["default_knob"],
        "cv_routing": r["cv_routing"],
        "calibration": r["calibration"],
        "train_seconds": r["train_seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from training.streaming import StreamingOptions

    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("all", "every benchmark at its default sizes, then the summary"),
        ("decision", "decision latency in-process vs the hand-rule router"),
        ("long-inputs", "decision time for 10 KB, 100 KB and 1 MB prompts"),
        ("http", "HTTP throughput and latency of /route vs a no-op endpoint"),
        ("breakdown", "where a /route request's time goes, the app called in-process"),
        ("server-profile", "a served /route request's wall time by part, server under cProfile"),
        ("footprint", "serving RSS after start and after 10k requests; artifact size"),
        ("artifact-io", "artifact save/load time and size: format 2 vs the old joblib format"),
        ("replicas", "/route req/s: redis vs memory state, 2 workers vs 1, granian vs uvicorn"),
        ("training", "training time and memory vs records; streaming training"),
    ):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument(
            "--artifact",
            type=Path,
            default=DEFAULT_ARTIFACT,
            help="artifact to benchmark (trained there if missing; default %(default)s)",
        )
        sp.add_argument("--results", type=Path, default=RESULTS, help="where JSON results go")
        if name == "training":
            sp.add_argument(
                "--full",
                action="store_true",
                help="also 100k records in memory and 1M streamed (long: tens of minutes)",
            )
    lp = sub.add_parser("loop", help="the learning loop simulated on bundled data (minutes)")
    lp.add_argument("--results", type=Path, default=RESULTS, help="where JSON results go")
    lp.add_argument(
        "--data",
        choices=("routerbench", "llmrouter_dcrouter"),
        default="routerbench",
        help="which bundled dataset's train side to replay (default routerbench)",
    )
    lp.add_argument("--rounds", type=int, default=5)
    lp.add_argument("--explore", type=float, default=0.1, help="exploration share (default 0.1)")
    lp.add_argument("--seed", type=int, default=0, help="first traffic seed")
    lp.add_argument("--seeds", type=int, default=3, help="traffic replays (default 3)")
    s = sub.add_parser("summary", help="rewrite SUMMARY.md from the JSON results")
    s.add_argument("--results", type=Path, default=RESULTS)

    t = sub.add_parser("train-streaming", help="train with training.streaming and save")
    t.add_argument("--logs", nargs="+", required=True)
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--catalog")
    t.add_argument("--split", choices=("train", "test", "all"), default="all")
    t.add_argument("--chunk-size", type=int, default=StreamingOptions.chunk_size)
    t.add_argument("--epochs", type=int, default=StreamingOptions.epochs)
    t.add_argument("--skip-invalid", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.command == "train-streaming":
        return _train_streaming(a)
    if a.command == "loop":
        from bench import loop
        from bench.summary import write_summary

        command = (
            f"python -m bench loop --data {a.data} --rounds {a.rounds} --explore {a.explore}"
            f" --seed {a.seed} --seeds {a.seeds}"
        )
        _save(
            "loop" if a.data == "routerbench" else f"loop_{a.data}",
            command,
            lambda: loop.run(
                data=a.data, rounds=a.rounds, explore=a.explore, seed=a.seed, seeds=a.seeds
            ),
            a.results,
        )
        _say(f"summary: {write_summary(a.results)}")
        return 0
    if a.command == "summary":
        from bench.summary import write_summary

        print(write_summary(a.results))
        return 0

    from bench import (
        artifact_io,
        breakdown,
        decision,
        footprint,
        http,
        long_inputs,
        replicas,
        server_profile,
        training_scale,
    )
    from bench.summary import write_summary

    full = getattr(a, "full", False)
    art = a.artifact
    jobs: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "decision": ("python -m bench decision", lambda: decision.run(art)),
        "long-inputs": ("python -m bench long-inputs", lambda: long_inputs.run(art)),
        "http": ("python -m bench http", lambda: http.run(art)),
        "breakdown": ("python -m bench breakdown", lambda: breakdown.run(art)),
        "server-profile": ("python -m bench server-profile", lambda: server_profile.run(art)),
        "footprint": ("python -m bench footprint", lambda: footprint.run(art)),
        "artifact-io": ("python -m bench artifact-io", lambda: artifact_io.run(art)),
        "replicas": ("python -m bench replicas", lambda: replicas.run(art)),
        "training": (
            "python -m bench training" + (" --full" if full else ""),
            lambda: (
                training_scale.run(sizes=FULL_SIZES, stream_sizes=FULL_STREAM_SIZES)
                if full
                else training_scale.run()
            ),
        ),
    }
    # server-profile explains the HTTP figures rather than adding one, and replicas needs a
    # redis-server and several minutes: each runs on its own, not in "all".
    alone = ("server-profile", "replicas")
    names = [n for n in jobs if n not in alone] if a.command == "all" else [a.command]
    if any(n != "training" for n in names):
        ensure_artifact(art)
    for name in names:
        command, run = jobs[name]
        file_name = name.replace("-", "_") + ("_full" if name == "training" and full else "")
        if a.command == "all":
            command = "python -m bench all"
        _save(file_name, command, run, a.results)
    _say(f"summary: {write_summary(a.results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
