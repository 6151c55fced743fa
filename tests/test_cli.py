"""The `promptroute` command end to end, in-process, on a small sample of the bundled data."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from models.artifact import ARRAYS, file_sha256
from promptroute.cli import main
from serving.app import create_app
from serving.config import load_settings
from tests.fakes import TestClient
from training.split import is_test

DATA = Path(__file__).resolve().parents[1] / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAIN_ARGS = ["--c-grid", "1.0", "--cv-folds", "2", "--jobs", "1"]


def _sample_lines(name: str, n: int) -> list[bytes]:
    with gzip.open(DATA / name, "rb") as f:
        lines = [line for line in f if line.strip()]
    step = len(lines) // n
    return lines[::step][:n]


@pytest.fixture(autouse=True)
def _never_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test passes --model; training the full default model here would be a bug."""

    def refuse(*_a: Any, **_k: Any) -> None:
        pytest.fail("a test reached ensure_default_artifact (pass --model)")

    import training.build

    monkeypatch.setattr(training.build, "ensure_default_artifact", refuse)


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 real lines: 40 RouteLLM (2 models) and 40 RouterBench (11 models)."""
    lines = _sample_lines("routellm.jsonl.gz", 40) + _sample_lines("routerbench.jsonl.gz", 40)
    path = tmp_path_factory.mktemp("logs") / "sample.jsonl"
    path.write_bytes(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))
    return path


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def trained(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    art = tmp_path_factory.mktemp("art") / "model"
    code, out, err = _run(["train", "--logs", str(logs), "--out", str(art), *TRAIN_ARGS])
    assert code == 0, err
    return art, out, err


@pytest.fixture(scope="module")
def art(trained: tuple[Path, str, str]) -> Path:
    return trained[0]


def _prompts(logs: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in logs.read_text().splitlines()]


# --------------------------------------------------------------------------- train
def test_train_prints_a_summary_and_writes_the_artifact(trained: tuple, logs: Path) -> None:
    art, out, err = trained
    summary = json.loads(out)
    assert summary["artifact"] == str(art)
    assert summary["records"] == 80
    assert summary["models"] == 12
    assert summary["default_strategy"] in ("quality", "classifier")
    assert set(summary["cv_routing"]) == {"quality", "classifier"}
    assert set(summary["calibration"]) == {"quality", "classifier"}
    manifest = json.loads((art / "manifest.json").read_text())
    assert summary["router_version"] == manifest["router_version"]
    training = manifest["training"]
    assert training["files"] == [str(logs)]
    assert training["data_sha256"] == hashlib.sha256(file_sha256(logs).encode()).hexdigest()
    assert training["split"] == "all"
    assert (training["lines_read"], training["records_loaded"]) == (80, 80)
    assert (training["records_used"], training["skipped_lines"]) == (80, 0)
    assert training["options"]["c_grid"] == [1.0]
    assert training["options"]["cv_folds"] == 2
    assert training["options"]["calibrate_per_model"] is True  # the default
    assert training["options"]["domain_groups"] == 16
    assert training["options"]["idf_power"] == 0.0
    assert "options" not in manifest["metrics"]
    assert "loaded 80 records from 1 file(s); using 80 (all side)" in err
    assert "80 records, 12 models; extracting features" in err  # progress


def test_train_options_are_validated(logs: Path, tmp_path: Path) -> None:
    code, out, err = _run(
        ["train", "--logs", str(logs), "--out", str(tmp_path / "m"), "--cv-folds", "1"]
    )
    assert code == 2 and out == ""
    assert err == "promptroute: error: cv_folds: must be between 2 and 20\n"
    assert not (tmp_path / "m").exists()


def test_train_targets_are_mutually_exclusive(logs: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            [
                "train",
                "--logs",
                str(logs),
                "--out",
                str(tmp_path / "m"),
                "--knob",
                "1",
                "--target-budget",
                "0.3",
            ]
        )
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_train_with_an_incomplete_catalog(logs: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(
        "models:\n"
        "  - {name: gpt-4-1106-preview, input_price_per_1m: 10, output_price_per_1m: 30,"
        " latency_ms: 1000, context_window: 1000}\n"
    )
    code, _out, err = _run(
        ["train", "--logs", str(logs), "--out", str(tmp_path / "m"), "--catalog", str(catalog)]
    )
    assert code == 2
    last = err.splitlines()[-1]
    assert last.startswith(f"promptroute: error: {logs}:1: ")
    assert f"are not in the catalog {catalog}: '" in last
    assert last.endswith(f"; add them to {catalog} with their prices (or pass --catalog FILE)")
    assert not (tmp_path / "m").exists()


# --------------------------------------------------------------------------- eval
def test_eval_writes_json_report_and_plot(art: Path, logs: Path, tmp_path: Path) -> None:
    out_json, out_md, out_png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    code, out, _err = _run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            str(logs),
            "--json",
            str(out_json),
            "--report",
            str(out_md),
            "--plot",
            str(out_png),
        ]
    )
    assert code == 0
    assert out.startswith("records: 80   strategy: ")
    assert "skipped" not in out
    assert "ORACLE" in out and "HEURISTIC" in out and "router: AIQ" in out
    report = json.loads(out_json.read_text())
    for key in (
        "n",
        "models",
        "single_models",
        "oracle",
        "heuristic",
        "router",
        "zero_router",
        "two_model",
        "by_task",
    ):
        assert key in report
    assert report["n"] == 80 and len(report["models"]) == 12
    assert (
        report["router_version"]
        == json.loads((art / "manifest.json").read_text())["router_version"]
    )
    md = out_md.read_text()
    assert md.startswith("# promptroute evaluation: sample.jsonl (all)\n")
    assert "| AIQ (router) |" in md
    assert out_png.read_bytes()[:8] == PNG_MAGIC
    assert out_png.stat().st_size > 10_000


def test_eval_split_test_uses_only_the_test_side(art: Path, logs: Path, tmp_path: Path) -> None:
    n_test = sum(is_test(p) for p in _prompts(logs))
    assert 0 < n_test < 80
    code, _out, err = _run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            str(logs),
            "--split",
            "test",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    assert f"loaded 80 records from 1 file(s); using {n_test} (test side)" in err
    assert json.loads((tmp_path / "r.json").read_text())["n"] == n_test


def test_eval_missing_artifact(logs: Path, tmp_path: Path) -> None:
    code, out, err = _run(["eval", "--model", str(tmp_path / "nope"), "--logs", str(logs)])
    assert code == 2
    assert err.endswith(
        f"promptroute: error: {tmp_path / 'nope'}: not an artifact folder "
        f"(expected a directory with manifest.json, router.json and {ARRAYS})\n"
    )


def test_tampered_artifact_is_refused(art: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    data = bytearray((bad / ARRAYS).read_bytes())
    data[100] ^= 0xFF
    (bad / ARRAYS).write_bytes(bytes(data))
    code, out, err = _run(["route", "hello", "--model", str(bad)])
    assert code == 2 and out == ""
    assert err.startswith(f"promptroute: error: {bad / ARRAYS}: sha256 ")
    assert err.endswith("refusing to load it\n")


# --------------------------------------------------------------------------- signing
SIGNING_KEY = "cli-test-signing-key-0123456789"


def test_train_signs_when_the_key_is_set(
    logs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTROUTE_ARTIFACT_KEY", SIGNING_KEY)
    out_dir = tmp_path / "signed"
    code, out, err = _run(["train", "--logs", str(logs), "--out", str(out_dir), *TRAIN_ARGS])
    assert code == 0, err
    assert json.loads(out)["signed"] is True
    code, out, err = _run(["route", "hello", "--model", str(out_dir)])
    assert (code, err) == (0, "")
    monkeypatch.setenv("PROMPTROUTE_ARTIFACT_KEY", "another-key-of-enough-length")
    code, out, err = _run(["route", "hello", "--model", str(out_dir)])
    assert code == 2 and out == ""
    assert err.startswith(f"promptroute: error: {out_dir}: the signature does not match")


def test_sign_an_existing_artifact(
    art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(art, copy)
    monkeypatch.delenv("PROMPTROUTE_ARTIFACT_KEY", raising=False)
    code, out, err = _run(["sign", str(copy)])
    assert (code, out) == (2, "")
    assert err == (
        "promptroute: error: PROMPTROUTE_ARTIFACT_KEY: not set; export the signing key to sign "
        "an artifact\n"
    )
    monkeypatch.setenv("PROMPTROUTE_ARTIFACT_KEY", SIGNING_KEY)
    code, out, err = _run(["route", "hello", "--model", str(copy)])
    assert code == 2
    assert f"{copy}: unsigned artifact, and PROMPTROUTE_ARTIFACT_KEY is set" in err
    code, out, err = _run(["sign", str(copy)])
    version = json.loads((copy / "manifest.json").read_text())["router_version"]
    assert (code, err) == (0, "")
    assert out == f"signed {copy} (router {version}) with the key in PROMPTROUTE_ARTIFACT_KEY\n"
    code, out, err = _run(["route", "hello", "--model", str(copy)])
    assert (code, err) == (0, "")


def test_sign_refuses_a_tampered_artifact(
    art: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(art, bad)
    (bad / ARRAYS).write_bytes((bad / ARRAYS).read_bytes()[:-1])
    monkeypatch.setenv("PROMPTROUTE_ARTIFACT_KEY", SIGNING_KEY)
    code, out, err = _run(["sign", str(bad)])
    assert code == 2 and out == ""
    assert err.startswith(f"promptroute: error: {bad / ARRAYS}: sha256 ")
    assert not (bad / "signature.json").exists()


def test_old_format_artifact_says_retrain(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "router.joblib").write_bytes(b"\x80\x04not really a pickle")
    (old / "manifest.json").write_text('{"format_version": 1}')
    code, out, err = _run(["route", "hello", "--model", str(old)])
    assert code == 2 and out == ""
    assert err == (
        f"promptroute: error: {old}: this artifact uses the old format 1 (a pickled "
        "router.joblib, which promptroute no longer opens); retrain it with "
        f"`promptroute train --logs LOGS --out {old}`\n"
    )


# --------------------------------------------------------------------------- bad input lines
@pytest.fixture
def bad_logs(logs: Path, tmp_path: Path) -> Path:
    lines = logs.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"prompt": "x", "outcomes": {"m": {"quality": 2}}}\n'  # line 5
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_bad_line_stops_with_file_and_line(art: Path, bad_logs: Path) -> None:
    code, out, err = _run(["eval", "--model", str(art), "--logs", str(bad_logs)])
    assert code == 2 and out == ""
    assert err.startswith(f"promptroute: error: {bad_logs}:5: outcomes['m'].quality")
    assert err.count("\n") == 1  # one message, no traceback


def test_skip_invalid_counts_the_skip(art: Path, bad_logs: Path, tmp_path: Path) -> None:
    code, _out, err = _run(
        [
            "eval",
            "--model",
            str(art),
            "--logs",
            str(bad_logs),
            "--skip-invalid",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 0
    assert "skipped 1 invalid line(s):" in err
    assert f"e.g. {bad_logs}:5: outcomes['m'].quality" in err
    assert "loaded 79 records from 1 file(s); using 79 (all side)" in err
    assert json.loads((tmp_path / "r.json").read_text())["n"] == 79


def test_missing_log_file(art: Path, tmp_path: Path) -> None:
    code, _out, err = _run(["eval", "--model", str(art), "--logs", str(tmp_path / "no.jsonl")])
    assert code == 2
    assert err == f"promptroute: error: {tmp_path / 'no.jsonl'}: no such file\n"


# --------------------------------------------------------------------------- route
def _route(art: Path, *args: str) -> dict[str, Any]:
    code, out, err = _run(["route", *args, "--model", str(art)])
    assert code == 0, err
    return json.loads(out)


def test_route_explains_the_decision(art: Path) -> None:
    """`route` prints /route's answer for the same request, plus the deciding features."""
    prompt = "Write a Python function that merges two sorted lists."
    d = _route(art, prompt)
    models = json.loads((art / "manifest.json").read_text())["models"]
    assert d["model"] in models
    ranked = [d["model"], *d["fallbacks"]]
    assert sorted(ranked[: len(models)]) == sorted(models)  # then the catalog's unscored models
    assert list(d["scores"]) == ranked[: len(models)]
    assert d["estimated_cost_usd"] > 0
    assert d["reason"]["stage"] == "classifier" and d["reason"]["removed"] == {}
    assert d["input_tokens"] == -(-len(prompt) // 4)
    assert d["explanation"]["model"] == d["model"]
    assert d["explanation"]["versus"] == d["fallbacks"][0]
    feats = d["explanation"]["top_features"]
    assert feats and all(set(f) == {"feature", "value", "contribution"} for f in feats)
    assert feats[-1]["feature"] == "hashed n-grams (total)"
    assert d["router_version"] == json.loads((art / "manifest.json").read_text())["router_version"]
    # The same request over HTTP gets the same decision (request ids aside).
    with TestClient(create_app(load_settings(artifact=str(art)), environ={})) as client:
        http = client.post("/route", json={"prompt": prompt}).json()
    for key in ("model", "fallbacks", "scores", "estimated_cost_usd", "reason", "knob"):
        assert http[key] == d[key], key


def test_route_knob_and_candidates(art: Path) -> None:
    cands = ["gpt-4-1106-preview", "claude-instant-v1", "mistralai/mistral-7b-chat"]
    cheap = _route(art, "Explain quantum tunnelling.", "--knob", "1000", "--candidates", *cands)
    assert cheap["knob"] == 1000.0
    assert set(cheap["scores"]) == set(cands)
    catalog = json.loads((art / "manifest.json").read_text())["catalog"]["models"]
    assert set(cheap["reason"]["removed"]) == {m["name"] for m in catalog} - set(cands)
    best = _route(art, "Explain quantum tunnelling.", "--knob", "0", "--candidates", *cands)
    assert best["model"] == max(best["scores"], key=best["scores"].get)
    assert cheap["estimated_cost_usd"] <= best["estimated_cost_usd"]
    one = _route(art, "hi", "--candidates", "claude-v2")
    assert (one["model"], one["fallbacks"], one["explanation"]["versus"]) == ("claude-v2", [], None)


def test_route_messages(art: Path) -> None:
    msgs = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
    ]
    d = _route(art, json.dumps(msgs), "--messages", "--output-tokens", "10")
    # text is "Be terse.\n\nWhat is 2+2?" (23 characters) -> 6 tokens
    assert d["input_tokens"] == 6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["hi", "--candidates", "claude-v2", "gpt-5"],
            "promptroute: error: candidates[1]: unknown model 'gpt-5'",
            id="unknown-candidate",
        ),
        pytest.param(["{not json", "--messages"], "promptroute: error: invalid JSON: ", id="json"),
        pytest.param(
            ['{"role": "user"}', "--messages"],
            "promptroute: error: messages: Input should be a valid list",
            id="messages-shape",
        ),
        pytest.param(["   "], "promptroute: error: prompt: must not be empty", id="empty"),
    ],
)
def test_route_bad_input(art: Path, args: list[str], message: str) -> None:
    code, out, err = _run(["route", *args, "--model", str(art)])
    assert code == 2 and out == ""
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_route_missing_artifact(tmp_path: Path) -> None:
    code, _out, err = _run(["route", "hi", "--model", str(tmp_path / "none")])
    assert code == 2
    assert "not an artifact folder" in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "route", "serve"):
        assert command in out


