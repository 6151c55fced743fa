"""Decision and outcome rows, written by different processes, joined back by request id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.decision_rows import JoinReport, join_rows
from models.errors import DataError
from promptroute.cli import expand_logs
from training.logs import iter_records, load_records


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _decision(rid: str, prompt: str, model: str = "a", fallbacks=("b",)) -> dict:
    return {
        "id": rid,
        "kind": "decision",
        "prompt": prompt,
        "model": model,
        "fallbacks": list(fallbacks),
        "input_tokens": 3,
        "ts": 1.0,
        "router_version": "v",
    }


def _outcome(rid: str, model: str, success: bool, **extra) -> dict:
    return {"id": rid, "kind": "outcome", "model": model, "success": success, "ts": 2.0, **extra}


def test_join_puts_each_outcome_on_its_decision_whatever_the_order():
    rows = [
        ("b:1", _outcome("r1", "b", False, error_type="timeout")),
        ("a:1", _decision("r1", "hello")),
        ("a:2", _decision("r2", "bye")),
        ("b:2", _outcome("r1", "a", True, quality=0.5)),
        ("c:1", {"prompt": "plain", "model": "a", "success": True}),
        ("b:3", _outcome("ghost", "a", True)),
    ]
    report = JoinReport()
    joined = list(join_rows(rows, report))
    assert joined[0] == ("c:1", {"prompt": "plain", "model": "a", "success": True})
    assert [(w, r["id"], r["model"], r["success"]) for w, r in joined[1:]] == [
        ("a:1", "r1", "b", False),
        ("a:1", "r1", "a", True),
        ("a:2", "r2", "a", None),
    ]
    assert joined[1][1]["routed_model"] == "a" and joined[1][1]["error_type"] == "timeout"
    assert "routed_model" not in joined[2][1] and joined[2][1]["quality"] == 0.5
    assert (report.decisions, report.outcomes, report.unanswered) == (2, 3, 1)
    assert report.orphans == [("b:3", "ghost")]


def test_train_reads_a_folder_of_per_process_files_and_joins_across_them(tmp_path):
    logs = tmp_path / "logs"
    _write(logs / "decisions.host-1.jsonl", [_decision("r1", "hello"), _decision("r2", "bye")])
    _write(logs / "decisions.host-1.jsonl.1", [_decision("r0", "older")])
    _write(logs / "decisions.host-2.jsonl", [_outcome("r1", "a", True), _outcome("r0", "b", False)])
    (logs / "notes.txt").write_text("not a log")
    files = expand_logs([str(logs)])
    assert [Path(f).name for f in files] == [
        "decisions.host-1.jsonl",
        "decisions.host-1.jsonl.1",
        "decisions.host-2.jsonl",
    ]
    assert expand_logs([str(logs / "*.jsonl")]) == [files[0], files[2]]
    report = load_records(files, skip_invalid=True)
    assert {r.prompt.text: dict(r.outcomes) for r in report.records}.keys() == {"hello", "older"}
    by_prompt = {r.prompt.text: r for r in report.records}
    assert by_prompt["hello"].outcomes["a"].quality == 1.0
    assert by_prompt["older"].outcomes["b"].quality == 0.0
    assert [where for where, _ in report.skipped] == [f"{files[0]}:2"]  # r2: no outcome
    with pytest.raises(DataError) as info:
        load_records(files)  # without --skip-invalid the unlabelled decision stops it
    assert (info.value.path, info.value.line) == (files[0], 2)


def test_an_outcome_without_its_decision_is_named_at_its_line(tmp_path):
    path = _write(tmp_path / "o.jsonl", [_outcome("lost", "a", True)])
    with pytest.raises(DataError) as info:
        load_records([path])
    assert (info.value.path, info.value.line) == (str(path), 1)
    assert "whose decision row is in none of the files read" in str(info.value)


def test_streaming_refuses_rows_it_cannot_join(tmp_path):
    path = _write(tmp_path / "d.jsonl", [_decision("r1", "hello")])
    with pytest.raises(DataError, match="must be joined with its outcome across files"):
        list(iter_records(path))


@pytest.mark.parametrize("pattern", ["nothing-*.jsonl", "empty-folder"])
def test_a_folder_or_glob_that_matches_nothing_is_an_error(tmp_path, pattern):
    (tmp_path / "empty-folder").mkdir()
    with pytest.raises(DataError):
        expand_logs([str(tmp_path / pattern)])
