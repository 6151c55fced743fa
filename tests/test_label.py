"""`promptroute label` against a fake upstream and a fake judge on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_upstream import FakeUpstream
from fakes import FakeClock

from models.errors import ConfigError
from promptroute.cli import main
from promptroute.graders import GradeError, JudgeGrader, parse_judge_scores
from promptroute.label import Labeller, row_id
from promptroute.loopconfig import LabelConfig, load_loop_config
from serving.config import load_settings
from serving.gateway.upstreams import resolve_upstreams

STRONG, WEAK, JUDGE = "gpt-4-1106-preview", "gpt-3.5-turbo-1106", "claude-v2"
USAGE = (12, 7)


@pytest.fixture(scope="module")
def fake():
    with FakeUpstream() as f:
        yield f


@pytest.fixture(autouse=True)
def _clean(fake):
    fake.reset()
    yield
    fake.reset()


def contains_42(prompt: str, answer: str, row: dict[str, Any]) -> float:
    """A user's grader, named in the config as ``test_label:contains_42``."""
    return 1.0 if "42" in answer else 0.0


def _label_config(**over: Any) -> LabelConfig:
    data: dict[str, Any] = {
        "models": [STRONG, WEAK],
        "budget_usd": 10.0,
        "concurrency": 2,
        "retries": 2,
        "backoff_seconds": 0,
        "grader": {"kind": "reference", "match": "numeric"},
    }
    data.update(over)
    return LabelConfig.model_validate(data)


def _labeller(fake: FakeUpstream, catalog, config: LabelConfig, **kw: Any) -> Labeller:
    models = [*config.models, JUDGE]
    settings = load_settings(upstreams={m: {"base_url": fake.url()} for m in models})
    return Labeller(config, resolve_upstreams(settings, {}), catalog, **kw)


def _run(labeller: Labeller, rows: list[dict], out: Path):
    return asyncio.run(labeller.run(rows, out))


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _rows(n: int, reference: str = "42") -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"question {i}", "reference": reference} for i in range(n)]


def test_reference_grader_writes_multi_outcome_records(fake, catalog, tmp_path):
    clock = FakeClock(0.0)
    fake.on_request = lambda: clock.advance(0.025)  # each call "takes" 25 ms
    labeller = _labeller(fake, catalog, _label_config(concurrency=1), clock=clock)
    rows = _rows(2) + [{"id": "wrong", "prompt": "q", "reference": "41"}]
    summary = _run(labeller, rows, tmp_path / "out.jsonl")
    assert (summary.labelled, summary.call_failed, summary.grade_failed) == (3, 0, 0)
    lines = {r["id"]: r for r in _lines(tmp_path / "out.jsonl")}
    cost = {m: catalog[m].cost_usd(*USAGE) for m in (STRONG, WEAK)}
    for rid, quality in (("q0", 1.0), ("q1", 1.0), ("wrong", 0.0)):
        row = lines[rid]
        assert set(row["outcomes"]) == {STRONG, WEAK}
        for m, o in row["outcomes"].items():
            assert o == {
                "quality": quality,
                "cost_usd": cost[m],
                "input_tokens": 12,
                "output_tokens": 7,
                "latency_ms": 25.0,
            }
        assert row["grader"] == {"kind": "reference", "match": "numeric", "field": "reference"}
    assert summary.spent_usd == pytest.approx(3 * sum(cost.values()))
    # What `promptroute train` reads: the lines load as multi-outcome records.
    from training.logs import load_records

    records = load_records(tmp_path / "out.jsonl").records
    assert [sorted(r.labelled_models) for r in records] == [sorted([STRONG, WEAK])] * 3


def test_requests_carry_the_prompt_and_max_tokens(fake, catalog, tmp_path):
    _run(_labeller(fake, catalog, _label_config(max_tokens=64)), _rows(1), tmp_path / "o.jsonl")
    bodies = sorted((r.body for r in fake.requests), key=lambda b: b["model"])
    assert [b["model"] for b in bodies] == [WEAK, STRONG]
    assert bodies[0]["messages"] == [{"role": "user", "content": "question 0"}]
    assert bodies[0]["max_tokens"] == 64


def _judge_reply(scores: dict[str, float]):
    """A fake judge: finds which model wrote each labelled answer and scores it."""

    def reply(body: dict[str, Any]) -> str:
        text = body["messages"][0]["content"]
        blocks = re.findall(r"\[([A-Z])\]\nanswer from (\S+)", text)
        return "\n".join(f"{label}: {scores[model]}" for label, model in blocks)

    return reply