def test_per_model_calibration_can_be_turned_off(logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "shared"
    argv = ["train", "--no-calibrate-per-model", "--logs", str(logs), "--out", str(out)]
    code, _stdout, err = _run([*argv, *TRAIN_ARGS])
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["options"]["calibrate_per_model"] is False


@pytest.mark.parametrize(
    "flag", [["--calibrate-per-model"], ["--domain-groups", "4"], ["--idf-power", "1"]]
)
def test_batch_only_options_are_refused_with_streaming(
    logs: Path, tmp_path: Path, flag: list[str]
) -> None:
    out = tmp_path / "never"
    argv = ["train", "--streaming", *flag, "--logs", str(logs), "--out", str(out)]
    code, _stdout, err = _run(argv)
    assert code == 2 and f"{flag[0]}: applies to batch training" in err
    assert "Traceback" not in err and not out.exists()


def test_domain_groups_reach_the_manifest_and_a_bad_value_is_named(
    logs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no-finer"
    argv = ["train", "--domain-groups", "0", "--logs", str(logs), "--out", str(out)]
    code, _stdout, err = _run([*argv, *TRAIN_ARGS])
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["options"]["domain_groups"] == 0
    code, _stdout, err = _run(
        ["train", "--domain-groups", "-2", "--logs", str(logs), "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "domain_groups: must be between 0 and 1000" in err
    assert "Traceback" not in err


def test_idf_power_reaches_the_manifest_and_the_artifact_and_a_bad_value_is_named(
    logs: Path, tmp_path: Path
) -> None:
    from models.artifact import load_router

    out = tmp_path / "weighted"
    argv = ["train", "--idf-power", "1", "--logs", str(logs), "--out", str(out)]
    code, _stdout, err = _run([*argv, *TRAIN_ARGS])
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["options"]["idf_power"] == 1.0
    weights = load_router(out)[0].featurizer.column_weights_
    assert weights is not None and weights.min() >= 1.0
    code, _stdout, err = _run(
        ["train", "--idf-power", "9", "--logs", str(logs), "--out", str(tmp_path / "x")]
    )
    assert code == 2 and "idf_power: must be between 0 and 4" in err
    assert "Traceback" not in err


def test_train_streaming_writes_a_loadable_artifact_that_routes(logs: Path, tmp_path: Path) -> None:
    out = tmp_path / "streamed"
    argv = ["train", "--streaming", "--logs", str(logs), "--out", str(out), "--chunk-size", "25"]
    code, stdout, err = _run(argv)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["artifact"] == str(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["method"] == "streaming"
    assert manifest["default_strategy"] == "quality"
    code, stdout, err = _run(["route", _prompts(logs)[0], "--model", str(out)])
    assert code == 0, err
    assert json.loads(stdout)["model"] in manifest["models"]
