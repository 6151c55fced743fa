"""The CLI's messages say what happened and why (issue 15): skip reasons, "never reached"
instead of None, full model names, the artifact checked before the logs are read, ignored
directly labelled rows, each feature once."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from pathlib import Path

import pytest

from promptroute.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _lines(name: str, n: int) -> list[str]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[:: len(lines) // n][:n]


@pytest.fixture(scope="module")
def mixed_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RouterBench rows (long model names), two directly labelled rows, one one-model row."""
    rows = _lines("routerbench.jsonl.gz", 60)
    rows.append(json.dumps({"prompt": "Prove Fermat's little theorem.", "label": "claude-v2"}))
    rows.append(json.dumps({"prompt": "Name a prime.", "label": "gpt-4-1106-preview"}))
    rows.append(
        json.dumps({"prompt": "2+2?", "outcomes": {"gpt-4-1106-preview": {"quality": 1.0}}})
    )
    path = tmp_path_factory.mktemp("logs") / "mixed.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_eval_says_why_records_were_skipped_and_shows_full_names(
    tiny_artifact: Path, mixed_logs: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "r.json"
    code, out, err = _run(
        ["eval", "--model", str(tiny_artifact), "--logs", str(mixed_logs), "--json", str(out_json)]
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "skipped 3 record(s):" in lines
    assert "  2 × directly labelled (a best-model label, no outcomes to measure)" in lines
    assert "  1 × only 1 labelled model (no choice to score)" in lines
    report = json.loads(out_json.read_text())
    assert report["skipped_by_reason"] == {
        "directly labelled (a best-model label, no outcomes to measure)": 2,
        "only 1 labelled model (no choice to score)": 1,
    }
    assert report["dataset"] == "mixed.jsonl (all)"
    # Full names: the longest RouterBench name is 33 characters (it was cut at 32).
    for name in report["single_models"]:
        assert any(line.startswith(f"  {name} ") for line in lines), name
    assert "meta/code-llama-instruct-34b-chat" in report["single_models"]
    assert "None" not in out


def test_never_reached_instead_of_none(capsys: pytest.CaptureFixture[str]) -> None:
    from promptroute.cli import _print_table

    point = {"quality": 0.5, "cost": 1e-3}
    report = {
        "n": 10,
        "strategy": "quality",
        "single_models": {"a": point, "b": point},
        "oracle": point,
        "heuristic": point,
        "zero_router": {"aiq": 0.5},
        "router": {
            "aiq": 0.5,
            "max_quality": 0.5,
            "cost_to_match_best": None,
            "cost_to_95pct_best": None,
            "accuracy": 0.5,
            "macro_f1": 0.5,
            "quality_at_heuristic_cost": None,
        },
        "two_model": {"strong": "a", "weak": "b", "apgr": 0.1, "cpt50": None, "cpt80": None},
    }
    _print_table(report)
    out = capsys.readouterr().out
    assert "None" not in out
    assert "cost to match best single: never reached   to 95%: never reached" in out
    assert "CPT50 never reached  CPT80 never reached" in out


def test_eval_with_a_missing_artifact_fails_before_reading_the_logs(tmp_path: Path) -> None:
    missing_logs = tmp_path / "not-read.jsonl"  # would be a different error if it were read
    code, _out, err = _run(["eval", "--model", str(tmp_path / "nope"), "--logs", str(missing_logs)])
    assert code == 2
    assert str(tmp_path / "nope") in err
    assert "not-read.jsonl" not in err
    assert "loaded" not in err  # no log line: the logs were never opened


def test_streaming_training_says_it_ignored_directly_labelled_rows(
    mixed_logs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "streamed"
    code, stdout, err = _run(
        ["train", "--streaming", "--logs", str(mixed_logs), "--out", str(out), "--chunk-size", "20"]
    )
    assert code == 0, err
    assert json.loads(stdout)["ignored_directly_labelled"] == 2
    assert (
        'warning: ignored 2 directly labelled row(s) ({"prompt", "label"}): --streaming fits '
        "the quality head, which needs outcomes; train without --streaming to use them"
    ) in err


def test_route_lists_each_feature_once(tiny_artifact: Path) -> None:
    code, out, err = _run(
        [
            "route",
            "Write a Python function that merges two sorted lists",
            "--model",
            str(tiny_artifact),
        ]
    )
    assert code == 0, err
    features = [f["feature"] for f in json.loads(out)["explanation"]["top_features"]]
    assert len(features) == len(set(features))
    assert not [f for f in features if f.startswith("ff.")]