def test_judge_grades_answers_shown_in_a_per_prompt_order(fake, catalog, tmp_path):
    for m in (STRONG, WEAK):
        fake.reply(m, lambda body, m=m: f"answer from {m}")
    fake.reply(JUDGE, _judge_reply({STRONG: 9, WEAK: 2}))
    grader = {"kind": "judge", "model": JUDGE, "scale": 10}
    labeller = _labeller(fake, catalog, _label_config(grader=grader))
    summary = _run(labeller, _rows(12), tmp_path / "out.jsonl")
    assert summary.labelled == 12 and summary.grade_failed == 0
    for row in _lines(tmp_path / "out.jsonl"):
        assert row["outcomes"][STRONG]["quality"] == 0.9
        assert row["outcomes"][WEAK]["quality"] == 0.2
        assert row["grader"]["kind"] == "judge" and row["grader"]["model"] == JUDGE
        assert row["grading_cost_usd"] == catalog[JUDGE].cost_usd(*USAGE)
    judged = [r.body["messages"][0]["content"] for r in fake.requests if r.model == JUDGE]
    firsts = {re.search(r"\[A\]\nanswer from (\S+)", t).group(1) for t in judged}
    assert firsts == {STRONG, WEAK}  # both orders occur across the 12 prompts


def test_judge_order_is_reproducible_and_seeded(catalog):
    from promptroute.loopconfig import JudgeGraderConfig

    jc = JudgeGraderConfig(kind="judge", model=JUDGE)

    async def never(_messages: list) -> tuple[str, float]:
        raise AssertionError("ordering never calls the judge")

    a, b = JudgeGrader(jc, never, seed=0), JudgeGrader(jc, never, seed=0)
    orders = [tuple(a.order(f"p{i}", [STRONG, WEAK, JUDGE])) for i in range(30)]
    assert orders == [tuple(b.order(f"p{i}", [JUDGE, WEAK, STRONG])) for i in range(30)]
    assert len(set(orders)) > 1


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        pytest.param("A: 7", "judge reply has no score for B", id="missing"),
        pytest.param("A: 7\nB: 11", "judge score 11 for 'B' is outside 0..10", id="range"),
        pytest.param("A: 7\nA: 3\nB: 1", "judge scored label 'A' twice", id="twice"),
        pytest.param("A: 7\nB: 3\nC: 1", "judge scored unknown label 'C'", id="unknown"),
        pytest.param("A: 7/10\nB: 3", "is not '<label>: <score>'", id="format"),
        pytest.param("Scores: A: 7, B: 3", "is not '<label>: <score>'", id="prose"),
    ],
)
def test_judge_scores_are_parsed_strictly(reply, message):
    with pytest.raises(GradeError, match=re.escape(message)):
        parse_judge_scores(reply, ["A", "B"], 10)


def test_a_bad_judge_reply_keeps_the_paid_answers_unlabelled(fake, catalog, tmp_path):
    fake.reply(JUDGE, lambda body: "I think both are fine.")
    grader = {"kind": "judge", "model": JUDGE}
    summary = _run(_labeller(fake, catalog, _label_config(grader=grader)), _rows(1), tmp_path / "o")
    assert summary.grade_failed == 1
    (row,) = _lines(tmp_path / "o")
    assert {o["quality"] for o in row["outcomes"].values()} == {None}
    assert "is not '<label>: <score>'" in row["grade_error"]
    assert row["grading_cost_usd"] == catalog[JUDGE].cost_usd(*USAGE)  # the judge was paid


def test_retries_then_succeeds(fake, catalog, tmp_path):
    fake.behave(WEAK, "500")
    calls = []

    def heal() -> None:
        calls.append(1)
        if len([r for r in fake.requests if r.model == WEAK]) >= 2:
            fake.behave(WEAK, "ok")

    fake.on_request = heal
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    labeller = _labeller(fake, catalog, _label_config(backoff_seconds=0.5), sleep=sleep)
    summary = _run(labeller, _rows(1), tmp_path / "o")
    assert summary.labelled == 1 and summary.call_failed == 0
    assert [r.model for r in fake.requests].count(WEAK) == 3  # 500, 500, ok
    assert slept == [0.5, 1.0]  # exponential backoff, injected sleep


def test_exhausted_retries_and_client_errors(fake, catalog, tmp_path):
    fake.behave(WEAK, "429")
    fake.behave(STRONG, "400")
    summary = _run(_labeller(fake, catalog, _label_config(retries=1)), _rows(1), tmp_path / "o")
    assert summary.call_failed == 1 and summary.labelled == 0
    assert summary.errors == {"HTTP 429 after 2 attempt(s)": 1, "HTTP 400": 1}
    assert [r.model for r in fake.requests].count(STRONG) == 1  # a 400 is not retried
    assert not (tmp_path / "o").read_text()  # nothing to resume from: it is retried next run


