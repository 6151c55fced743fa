"""The answer verifier: its features, its payload, its training, and the cascade curves."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import normalize
from models.artifact import load_router, save_router
from models.errors import DataError
from models.verifier import STRUCTURE_NAMES, Verifier, structure, text_features
from training.cascade import escalation_curve, threshold_for
from training.logs import load_records, parse_line
from training.records import Outcome, Record
from training.verifier import VerifierOptions, examples, train_verifiers

ROOT = Path(__file__).resolve().parent.parent
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def _f(prompt: str, answer: str) -> dict[str, float]:
    return dict(zip(STRUCTURE_NAMES, structure(prompt, answer).tolist(), strict=True))


# ------------------------------------------------------------------------------ features
def test_structure_reads_the_final_answer_and_checks_the_arithmetic() -> None:
    f = _f("Tom has 3 apples and buys 4 more. How many?", "3 + 4 = 7 apples.\n#### 7")
    assert f["marker_hash"] == 1.0 and f["marker_answer_is"] == 0.0
    assert f["final_present"] == 1.0 and f["final_integer"] == 1.0
    assert f["final_in_prompt"] == 0.0 and f["final_is_last_number"] == 1.0
    assert f["calc_count_log"] == pytest.approx(math.log1p(1))
    assert f["calc_wrong_share"] == 0.0 and f["ends_cleanly"] == 1.0 and f["empty"] == 0.0

    g = _f("Split 7 cakes among 2 people.", "7 / 2 = 4.5, so the answer is 3.5")
    assert g["marker_answer_is"] == 1.0 and g["marker_hash"] == 0.0
    assert g["final_integer"] == 0.0 and g["final_decimal"] == 1.0
    assert g["calc_any_wrong"] == 1.0 and g["calc_wrong_share"] == 1.0


@pytest.mark.parametrize(
    ("answer", "name"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("   \n ", "empty", id="blank"),
        pytest.param("I'm sorry, but I cannot help with that.", "refusal", id="refusal"),
        pytest.param("We compute 3 * 4 = 12 and then", "len_chars_log", id="cut-off"),
        pytest.param("The result is \\boxed{12}.", "marker_boxed", id="boxed"),
    ],
)
def test_structure_flags(answer: str, name: str) -> None:
    f = _f("What is 3 times 4?", answer)
    assert f[name] > 0
    if name == "len_chars_log":  # a reply cut off mid-sentence does not end cleanly
        assert f["ends_cleanly"] == 0.0


@given(st.text(max_size=300), st.text(max_size=300))
@settings(max_examples=200, deadline=None)
def test_features_are_finite_and_deterministic(prompt: str, answer: str) -> None:
    a, b = structure(prompt, answer), structure(prompt, answer)
    assert a.shape == (len(STRUCTURE_NAMES),) and np.all(np.isfinite(a))
    assert np.array_equal(a, b)
    idx, vals = text_features(answer, 256)
    assert np.all((idx >= 0) & (idx < 256)) and len(set(idx.tolist())) == idx.size
    if idx.size:
        assert float(vals @ vals) == pytest.approx(1.0)


def test_numbers_too_large_for_a_float_are_no_final_answer() -> None:
    f = _f("How many?", "#### " + "9" * 400)
    assert f["marker_hash"] == 1.0 and f["final_present"] == 1.0 and f["final_integer"] == 0.0
    assert np.all(np.isfinite(structure("How many?", "#### " + "9" * 400)))


def test_text_features_ignore_the_particular_numbers() -> None:
    a = text_features("so she pays 12 dollars", 1024)
    b = text_features("so she pays 97 dollars", 1024)
    assert np.array_equal(a[0], b[0]) and np.allclose(a[1], b[1])


# ------------------------------------------------------------------------------ payload
def _verifier() -> Verifier:
    rng = np.random.default_rng(0)
    return Verifier(
        dense_w=rng.normal(size=len(STRUCTURE_NAMES)),
        hashed_w=rng.normal(size=512).astype(np.float32),
        bias=0.25,
        threshold=0.4,
        report={"model": WEAK, "examples": 3},
    )


def test_payload_round_trip_is_arrays_and_plain_values() -> None:
    v = _verifier()
    payload = v.to_payload()
    for key, value in payload.items():
        assert isinstance(value, np.ndarray | int | float | str | list | dict), key
    w = Verifier.from_payload(payload)
    assert w.score("q 2+2?", "2 + 2 = 4\n#### 4") == v.score("q 2+2?", "2 + 2 = 4\n#### 4")
    assert (w.threshold, w.report, w.n_hash) == (0.4, {"model": WEAK, "examples": 3}, 512)


def test_payload_from_other_features_is_refused() -> None:
    payload = {**_verifier().to_payload(), "feature_version": 99}
    with pytest.raises(ValueError, match="retrain it"):
        Verifier.from_payload(payload)


def test_artifact_keeps_the_verifiers(tmp_path: Path, tiny_router, catalog) -> None:
    import dataclasses

    router = dataclasses.replace(tiny_router, verifiers={WEAK: _verifier()})
    save_router(router, tmp_path / "a", catalog=catalog.to_dict(), training={}, metrics={})
    loaded, manifest = load_router(tmp_path / "a")
    assert set(loaded.verifiers) == {WEAK}
    assert loaded.verifiers[WEAK].score("p", "#### 4") == _verifier().score("p", "#### 4")
    assert manifest["verifiers"] == {WEAK: {"model": WEAK, "examples": 3}}


# ------------------------------------------------------------------------------ logs
def test_logs_carry_the_response_per_outcome_and_per_single_call(tmp_path: Path) -> None:
    path = tmp_path / "logs.jsonl"
    rows = [
        {
            "prompt": "p1",
            "outcomes": {WEAK: {"quality": 1, "response": "#### 4"}, STRONG: {"quality": 1}},
        },
        {"prompt": "p2", "model": WEAK, "success": True, "response": "a"},
        {"prompt": "p2", "model": WEAK, "success": False, "response": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r1, r2 = load_records(path).records
    assert r1.outcomes[WEAK].responses == (("#### 4", 1.0),)
    assert r1.outcomes[STRONG].response is None
    assert r2.outcomes[WEAK].responses == (("a", 1.0), ("b", 0.0))
    assert r2.outcomes[WEAK].quality == 0.5
    assert [(e.answer, e.quality) for e in examples([r1, r2])] == [
        ("#### 4", 1.0),
        ("a", 1.0),
        ("b", 0.0),
    ]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        pytest.param(
            {"prompt": "p", "outcomes": {WEAK: {"quality": 1, "response": 5}}},
            f"outcomes['{WEAK}'].response: must be a string (the answer text), got int",
            id="outcomes",
        ),
        pytest.param(
            {"prompt": "p", "model": WEAK, "success": True, "response": ["x"]},
            "response: must be a string (the answer text), got array",
            id="single",
        ),
    ],
)
def test_a_response_that_is_not_text_is_refused(row: dict, reason: str) -> None:
    with pytest.raises(DataError) as e:
        parse_line(row, source="f.jsonl:3")
    assert str(e.value) == f"f.jsonl:3: {reason}"


# ------------------------------------------------------------------------------ training
def _synthetic(n: int) -> list[Record]:
    """Answers whose structure gives them away: right ones end '#### N', wrong ones do not."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        a, b = int(rng.integers(2, 50)), int(rng.integers(2, 50))
        right = bool(rng.random() < 0.6)
        if right:
            answer = f"He has {a} and gets {b}. {a} + {b} = {a + b}\n#### {a + b}"
        else:
            answer = f"He has {a} and gets {b}, so {a} + {b} = {a + b + 3} and maybe {a / 7:.2f}"
        out.append(
            Record(
                prompt=normalize(prompt=f"Q{i}: Sam has {a} marbles and gets {b}. How many?"),
                outcomes={
                    WEAK: Outcome(quality=float(right), responses=((answer, float(right)),)),
                    STRONG: Outcome(quality=1.0),
                },
            )
        )
    return out


