"""`promptroute retrain`: the promotion rule, new models held back, and a live reload."""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import httpx
import pytest
from fakes import LiveServer

from features.text import normalize
from models.artifact import read_manifest
from promptroute.cli import main
from serving import create_app, load_settings
from training.loop import LoopOptions, promotion_decision, retrain, routable_records
from training.records import Outcome, Record

KEY = "retrain-admin-key"
FAST = ["--c-grid", "1.0", "--cv-folds", "2", "--jobs", "1"]


@pytest.fixture(scope="module")
def decision_log(tmp_path_factory, sample_records) -> Path:
    """The RouterBench part of the sample, logged as an exploring service would log it:
    one model per prompt, drawn uniformly among its labelled models, with its propensity."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("logs") / "decisions.jsonl"
    with path.open("w") as f:
        for i, rec in enumerate(r for r in sample_records if len(r.labelled_models) > 2):
            models = sorted(rec.labelled_models)
            model = rng.choice(models)
            o = rec.outcomes[model]
            row = {
                "id": f"r{i}",
                "prompt": rec.prompt.text,
                "model": model,
                "success": o.quality >= 0.5,
                "quality": o.quality,
                "cost_usd": o.cost_usd,
                "propensity": 1 / len(models),
                "ts": 1.7e9 + i,
            }
            f.write(json.dumps(row) + "\n")
        # An unanswered decision: set aside, never trained on.
        f.write(json.dumps({"id": "late", "prompt": "p", "model": models[0], "success": None}))
        f.write("\n")
    return path


def _comparison(estimate: float, lo: float, hi: float) -> dict:
    return {"difference": {"utility": {"estimate": estimate, "ci95": [lo, hi]}}}


@pytest.mark.parametrize(
    ("ci", "margin", "promote"),
    [
        pytest.param((0.01, -0.004, 0.02), 0.005, True, id="lower-end-inside-margin"),
        pytest.param((0.01, -0.006, 0.02), 0.005, False, id="lower-end-past-margin"),
        pytest.param((0.0, 0.0, 0.0), 0.0, True, id="identical"),
        pytest.param((0.05, -0.2, 0.3), 0.005, False, id="better-but-unsure"),
    ],
)
def test_promotion_needs_the_lower_end_within_the_margin(ci, margin, promote):
    ok, why = promotion_decision(_comparison(*ci), margin)
    assert ok is promote
    assert why.startswith(f"candidate utility minus serving utility is {ci[0]:+.4f}")


def test_models_with_too_few_outcomes_are_held_back():
    def rec(text: str, *models: str) -> Record:
        return Record(normalize(prompt=text), {m: Outcome(quality=1.0) for m in models})

    records = [rec("a", "x", "new"), rec("b", "x"), rec("c", "x", "y"), rec("d", "new")]
    kept, counts, held = routable_records(records, min_outcomes=3)
    assert counts == {"x": 3, "new": 2, "y": 1}
    assert held == ["new", "y"]
    assert [sorted(r.outcomes) for r in kept] == [["x"], ["x"], ["x"]]  # "d" had only "new"
    kept, _counts, held = routable_records(records, min_outcomes=1)
    assert held == [] and len(kept) == 4


@pytest.mark.parametrize(
    "bad", [{"holdout_share": 0}, {"holdout_share": 1.0}, {"margin": -0.1}, {"min_outcomes": -1}]
)
def test_loop_options_are_validated(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        LoopOptions(**bad)


def test_retrain_promotes_and_saves_with_a_report(decision_log, tiny_artifact, catalog, tmp_path):
    from training.trainer import TrainOptions

    out = tmp_path / "candidate"
    report = retrain(
        [decision_log],
        [],
        tiny_artifact,
        out,
        catalog,
        LoopOptions(holdout_share=0.25, margin=1.0, min_outcomes=5),
        train_options=TrainOptions(c_grid=(1.0,), cv_folds=2, n_jobs=1, n_hash_features=2**12),
    )
    assert report["promoted"] is True
    c = report["comparison"]
    assert c["skipped_rows"] == {
        "no_feedback": 1,
        "no_propensity": 0,
        "label_only": 0,
        "no_decision": 0,
    }
    total = c["newest_rows"] + report["training"]["decision_rows"]
    assert c["newest_rows"] == c["single_calls"] == round(0.25 * total)
    assert c["candidate"]["supporting_decisions"] <= c["newest_rows"]
    assert report["artifact"]["router_version"] == read_manifest(out)["router_version"]
    assert (
        read_manifest(out)["training"]["previous_router_version"]
        == report["serving"]["router_version"]
    )


def test_cli_retrain_reloads_a_running_service(decision_log, tiny_artifact, tmp_path, monkeypatch):
    (tmp_path / "arts").mkdir()
    # Reload reads only from the service's artifacts directory: retrain writes into it.
    settings = load_settings(artifact=str(tiny_artifact), artifacts_dir=str(tmp_path / "arts"))
    server = LiveServer(create_app(settings, environ={"PROMPTROUTE_ADMIN_KEY": KEY}))
    url = server.start()
    try:
        before = httpx.get(f"{url}/readyz").json()["router_version"]
        monkeypatch.setenv("PROMPTROUTE_ADMIN_KEY", KEY)
        out, err = io.StringIO(), io.StringIO()
        argv = ["retrain", "--logs", str(decision_log), "--serving", str(tiny_artifact)]
        argv += ["--artifacts-dir", str(tmp_path / "arts"), "--margin", "1", "--service", url]
        argv += ["--min-outcomes", "5", *FAST]
        files = ["--json", str(tmp_path / "r.json"), "--report", str(tmp_path / "r.md")]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, *files])
        assert code == 0, err.getvalue()
        summary = json.loads(out.getvalue())
        assert summary["promoted"] is True
        new = summary["artifact"]["router_version"]
        assert summary["reload"]["router_version"] == new
        assert summary["reload"]["previous_version"] == before
        assert httpx.get(f"{url}/readyz").json()["router_version"] == new
        md = (tmp_path / "r.md").read_text()
        assert md.startswith("# promptroute retrain\n\n**Promoted**: candidate utility minus")
        assert json.loads((tmp_path / "r.json").read_text())["reload"]["router_version"] == new

        # A wrong key: the candidate is saved, the service keeps its model, the user is told.
        monkeypatch.setenv("PROMPTROUTE_ADMIN_KEY", "wrong")
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 2
        message = err.getvalue().splitlines()[-1]  # after the progress lines
        assert message.startswith(f"promptroute: error: --service: {url}/admin/reload answered 401")
        assert "(the candidate is saved at" in message
        assert httpx.get(f"{url}/readyz").json()["router_version"] == new
    finally:
        server.stop()


def test_cli_retrain_without_the_key_variable(decision_log, tiny_artifact, tmp_path, monkeypatch):
    monkeypatch.delenv("PROMPTROUTE_ADMIN_KEY", raising=False)
    err = io.StringIO()
    argv = [
        "retrain",
        "--logs",
        str(decision_log),
        "--serving",
        str(tiny_artifact),
        "--margin",
        "1",
    ]
    argv += ["--artifacts-dir", str(tmp_path), "--service", "http://127.0.0.1:9", *FAST]
    argv += ["--min-outcomes", "5"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert main(argv) == 2
    assert err.getvalue() == (
        "promptroute: error: --admin-key-env: environment variable PROMPTROUTE_ADMIN_KEY is not set\n"
    )  # said before any training


def test_cli_eval_on_decision_logs_reports_off_policy_estimates(
    decision_log, tiny_artifact, tmp_path
):
    out, err = io.StringIO(), io.StringIO()
    argv = ["eval", "--logs", str(decision_log), "--model", str(tiny_artifact)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--json", str(tmp_path / "ope.json")])
    assert code == 0, err.getvalue()
    text = out.getvalue()
    assert text.startswith("off-policy estimate for router ")
    assert "quality, doubly robust" in text and "quality, inverse propensity" in text
    report = json.loads((tmp_path / "ope.json").read_text())
    assert report["skipped_rows"]["no_feedback"] == 1
    for key in ("quality", "cost_usd"):
        for est in ("ips", "dr"):
            lo, hi = report[key][est]["ci95"]
            assert lo <= report[key][est]["estimate"] <= hi
    assert 0 < report["supporting_decisions"] < report["n"]


def test_newest_slice_follows_decision_time_not_file_order(tmp_path) -> None:
    # Two workers' logs: B's file is read second but holds the older decisions; a labelled row
    # (no time) counts as older than any traffic.
    from training.loop import _newest_slice
    from training.offpolicy import read_decisions

    def row(i: int, ts: float | None) -> str:
        out = {
            "id": f"r{i}",
            "prompt": f"prompt {i}",
            "model": "m",
            "success": True,
            "quality": 1.0,
            "propensity": 0.5,
        }
        if ts is not None:
            out["ts"] = ts
        return json.dumps(out) + "\n"

    a, b = tmp_path / "decisions.a.jsonl", tmp_path / "decisions.b.jsonl"
    a.write_text(row(0, 300.0) + row(1, 100.0) + row(2, 400.0))
    b.write_text(row(3, 200.0) + row(4, None) + row(5, 200.0))
    decisions, _ = read_decisions([a, b])
    assert [d.ts for d in decisions] == [300.0, 100.0, 400.0, 200.0, None, 200.0]
    older, newest = _newest_slice(decisions, 0.5)
    prompts = [d.record.prompt.text for d in older + newest]
    # untimed first, then by time; the two rows at 200.0 keep their file order
    assert prompts == [f"prompt {i}" for i in (4, 1, 3, 5, 0, 2)]
    assert [d.record.prompt.text for d in newest] == ["prompt 5", "prompt 0", "prompt 2"]