def test_one_failed_model_keeps_the_others(fake, catalog, tmp_path):
    fake.behave(WEAK, "malformed")
    summary = _run(_labeller(fake, catalog, _label_config()), _rows(1), tmp_path / "o")
    (row,) = _lines(tmp_path / "o")
    assert list(row["outcomes"]) == [STRONG]
    assert row["call_errors"] == {WEAK: "malformed response (no choices[0].message.content)"}
    assert summary.labelled == 1


def test_budget_cap_stops_before_overspending_and_resume_finishes(fake, catalog, tmp_path):
    cfg = _label_config(max_tokens=100)
    per_prompt_worst = sum(catalog[m].cost_usd(3, 100) for m in (STRONG, WEAK))
    per_prompt = sum(catalog[m].cost_usd(*USAGE) for m in (STRONG, WEAK))
    out = tmp_path / "out.jsonl"
    budget = 2 * per_prompt + per_prompt_worst * 0.999  # room for 2 prompts, not a third
    first = _run(
        _labeller(fake, catalog, _label_config(max_tokens=100, budget_usd=budget)), _rows(5), out
    )
    assert first.labelled == 2 and first.not_started == 3
    assert first.stopped is not None and first.stopped.startswith("budget:")
    assert first.spent_usd <= budget
    fake.requests.clear()
    second = _run(_labeller(fake, catalog, cfg), _rows(5), out)
    assert second.already_done == 2 and second.labelled == 3 and second.stopped is None
    assert second.spent_before_usd == pytest.approx(2 * per_prompt)
    assert len(fake.requests) == 3 * 2  # the first two prompts were not called again
    assert sorted(r["id"] for r in _lines(out)) == [f"q{i}" for i in range(5)]


def test_resume_drops_a_line_cut_short(fake, catalog, tmp_path):
    out = tmp_path / "out.jsonl"
    _run(_labeller(fake, catalog, _label_config()), _rows(1), out)
    with out.open("ab") as f:
        f.write(b'{"id": "q1", "prompt": "question 1", "outc')  # a crash mid-write
    summary = _run(_labeller(fake, catalog, _label_config()), _rows(2), out)
    assert summary.already_done == 1 and summary.labelled == 1
    assert [r["id"] for r in _lines(out)] == ["q0", "q1"]


def test_concurrency_is_bounded(fake, catalog, tmp_path):
    inflight = {"now": 0, "max": 0}

    class Counting(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            inflight["now"] += 1
            inflight["max"] = max(inflight["max"], inflight["now"])
            try:
                await asyncio.sleep(0.005)  # let other tasks start while this one is in flight
                return await self.inner.handle_async_request(request)
            finally:
                inflight["now"] -= 1

        async def aclose(self) -> None:
            await self.inner.aclose()

    cfg = _label_config(models=[STRONG, WEAK, JUDGE], concurrency=2)
    summary = _run(_labeller(fake, catalog, cfg, transport=Counting()), _rows(6), tmp_path / "o")
    assert summary.labelled == 6
    assert inflight["max"] == 2


def test_callable_grader(fake, catalog, tmp_path):
    grader = {"kind": "callable", "target": "test_label:contains_42"}
    _run(_labeller(fake, catalog, _label_config(grader=grader)), _rows(1), tmp_path / "o")
    (row,) = _lines(tmp_path / "o")
    assert {o["quality"] for o in row["outcomes"].values()} == {1.0}
    assert row["grader"] == {"kind": "callable", "target": "test_label:contains_42"}


def test_reference_grader_modes():
    from promptroute.graders import ReferenceGrader
    from promptroute.loopconfig import ReferenceGraderConfig

    def grade(match: str, answer: str, ref: str, **kw: Any) -> float:
        g = ReferenceGrader(ReferenceGraderConfig(kind="reference", match=match, **kw))
        return g.grade_one(answer, {"reference": ref})

    assert grade("exact", "  Paris ", "paris") == 1.0
    assert grade("exact", "Paris", "paris", case_sensitive=True) == 0.0
    assert grade("regex", "The answer is (B).", r"\(B\)") == 1.0
    assert grade("numeric", "so 1,234.0 apples", "1234") == 1.0
    assert grade("numeric", "3 then 4", "3") == 0.0  # the last number counts
    with pytest.raises(GradeError, match="no 'reference'"):
        ReferenceGrader(ReferenceGraderConfig(kind="reference", match="exact")).grade_one("a", {})


def test_unknown_or_unconfigured_models_are_config_errors(fake, catalog):
    with pytest.raises(ConfigError, match=r"label.models: unknown model 'gpt-5'"):
        _labeller(fake, catalog, _label_config(models=["gpt-5"]))
    settings = load_settings(upstreams={STRONG: {"base_url": fake.url()}})
    with pytest.raises(ConfigError, match=rf"label.models: model '{WEAK}' has no upstream"):
        Labeller(_label_config(), resolve_upstreams(settings, {}), catalog)


@pytest.mark.parametrize(
    ("label", "field"),
    [
        pytest.param({"grader": {"kind": "vibes"}}, "label.grader", id="kind"),
        pytest.param(
            {"grader": {"kind": "reference", "match": "fuzzy"}},
            "label.grader.reference.match",
            id="match",
        ),
        pytest.param(
            {"grader": {"kind": "judge", "model": JUDGE, "template": "no slots"}},
            "label.grader.judge.template",
            id="template",
        ),
        pytest.param({"budget_usd": -1}, "label.budget_usd", id="budget"),
        pytest.param({"surprise": 1}, "label.surprise", id="extra"),
    ],
)
def test_loop_config_errors_name_the_field(tmp_path, label, field):
    base = {"models": [STRONG], "budget_usd": 1, "grader": {"kind": "reference", "match": "exact"}}
    base.update(label)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump({"label": base}))
    with pytest.raises(ConfigError) as info:
        load_loop_config(path)
    assert info.value.field == field


