"""Every benchmark runs end to end at tiny sizes, so the scripts cannot rot.

No timing is asserted: these check the shape of each result, its counts and the bookkeeping
(targets, pass/miss, the summary), never how fast anything was.
"""

from __future__ import annotations

import json
import random
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import artifact_io, breakdown, decision, footprint, http, long_inputs, training_scale
from bench.__main__ import ensure_artifact, main
from bench._common import loglog_slope, percentiles_us, real_prompts
from bench.summary import render_summary

PERCENTILE_KEYS = {"n", "p50", "p95", "p99", "mean", "max"}


def _ordered(s: dict[str, float]) -> bool:
    return s["p50"] <= s["p95"] <= s["p99"] <= s["max"]


def _json_ready(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(result, allow_nan=False))


def _metrics(result: dict[str, Any]) -> list[str]:
    return [t["metric"] for t in result["targets"]]


@pytest.fixture(scope="module")
def scale_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def results(tiny_artifact: Path, scale_dir: Path) -> dict[str, dict[str, Any]]:
    """Every benchmark once, at tiny sizes, as the JSON it would write (~12 s in all)."""
    return {
        "decision": _json_ready(decision.run(tiny_artifact, n_prompts=12, repeats=2)),
        "long_inputs": _json_ready(long_inputs.run(tiny_artifact, sizes=(1024, 4000), repeats=2)),
        "http": _json_ready(
            http.run(
                tiny_artifact,
                concurrencies=(1, 2),
                duration=0.2,
                rounds=1,
                warmup=0,
                client="python",
                n_bodies=5,
                long_chars=2000,
                n_long_bodies=2,
            )
        ),
        "breakdown": _json_ready(breakdown.run(tiny_artifact, n_prompts=4, rounds=2)),
        "footprint": _json_ready(footprint.run(tiny_artifact, n_requests=20, settle_seconds=0)),
        "artifact_io": _json_ready(artifact_io.run(tiny_artifact, repeats=2)),
        "training": _json_ready(
            training_scale.run(
                sizes=(40,),
                stream_sizes=(150,),
                workdir=scale_dir,
                train_args=["--c-grid", "1.0", "--cv-folds", "2", "--jobs", "1"],
                stream_args=["--chunk-size", "50", "--epochs", "1"],
                evaluate=False,
            )
        ),
    }


# --------------------------------------------------------------------------- helpers
def test_percentiles_are_in_microseconds() -> None:
    s = percentiles_us([1000, 2000, 3000, 4000, 5000])
    assert s == {"n": 5, "p50": 3.0, "p95": 4.8, "p99": 4.96, "mean": 3.0, "max": 5.0}
    assert percentiles_us([]) == {"n": 0}


@pytest.mark.parametrize(
    ("xs", "ys", "slope"),
    [
        pytest.param([1, 10, 100], [2, 20, 200], 1.0, id="linear"),
        pytest.param([1, 10, 100], [1, 100, 10_000], 2.0, id="quadratic"),
        pytest.param([10, 100], [5, 5], 0.0, id="flat"),
        pytest.param([10], [5], None, id="one-point"),
        pytest.param([10, 10], [5, 7], None, id="one-size"),
    ],
)
def test_loglog_slope(xs: list[float], ys: list[float], slope: float | None) -> None:
    assert loglog_slope(xs, ys) == slope


def test_real_prompts_take_an_equal_share_of_each_dataset() -> None:
    sample = real_prompts(7, seed=3)
    sources = sorted(s for s, _ in sample)
    # the first file (routellm) takes the remainder
    assert sources == ["llmrouter_dcrouter"] * 2 + ["routellm"] * 3 + ["routerbench"] * 2
    assert [p.text for _, p in real_prompts(7, seed=3)] == [p.text for _, p in sample]


@pytest.mark.parametrize("chars", [pytest.param(n, id=str(n)) for n in (1, 99, 5000)])
def test_long_text_is_exactly_the_size_asked(chars: int) -> None:
    pool = ["alpha beta", "gamma", "delta epsilon zeta"]
    assert len(long_inputs.build_text(pool, chars, random.Random(0))) == chars