def test_trains_one_verifier_per_model_that_separates_right_from_wrong(catalog) -> None:
    opts = VerifierOptions(c_grid=(1.0,), folds=3)
    verifiers = train_verifiers(_synthetic(120), catalog, opts)
    assert set(verifiers) == {WEAK}  # GPT-4 has no logged answers here
    v = verifiers[WEAK]
    assert v.report["oof_auc"] > 0.95
    assert v.report["oof_cascade"]["strong"] == STRONG
    assert 0.0 < v.threshold < 1.0
    good = v.score("Sam has 4 and gets 5. How many?", "4 + 5 = 9\n#### 9")
    bad = v.score("Sam has 4 and gets 5. How many?", "4 + 5 = 12 and maybe 0.57")
    assert good > v.threshold > bad


def test_too_few_answers_train_no_verifier(catalog) -> None:
    assert train_verifiers(_synthetic(20), catalog, VerifierOptions(c_grid=(1.0,))) == {}


# ------------------------------------------------------------------------------ cascade
def test_escalation_curve_by_hand() -> None:
    score = np.array([0.9, 0.1, 0.5])
    qw, qs = np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0])
    cw, cs = np.array([1.0, 1.0, 1.0]), np.array([10.0, 10.0, 10.0])
    cas = escalation_curve(score, qw, qs, cw, cs, cheap_always_paid=True)
    assert cas.quality.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert cas.cost.tolist() == pytest.approx([1.0, 13 / 3, 23 / 3, 11.0])
    assert cas.thresholds[1:3].tolist() == pytest.approx([0.3, 0.7])
    pre = escalation_curve(score, qw, qs, cw, cs, cheap_always_paid=False)
    assert pre.cost.tolist() == pytest.approx([1.0, 4.0, 7.0, 10.0])
    # 95% of the strong model (quality 1.0) needs two escalations
    assert cas.cost_to_reach(0.95) == pytest.approx(23 / 30)
    assert pre.cost_to_reach(0.95) == pytest.approx(0.7)
    assert threshold_for(cas) == pytest.approx(0.7)
    # both wrong answers escalated first: every gap recovered at 2/3 of the share axis
    assert cas.apgr() == pytest.approx(pre.apgr())
    assert cas.summary()["latency_ms_at_95pct"] is None
    lat = escalation_curve(
        score,
        qw,
        qs,
        cw,
        cs,
        cheap_always_paid=True,
        lat_weak=np.full(3, 100.0),
        lat_strong=np.full(3, 1000.0),
    )
    assert lat.summary()["latency_ms_at_95pct"] == pytest.approx(100 + 2000 / 3, abs=0.1)