def test_cli_label_end_to_end(fake, tmp_path):
    config = {
        "upstreams": {m: {"base_url": fake.url()} for m in (STRONG, WEAK)},
        "label": {
            "models": [STRONG, WEAK],
            "budget_usd": 1.0,
            "grader": {"kind": "reference", "match": "numeric"},
        },
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in _rows(3)))
    out, err = io.StringIO(), io.StringIO()
    argv = ["label", "--config", str(tmp_path / "loop.yaml"), "--prompts", str(prompts)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--out", str(tmp_path / "out.jsonl")])
    assert code == 0, err.getvalue()
    summary = json.loads(out.getvalue())
    assert summary["labelled"] == 3 and summary["stopped"] is None
    assert "label: 3/3" in err.getvalue()  # plain progress lines when not on a terminal
    assert len(_lines(tmp_path / "out.jsonl")) == 3


def test_cli_label_bad_prompt_line_names_file_and_line(tmp_path, fake):
    config = {
        "upstreams": {STRONG: {"base_url": fake.url()}},
        "label": {
            "models": [STRONG],
            "budget_usd": 1,
            "grader": {"kind": "callable", "target": "test_label:contains_42"},
        },
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "ok"}\n{"messages": 3}\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [
                "label",
                "--config",
                str(tmp_path / "loop.yaml"),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "o"),
            ]
        )
    assert code == 2
    assert err.getvalue().startswith(f"promptroute: error: {prompts}:2: messages")


def test_row_id_without_an_id_is_a_stable_hash():
    assert row_id({"prompt": "hi"}) == row_id({"prompt": "hi", "reference": "x"})
    assert row_id({"prompt": "hi"}) != row_id({"prompt": "ho"})
    assert row_id({"id": 7, "prompt": "hi"}) == "7"


def test_cli_label_samples_a_decision_log(fake, tmp_path):
    config = {
        "upstreams": {STRONG: {"base_url": fake.url()}},
        "label": {
            "models": [STRONG],
            "budget_usd": 1,
            "grader": {"kind": "callable", "target": "test_label:contains_42"},
        },
    }
    (tmp_path / "loop.yaml").write_text(yaml.safe_dump(config))
    log = tmp_path / "decisions.jsonl"
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "model": WEAK, "success": True} for i in range(6)]
    rows.append({"id": "hashed", "prompt_sha256": "ab" * 32, "model": WEAK, "success": True})
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["label", "--config", str(tmp_path / "loop.yaml"), "--out", str(tmp_path / "o.jsonl")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main([*base, "--decision-log", str(log), "--sample", "4"]) == 0
    labelled = _lines(tmp_path / "o.jsonl")
    assert len(labelled) == 4 and {r["id"] for r in labelled} <= {f"r{i}" for i in range(6)}
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main([*base, "--decision-log", str(tmp_path / "none.jsonl")]) == 2
    assert (
        err.getvalue() == f"promptroute: error: {tmp_path / 'none.jsonl'}: no decision log here\n"
    )