# --------------------------------------------------------------------------- benchmarks
def test_decision(results: dict) -> None:
    r = results["decision"]
    for key in ("features_us", "head_us", "decision_us", "heuristic_us", "content_router_us"):
        assert set(r[key]) == PERCENTILE_KEYS and r[key]["n"] == 12 and _ordered(r[key])
    for key in ("ratio_learned_over_heuristic", "ratio_learned_over_content_router"):
        assert set(r[key]) == {"p50", "p99", "mean", "median_per_prompt"}
    ratio = r["ratio_learned_over_content_router"]["p50"]
    assert ratio == round(r["decision_us"]["p50"] / r["content_router_us"]["p50"], 3)
    assert set(r["decision_p50_us_by_dataset"]) == {"llmrouter_dcrouter", "routellm", "routerbench"}
    assert r["timer_overhead_ns"] >= 0
    assert _metrics(r) == [
        "decision p50",
        "decision p99",
        "learned / hand-rule decision time (p50 ratio)",
        "learned / seed ContentRouter decision time (p50 ratio)",
    ]
    assert all(isinstance(t["pass"], bool) for t in r["targets"])


def test_long_inputs(results: dict) -> None:
    r = results["long_inputs"]
    assert list(r["by_size_chars"]) == ["1024", "4000"]
    for row in r["by_size_chars"].values():
        assert set(row) == {"decision_ms", "features_ms", "heuristic_ms"}
        assert all(0 < v["median"] <= v["max"] for v in row.values())
    (target,) = r["targets"]
    assert target["metric"] == "decision on a 4000-character prompt (median)"
    assert target["pass"] is None  # the 5 ms target is for 1 MB prompts only


def test_http_with_the_python_load_generator(results: dict) -> None:
    r = results["http"]
    assert list(r["by_concurrency"]) == ["1", "2"]
    for row in r["by_concurrency"].values():
        for name in ("route", "noop"):
            assert len(row[name]["rounds"]) == 1
            assert row[name]["errors"] == 0
            assert row[name]["rps"] > 0
        assert row["route_fraction_of_noop"] > 0
        assert row["route_p50_over_noop_p50"] > 0
    long = r["long_prompt_c1"]
    assert long["route"]["errors"] == long["noop"]["errors"] == 0
    assert len(long["route"]["rounds"]) == 1 and long["route"]["rps"] > 0
    assert r["params"]["long_chars"] == 2000 and len(r["load_avg"]["before"]) == 3
    assert _metrics(r) == [
        "/route throughput as a fraction of GET /healthz at concurrency 2",
        "/route p50 ÷ GET /healthz p50 at concurrency 1",
        "/route p50 with 2,000-character prompts ÷ GET /healthz p50, concurrency 1",
        "error responses under load",
    ]
    # Timing decides the concurrency-1 target; the others are fixed by the sizes run.
    passes = [t["pass"] for t in r["targets"]]
    assert passes[0] is None and isinstance(passes[1], bool) and passes[2:] == [None, True]


def test_breakdown(results: dict) -> None:
    r = results["breakdown"]
    assert r["params"] == {"n_prompts": 4, "rounds": 2, "seed": 0}
    us = r["median_us"]
    assert set(us) == {
        "noop_get",
        "noop_post",
        "route",
        "route_fastapi",
        "pipeline",
        "features",
        "head",
    }
    assert all(v > 0 for v in us.values())
    assert r["route_beyond_pipeline_us"] == round(us["route"] - us["pipeline"], 1)
    assert r["route_fastapi_over_route"] == round(us["route_fastapi"] / us["route"], 2)
    assert r["targets"] == []


def test_server_profile(tiny_artifact: Path) -> None:
    from bench import server_profile

    r = server_profile.run(tiny_artifact, duration=0.3, long_chars=2000, client="python")
    for key in ("real_prompts", "long_prompts"):
        part = r[key]
        assert part["requests"] > 0 and part["wall_ms_per_request"] > 0
        assert set(part["parts"]) == {label for label, _, _ in server_profile._PARTS}
        decision = part["parts"]["decision (Pipeline.decide)"]
        assert decision["ms_per_request"] > 0 and 0 < decision["share"]
        assert len(part["top_by_own_time"]) == 15
    assert "Where a served /route request" in render_summary(
        {"server_profile": {"command": "cmd", **_json_ready(r)}}
    )