# ------------------------------------------------------------------------------ bundled data
def test_bundled_responses_are_the_converter_output_of_the_raw_csv(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "gsm8k").mkdir(parents=True)
    (raw / "gsm8k" / "gsm8k_responses.csv").write_text(
        "prompt,mistralai/Mixtral-8x7B-Instruct-v0.1,gpt-4-1106-preview,"
        "mistralai/Mixtral-8x7B-Instruct-v0.1_response,gpt-4-1106-preview_response\n"
        '"What is 2+2?",False,True,"2+2=5\n#### 5",The answer is 4.\n'
    )
    (raw / "gsm8k" / "contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": "What is 2+2?", "train_prompt": "x"}) + "\n"
    )
    out = tmp_path / "out.jsonl.gz"
    done = subprocess.run(
        [sys.executable, str(ROOT / "data" / "gsm8k_responses.py"), str(raw), "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.startswith("1 records\n")
    (rec,) = [json.loads(line) for line in gzip.open(out, "rt", encoding="utf-8")]
    assert rec["outcomes"][WEAK] == {
        "quality": 0.0,
        "cost_usd": (3 * 0.6 + 3 * 0.6) / 1e6,
        "input_tokens": 3,
        "output_tokens": 3,
        "response": "2+2=5\n#### 5",
    }
    assert rec["meta"] == {"contaminated": True}
    (loaded,) = load_records(out).records
    assert loaded.outcomes[STRONG].response == "The answer is 4."


def test_bundled_file_has_every_gsm8k_prompt_with_both_answers() -> None:
    records = load_records(ROOT / "data" / "gsm8k_responses.jsonl.gz").records
    assert len(records) == 1319
    assert all(r.outcomes[m].response for r in records for m in (WEAK, STRONG))
    mean = {m: np.mean([r.outcomes[m].quality for r in records]) for m in (WEAK, STRONG)}
    assert round(mean[STRONG], 3) == 0.857 and round(mean[WEAK], 3) == 0.638


# ------------------------------------------------------------------------------ evaluation
def test_eval_reports_the_cascade_next_to_the_pre_call_router(tiny_router, catalog) -> None:
    import dataclasses

    from training.evaluate import evaluate

    answered = _synthetic(60)
    for r in answered:
        r.task = "answered"
    silent = [
        Record(
            prompt=normalize(prompt=f"Which letter, {i}? A) x B) y"),
            outcomes={WEAK: Outcome(quality=float(i % 3 == 0)), STRONG: Outcome(quality=1.0)},
            task="letters",
        )
        for i in range(40)
    ]
    verifiers = train_verifiers(answered, catalog, VerifierOptions(c_grid=(1.0,), folds=3))
    router = dataclasses.replace(tiny_router, verifiers=verifiers)
    report = evaluate(router, silent + answered, catalog, min_task_size=20)
    by_task = report["by_task"]
    cas = by_task["answered"]["cascade"]
    assert (cas["weak"], cas["strong"], cas["n"]) == (WEAK, STRONG, 60)
    assert cas["score_source"] == f"verifier on {WEAK}'s logged answer"
    assert cas["auc_weak_right"]["cascade"] > 0.95
    assert cas["cascade"]["apgr"] > cas["precall"]["apgr"]
    assert cas["pays"] is True and cas["latency"] is None
    assert set(cas["at_default_threshold"]) == {
        "threshold",
        "strong_share",
        "quality",
        "cost_vs_strong",
    }
    letters = by_task["letters"]["cascade"]
    assert letters["score_source"].startswith("prompt only: the logs have no answer text")
    # Same ordering as the pre-call router, with the cheap call paid on top: never cheaper.
    assert letters["cascade"]["apgr"] == letters["precall"]["apgr"]
    assert letters["pays"] is False and letters["break_even_weak_cost_share"] == 0.0
    assert cas["break_even_weak_cost_share"] > 0.3
    assert report["cascade"]["n"] == 60  # over all records, the answered ones are used