def test_breakdown_noop_endpoint_is_not_in_the_product(tiny_artifact: Path) -> None:
    from serving.app import create_app
    from serving.config import load_settings

    app = create_app(load_settings(None, artifact=str(tiny_artifact)))
    assert "/__bench_noop" not in {getattr(r, "path", None) for r in app.routes}


def test_http_rejects_an_unknown_client(tiny_artifact: Path) -> None:
    with pytest.raises(ValueError, match="client: must be auto, wrk or python"):
        http.run(tiny_artifact, client="ab")


class _Recorder(BaseHTTPRequestHandler):
    """Answers 200 to every POST and remembers (path, body) of the first few."""

    seen: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if len(self.seen) < 50:
            self.seen.append((self.path, body))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_wrk_script_posts_every_body_in_turn(tmp_path: Path) -> None:
    bodies = [json.dumps({"prompt": f"p{i}"}) for i in range(3)]
    path = tmp_path / "bodies.jsonl"
    path.write_text("".join(b + "\n" for b in bodies))
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/route"
        out = http.run_load("wrk", url, concurrency=1, bodies=path, duration=1)
    finally:
        server.shutdown()
        server.server_close()
    assert out["requests"] > 3
    assert sum(out["errors"].values()) == 0
    assert set(out["latency_us"]) == {"p50", "p90", "p99", "max", "mean"}
    seen = _Recorder.seen[:7]
    assert {where for where, _ in seen} == {"/route"}
    order = [bodies.index(body.decode()) for _, body in seen]
    # the bodies in turn (wrk builds one request ahead, so the first seen may be any of them)
    assert all((b - a) % 3 == 1 for a, b in zip(order, order[1:], strict=False))


def test_footprint(tiny_artifact: Path, results: dict) -> None:
    r = results["footprint"]
    assert r["requests_sent"] == 20 and r["request_errors"] == 0
    files = {p.name: p.stat().st_size for p in tiny_artifact.iterdir() if p.is_file()}
    assert r["artifact_files"] == files and r["artifact_bytes"] == sum(files.values())
    assert 0 < r["rss_after_start_mb"] <= r["peak_rss_mb"]
    assert _metrics(r) == ["serving RSS after 20 requests", "artifact size on disk"]


def test_artifact_io(results: dict) -> None:
    r = results["artifact_io"]
    assert r["params"]["repeats"] == 2
    assert {k: len(v) for k, v in r["all_seconds"].items()} == {
        "v1_save": 2,
        "v1_load": 2,
        "v2_save": 2,
        "v2_load": 2,
    }
    assert sorted(r["v2_files"]) == ["manifest.json", "router.json", "router.npz"]
    assert r["bytes"]["v2"] == sum(r["v2_files"].values()) and r["bytes"]["v1"] > 0
    med = r["median_seconds"]
    # the medians are rounded to 0.1 ms in the JSON, the ratio is not
    assert r["ratios"]["load_v2_over_v1"] == pytest.approx(med["v2_load"] / med["v1_load"], rel=0.1)
    assert _metrics(r) == [
        "artifact load time, format 2 / format 1",
        "artifact save time, format 2 / format 1",
        "artifact size, format 2 / format 1",
    ]
    assert isinstance(r["targets"][0]["pass"], bool)


def test_training_scale(results: dict, scale_dir: Path) -> None:
    r = results["training"]
    (batch,) = r["batch"]
    (stream,) = r["stream"]
    assert batch["records"] == 40 and stream["records"] == 150
    for row in (batch, stream):
        assert row["exit_code"] == 0 and row["peak_tree_pss_mb"] > 0
    # the logs are written once and reused
    assert (scale_dir / "resampled-40-seed0.jsonl.gz").is_file()
    assert (scale_dir / "artifact-stream-150" / "manifest.json").is_file()
    assert r["batch_growth"]["time_exponent"] is None  # one size: no slope
    assert _metrics(r) == [
        "batch training, 100k records",
        "streaming training, 150 records",
        "streaming training, 1M records: peak memory",
    ]
    assert [t["pass"] for t in r["targets"]] == [None, None, None]  # nothing at 100k or 1M


def test_resampled_logs_are_reused(tmp_path: Path) -> None:
    path = training_scale.resample_logs(25, tmp_path / "r.jsonl.gz", seed=1)
    before = path.read_bytes()
    assert training_scale.resample_logs(25, path, seed=2).read_bytes() == before
    from training.logs import load_records
    from training.split import is_test

    records = load_records([path]).records
    assert len(records) == 25 and not any(is_test(r.prompt.text) for r in records)


# --------------------------------------------------------------------------- entry point
def test_summary_renders_every_result(results: dict, tmp_path: Path) -> None:
    for name, r in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"command": f"cmd {name}", **r}))
    assert main(["summary", "--results", str(tmp_path)]) == 0
    text = (tmp_path / "SUMMARY.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Decision latency (in-process)",
        "## Long inputs",
        "## HTTP throughput",
        "## Where a /route request's time goes (in-process, no server)",
        "## Serving footprint",
        "## Artifact save and load (format 2 vs the old joblib format)",
        "## Training scale (default sizes)",
    ]
    assert "| decision p50 | ≤ 100 µs |" in text
    assert "`cmd http`" in text
    assert text == render_summary(
        {k: json.loads(json.dumps({"command": f"cmd {k}", **v})) for k, v in results.items()}
    )


def test_main_runs_each_benchmark_and_writes_its_json(
    results: dict, tiny_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dispatch of `python -m bench all` and `training --full`, with every benchmark's
    `run` replaced by one returning the tiny result measured above."""
    calls: list[tuple[str, tuple, dict]] = []
    for module, name in (
        (decision, "decision"),
        (long_inputs, "long_inputs"),
        (http, "http"),
        (breakdown, "breakdown"),
        (footprint, "footprint"),
        (artifact_io, "artifact_io"),
        (training_scale, "training"),
    ):

        def fake(*args: Any, _name: str = name, **kwargs: Any) -> dict[str, Any]:
            calls.append((_name, args, kwargs))
            return results[_name]

        monkeypatch.setattr(module, "run", fake)
    out = tmp_path / "results"
    assert main(["all", "--artifact", str(tiny_artifact), "--results", str(out)]) == 0
    assert [c[0] for c in calls] == [
        "decision",
        "long_inputs",
        "http",
        "breakdown",
        "footprint",
        "artifact_io",
        "training",
    ]
    assert all(c[1] == (tiny_artifact,) for c in calls[:6]) and calls[6][1:] == ((), {})
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "SUMMARY.md",
        "artifact_io.json",
        "breakdown.json",
        "decision.json",
        "footprint.json",
        "http.json",
        "long_inputs.json",
        "training.json",
    ]
    saved = json.loads((out / "http.json").read_text())
    assert saved["command"] == "python -m bench all" and saved["benchmark"] == "http"
    assert saved["by_concurrency"] == results["http"]["by_concurrency"]

    calls.clear()
    assert main(["training", "--full", "--results", str(out)]) == 0
    assert calls == [
        (
            "training",
            (),
            {"sizes": (1000, 10_000, 100_000), "stream_sizes": (100_000, 1_000_000)},
        )
    ]
    full = json.loads((out / "training_full.json").read_text())
    assert full["command"] == "python -m bench training --full"
    assert (
        "## Training scale (`--full`: 100k batch, 1M streaming)" in (out / "SUMMARY.md").read_text()
    )


def test_ensure_artifact_keeps_a_readable_artifact(tiny_artifact: Path) -> None:
    before = (tiny_artifact / "manifest.json").read_bytes()
    assert ensure_artifact(tiny_artifact) == tiny_artifact
    assert (tiny_artifact / "manifest.json").read_bytes() == before


def test_ensure_artifact_retrains_one_with_another_featurizer(
    tiny_artifact: Path, tmp_path: Path, monkeypatch
) -> None:
    """An artifact trained with other featurizer defaults (the old 16 KiB scan window) would
    benchmark what users no longer get: it is trained again at the same path."""
    import shutil
    import subprocess

    from models.artifact import VALUES

    old = tmp_path / "old"
    shutil.copytree(tiny_artifact, old)
    values = json.loads((old / VALUES).read_text())
    values["featurizer_params"]["max_scan_chars"] = 16384
    (old / VALUES).write_text(json.dumps(values))
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: commands.append(cmd))
    assert ensure_artifact(old) == old
    assert len(commands) == 1 and commands[0][commands[0].index("--out") + 1] == str(old)
    commands.clear()
    assert ensure_artifact(tiny_artifact) == tiny_artifact  # its hash size is a training option
    assert commands == []


def test_replicas_at_tiny_size(tiny_artifact: Path, redis_server) -> None:
    from bench import replicas

    configs = (
        ("memory-1-granian", "memory", 1, "granian"),
        ("redis-1-granian", "redis", 1, "granian"),
    )
    r = replicas.run(
        tiny_artifact, duration=0.5, rounds=1, warmup=0.2, client="python", configs=configs
    )
    assert list(r["by_config"]) == ["memory-1-granian", "redis-1-granian"]
    for row in r["by_config"].values():
        assert row["errors"] == 0 and row["rps"] > 0 and row["load_generator_cpu_per_s"] > 0
    assert r["ratios"]["granian: redis ÷ memory, 1 worker"] > 0
    assert r["ratios"]["uvicorn: redis ÷ memory, 1 worker"] is None  # not run
    assert [t["pass"] for t in r["targets"]][-1] is True  # no error responses


def test_loop_simulation_runs_end_to_end_at_a_tiny_size() -> None:
    from bench import loop
    from training.trainer import TrainOptions

    opts = TrainOptions(
        c_grid=(1.0,), cv_folds=2, n_hash_features=2**12, n_jobs=1, strategy="quality"
    )
    said: list[str] = []
    result = _json_ready(
        loop.run(rounds=2, seeds=1, limit=500, train_options=opts, say=said.append)
    )
    setup = result["setup"]
    assert setup["records"] == 500
    assert setup["test"] + setup["start"] + setup["traffic"] == 500
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert sum(r["decisions"] for r in result["rounds"]) == setup["traffic"]
    explored = sum(r["explored"] for r in result["rounds"])
    assert result["exploration_share_spent"] == round(explored / setup["traffic"], 4)
    for r in result["rounds"]:
        assert set(r["covered"]) == {"quality_dr", "quality_ips", "utility_difference_dr"}
        assert r["promoted"] or not r["promoted_worse_on_test"]
    assert _metrics(result) == [
        "share of the start→full AIQ gap closed within 3 rounds",
        "rounds whose 95% interval (DR quality of the candidate) covers the truth",
        "rounds that promoted a router worse on the test side",
    ]
    assert len(said) == 2 + 2  # the split, the two routers' AIQ, one line per round
    gap = result["test_aiq"]["gap_bootstrap"]
    assert gap["gap"] == pytest.approx(result["test_aiq"]["gap"], abs=1e-4)
    assert gap["se"] >= 0 and gap["ci95"][0] <= gap["ci95"][1]
    assert result["test_aiq"]["gap_beyond_noise"] == (gap["gap"] > 2 * gap["se"])


def test_loop_gap_uses_evaluates_aiq_and_a_router_has_no_gap_with_itself() -> None:
    from bench import loop
    from models.catalog import load_catalog
    from training.evaluate import evaluate
    from training.logs import load_records
    from training.paths import bundled_data
    from training.trainer import TrainOptions, train

    catalog = load_catalog()
    path = next(p for p in bundled_data() if p.name.startswith("llmrouter_dcrouter."))
    records = load_records(path).records[:400]
    opts = TrainOptions(c_grid=(1.0,), cv_folds=2, n_hash_features=2**12, n_jobs=1)
    router = train(records[:300], catalog, opts).router
    test = records[300:]
    picks, t = loop._picks(router, test, catalog)
    mine = loop._aiq_of(picks, np.nan_to_num(t.quality), np.nan_to_num(t.cost), t.labelled)
    assert mine == pytest.approx(evaluate(router, test, catalog)["router"]["aiq"], abs=1e-6)
    assert loop.gap_with_error(router, router, test, catalog) == {
        "gap": 0.0,
        "se": 0.0,
        "ci95": [0.0, 0.0],
    }
    with pytest.raises(ValueError, match="data must be one of"):
        loop.run(data="nope")
