"""The labelled-log loader: every line form, gzip, merging, and every kind of bad line."""

from __future__ import annotations

import gzip
import json
import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import Prompt
from models.errors import DataError
from training.logs import FORMS, LoadReport, iter_records, load_records, parse_line
from training.records import Outcome, Record

DATA = Path(__file__).resolve().parents[1] / "data"

GOOD = {"prompt": "good line", "label": "m"}


def _write(path: Path, lines: list[object], *, gz: bool = False) -> Path:
    """Write JSON objects (or raw bytes/str lines as they are), one per line."""
    chunks = []
    for line in lines:
        if isinstance(line, bytes):
            chunks.append(line)
        elif isinstance(line, str):
            chunks.append(line.encode("utf-8"))
        else:
            chunks.append(json.dumps(line).encode("utf-8"))
    data = b"\n".join(chunks) + b"\n"
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


# ---------------------------------------------------------------------------------------------
# The three forms


def test_multi_outcome_form(tmp_path: Path) -> None:
    line = {
        "id": "r/1",
        "prompt": "What is 2+2?",
        "task": "math",
        "task_type": "qa",
        "source": "ignored",
        "meta": {"anything": [1, 2]},
        "extra": "ignored",
        "outcomes": {
            "big": {
                "quality": 1,
                "cost_usd": 0.002,
                "latency_ms": 350,
                "input_tokens": 12,
                "output_tokens": 3.0,
                "note": "ignored",
            },
            "small": {"quality": None, "cost_usd": None},
        },
    }
    path = _write(tmp_path / "a.jsonl", [line])
    report = load_records(path)
    assert report.records == [
        Record(
            prompt=Prompt("What is 2+2?", "What is 2+2?"),
            outcomes={
                "big": Outcome(
                    quality=1.0,
                    cost_usd=0.002,
                    latency_ms=350.0,
                    input_tokens=12,
                    output_tokens=3,
                ),
                "small": Outcome(),
            },
            id="r/1",
            task="math",
            task_type="qa",
            source=f"{path}:1",
        )
    ]
    assert report.records[0].labelled_models == ["big"]
    assert type(report.records[0].outcomes["big"].output_tokens) is int
    assert (report.lines_read, report.skipped) == (1, [])


@pytest.mark.parametrize(
    ("extra", "domain"),
    [
        pytest.param({}, None, id="none"),
        pytest.param({"domain": "anatomy"}, "anatomy", id="domain"),
        pytest.param({"meta": {"subject": "law"}}, "law", id="meta-subject"),
        pytest.param({"domain": "anatomy", "meta": {"subject": "law"}}, "anatomy", id="both"),
        pytest.param({"domain": "", "meta": {"subject": "law"}}, None, id="empty-domain"),
        pytest.param({"meta": {"subject": 3}}, None, id="meta-subject-not-a-string"),
        pytest.param({"meta": ["subject"]}, None, id="meta-not-an-object"),
    ],
)
def test_finer_domain_comes_from_domain_or_meta_subject(
    tmp_path: Path, extra: dict, domain: str | None
) -> None:
    line = {"prompt": "p", "task": "mmlu", "model": "m", "success": True, **extra}
    (record,) = load_records(_write(tmp_path / "a.jsonl", [line])).records
    assert (record.task, record.domain) == ("mmlu", domain)


def test_single_call_form(tmp_path: Path) -> None:
    line = {
        "id": 7,
        "ts": "2024-05-01T00:00:00Z",
        "prompt": "hello",
        "model": "gpt-x",
        "success": True,
        "cost_usd": 0.01,
        "latency_ms": 120.5,
        "input_tokens": 5,
        "output_tokens": 9,
        "task": "chat",
    }
    path = _write(tmp_path / "a.jsonl", [line])
    assert load_records(path).records == [
        Record(
            prompt=Prompt("hello", "hello"),
            outcomes={
                "gpt-x": Outcome(
                    quality=1.0, cost_usd=0.01, latency_ms=120.5, input_tokens=5, output_tokens=9
                )
            },
            id="7",
            task="chat",
            source=f"{path}:1",
        )
    ]


@pytest.mark.parametrize(
    ("fields", "quality"),
    [
        pytest.param({"success": False}, 0.0, id="success-false"),
        pytest.param({"success": True}, 1.0, id="success-true"),
        pytest.param({"quality": 0.25}, 0.25, id="quality"),
        pytest.param({"quality": 0.25, "success": True}, 0.25, id="quality-wins-over-success"),
        pytest.param({"quality": None, "success": False}, 0.0, id="null-quality-uses-success"),
    ],
)
def test_single_call_quality(tmp_path: Path, fields: dict, quality: float) -> None:
    path = _write(tmp_path / "a.jsonl", [{"prompt": "p", "model": "m", **fields}])
    (record,) = load_records(path).records
    assert record.outcomes == {"m": Outcome(quality=quality)}


def test_label_form(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", [{"prompt": "route me", "label": "claude", "id": "x"}])
    assert load_records(path).records == [
        Record(prompt=Prompt("route me", "route me"), label="claude", id="x", source=f"{path}:1")
    ]


def test_messages_with_image_parts(tmp_path: Path) -> None:
    messages = [
        {"role": "system", "content": "You describe pictures."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
            ],
        },
    ]
    path = _write(tmp_path / "a.jsonl", [{"messages": messages, "label": "vision-model"}])
    (record,) = load_records(path).records
    assert record.prompt == Prompt(
        text="You describe pictures.\n\nWhat is in these?",
        last_user="What is in these?",
        turns=1,
        images=2,
        has_system=True,
    )
    assert record.label == "vision-model"


def test_parse_line() -> None:
    assert FORMS == ("outcomes", "single", "label")
    form, record = parse_line({"prompt": "p", "model": "m", "quality": 0.5}, source="f:3")
    assert form == "single"
    assert record == Record(
        prompt=Prompt("p", "p"), outcomes={"m": Outcome(quality=0.5)}, source="f:3"
    )
    with pytest.raises(DataError) as info:
        parse_line({"prompt": "p"}, source="f:3")
    assert str(info.value).startswith("f:3: needs one of 'outcomes'")


# ---------------------------------------------------------------------------------------------
# Files: gzip, plain, blank lines, several files


MIXED = [
    {"prompt": "a", "outcomes": {"m": {"quality": 0.5}}},
    {"prompt": "b", "label": "m"},
    {"prompt": "c", "model": "m", "success": True},
]


@pytest.mark.parametrize(
    ("name", "gz"),
    [
        pytest.param("logs.jsonl", False, id="plain"),
        pytest.param("logs.jsonl.gz", True, id="gz-suffix"),
        pytest.param("logs.jsonl", True, id="gzip-magic-without-suffix"),
        pytest.param("logs.log", False, id="any-suffix"),
    ],
)
def test_plain_and_gzip_read_the_same(tmp_path: Path, name: str, gz: bool) -> None:
    path = _write(tmp_path / name, MIXED, gz=gz)
    report = load_records(path)
    assert [(r.prompt.text, r.label, r.outcomes) for r in report.records] == [
        ("a", None, {"m": Outcome(quality=0.5)}),
        ("b", "m", {}),
        ("c", None, {"m": Outcome(quality=1.0)}),
    ]
    assert [r.source for r in report.records] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert [r.prompt.text for r in iter_records(path)] == ["a", "b", "c"]


def test_gz_suffix_without_gzip_data(tmp_path: Path) -> None:
    path = _write(tmp_path / "logs.jsonl.gz", MIXED)
    with pytest.raises(DataError) as info:
        load_records(path, skip_invalid=True)
    assert (info.value.path, info.value.line) == (str(path), None)
    assert info.value.reason == "has a .gz suffix but is not gzip-compressed"


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", ["", GOOD, "   ", "\t\r", GOOD, ""])
    report = load_records(path)
    assert [r.source for r in report.records] == [f"{path}:2", f"{path}:5"]
    assert (report.lines_read, report.skipped) == (6, [])


def test_empty_file(tmp_path: Path) -> None:
    for name in ("empty.jsonl", "empty.jsonl.gz"):
        (tmp_path / name).write_bytes(b"")
        assert load_records(tmp_path / name) == LoadReport(records=[], lines_read=0, skipped=[])


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "caf\xc3\xa9", "label": "m"}\r\n')
    (record,) = load_records(path).records
    assert record.prompt.text == "café"


def test_several_files_in_order(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [{"prompt": "1", "label": "m"}])
    b = _write(tmp_path / "b.jsonl.gz", [{"prompt": "2", "label": "m"}], gz=True)
    report = load_records([str(a), b])
    assert [r.source for r in report.records] == [f"{a}:1", f"{b}:1"]
    assert report.lines_read == 2


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    for skip in (False, True):
        with pytest.raises(DataError) as info:
            load_records(missing, skip_invalid=skip)
        assert (info.value.path, info.value.line, info.value.reason) == (
            str(missing),
            None,
            "no such file",
        )
        assert str(info.value) == f"{missing}: no such file"
    with pytest.raises(DataError, match="is a directory"):
        load_records(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        list(iter_records(missing))


def test_no_paths() -> None:
    with pytest.raises(ValueError, match="at least one path"):
        load_records([])


# ---------------------------------------------------------------------------------------------
# Merging single-call rows


def test_single_call_rows_merge_per_prompt(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "a.jsonl",
        [
            {"id": "1", "prompt": "p", "model": "a", "success": True, "cost_usd": 0.01},
            {"prompt": "q", "model": "a", "quality": 0.5},
            {"prompt": "p", "label": "a"},  # another form: never merged
            {"id": "4", "prompt": "p", "model": "b", "quality": 0.2, "task": "t"},
            {
                "prompt": "p",
                "model": "a",
                "success": False,
                "cost_usd": 0.03,
                "input_tokens": 3,
            },
            {"prompt": "p", "model": "a", "quality": 0.5, "input_tokens": 4, "latency_ms": 9},
        ],
    )
    report = load_records(path)
    assert report.records == [
        Record(
            prompt=Prompt("p", "p"),
            outcomes={
                # quality: mean of 1, 0, 0.5; cost: mean of the two rows with one;
                # tokens: mean of 3 and 4, rounded half to even.
                "a": Outcome(quality=0.5, cost_usd=0.02, latency_ms=9.0, input_tokens=4),
                "b": Outcome(quality=0.2),
            },
            id="1",
            source=f"{path}:1",
        ),
        Record(prompt=Prompt("q", "q"), outcomes={"a": Outcome(quality=0.5)}, source=f"{path}:2"),
        Record(prompt=Prompt("p", "p"), label="a", source=f"{path}:3"),
    ]


def test_merging_keys_on_the_normalised_prompt(tmp_path: Path) -> None:
    user = [{"role": "user", "content": "hi"}]
    with_system = [{"role": "system", "content": "hi"}]
    with_image = [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image"}]}]
    path = _write(
        tmp_path / "a.jsonl",
        [
            {"prompt": "hi", "model": "a", "quality": 1},
            {"messages": user, "model": "b", "quality": 1},  # same as the bare prompt
            {"messages": with_system, "model": "c", "quality": 1},
            {"messages": with_image, "model": "d", "quality": 1},
            {"prompt": "hi ", "model": "e", "quality": 1},
        ],
    )
    report = load_records(path)
    assert [sorted(r.outcomes) for r in report.records] == [["a", "b"], ["c"], ["d"], ["e"]]


def test_merging_spans_files_and_iter_records_does_not_merge(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jsonl", [{"prompt": "p", "model": "x", "quality": 1}])
    b = _write(tmp_path / "b.jsonl", [{"prompt": "p", "model": "x", "quality": 0}] * 2)
    (record,) = load_records([a, b]).records
    assert record.outcomes == {"x": Outcome(quality=1 / 3)}
    assert record.source == f"{a}:1"
    assert [r.outcomes for r in iter_records(b)] == [{"x": Outcome(quality=0.0)}] * 2


@settings(max_examples=50, deadline=None)
@given(
    calls=st.lists(
        st.tuples(
            st.sampled_from(["p", "q"]),
            st.sampled_from(["a", "b"]),
            st.floats(0, 1),
            st.none() | st.floats(0, 10),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_merge_is_the_mean_per_prompt_and_model(tmp_path_factory, calls) -> None:
    rows = [{"prompt": p, "model": m, "quality": q, "cost_usd": c} for p, m, q, c in calls]
    path = _write(tmp_path_factory.mktemp("merge") / "a.jsonl", rows)
    records = load_records(path).records
    assert [r.prompt.text for r in records] == list(dict.fromkeys(p for p, *_ in calls))
    for record in records:
        for model, outcome in record.outcomes.items():
            mine = [(q, c) for p, m, q, c in calls if (p, m) == (record.prompt.text, model)]
            assert outcome.quality == pytest.approx(sum(q for q, _ in mine) / len(mine))
            costs = [c for _, c in mine if c is not None]
            if costs:
                assert outcome.cost_usd == pytest.approx(sum(costs) / len(costs))
            else:
                assert outcome.cost_usd is None
    assert sum(len(r.outcomes) for r in records) == len({(p, m) for p, m, *_ in calls})


# ---------------------------------------------------------------------------------------------
# Bad lines


def _outcome_line(**outcome: object) -> dict:
    return {"prompt": "p", "outcomes": {"m": outcome}}


def _single(**fields: object) -> dict:
    return {"prompt": "p", "model": "m", **fields}


BAD_LINES = [
    pytest.param(b"{not json", "not valid JSON", id="not-json"),
    pytest.param(b'{"prompt": "p", "label": "m"', "not valid JSON", id="cut-json"),
    pytest.param(b"\xff\xfe{}", "not valid UTF-8", id="invalid-utf8"),
    pytest.param(b'{"prompt": "caf\xe9", "label": "m"}', "not valid UTF-8", id="latin-1"),
    pytest.param([1, 2], "must be a JSON object, got array", id="array"),
    pytest.param("42", "must be a JSON object, got int", id="number"),
    pytest.param({"label": "m"}, "one of 'prompt' or 'messages' is required", id="no-prompt"),
    pytest.param(
        {"prompt": "p", "messages": [{"role": "user", "content": "p"}], "label": "m"},
        "prompt: give either 'prompt' or 'messages', not both",
        id="prompt-and-messages",
    ),
    pytest.param({"prompt": " \n", "label": "m"}, "prompt: must not be empty", id="empty-prompt"),
    pytest.param({"prompt": 3, "label": "m"}, "prompt: must be a string", id="prompt-number"),
    pytest.param(
        {"messages": "hi", "label": "m"}, "messages: must be a list", id="messages-string"
    ),
    pytest.param({"messages": [], "label": "m"}, "messages: must contain", id="messages-empty"),
    pytest.param(
        {"messages": [{"content": "hi"}], "label": "m"},
        "messages[0].role: is required",
        id="message-without-role",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": [{"type": "text"}]}], "label": "m"},
        "messages[0].content[0].text: must be a string",
        id="text-part-without-text",
    ),
    pytest.param(
        {"messages": [{"role": "user", "content": ""}], "label": "m"},
        "messages: the messages contain no text and no image",
        id="messages-without-text",
    ),
    pytest.param(
        {"prompt_sha256": "ab12", "model": "m", "success": True},
        "only 'prompt_sha256' (decision log in privacy mode); training needs the prompt text",
        id="privacy-mode",
    ),
    pytest.param({"prompt": "p"}, "needs one of 'outcomes'", id="no-form"),
    pytest.param(
        {"prompt": "p", "model": None, "label": None}, "needs one of 'outcomes'", id="nulls"
    ),
    pytest.param(
        {"prompt": "p", "label": "m", "outcomes": {"m": {"quality": 1}}},
        "has 'outcomes' and 'label': give only one of them",
        id="two-forms",
    ),
    pytest.param(
        {"prompt": "p", "outcomes": []}, "outcomes: must be a non-empty object", id="oc-list"
    ),
    pytest.param(
        {"prompt": "p", "outcomes": {}}, "outcomes: must be a non-empty object", id="oc-empty"
    ),
    pytest.param(
        {"prompt": "p", "outcomes": {"m": 1.0}}, "outcomes['m']: must be an object", id="oc-number"
    ),
    pytest.param(
        {"prompt": "p", "outcomes": {" ": {"quality": 1}}},
        "outcomes: model names must be non-empty strings",
        id="oc-blank-model",
    ),
    pytest.param(
        _outcome_line(cost_usd=1), "outcomes['m'].quality: is required", id="oc-no-quality"
    ),
    pytest.param(
        _outcome_line(quality="1"),
        "outcomes['m'].quality: must be a number, got string",
        id="quality-string",
    ),
    pytest.param(
        _outcome_line(quality=True),
        "outcomes['m'].quality: must be a number, got boolean",
        id="quality-bool",
    ),
    pytest.param(
        _outcome_line(quality=1.5), "outcomes['m'].quality: must be between 0 and 1", id="q>1"
    ),
    pytest.param(
        _outcome_line(quality=-0.1), "outcomes['m'].quality: must be between 0 and 1", id="q<0"
    ),
    pytest.param(
        b'{"prompt": "p", "outcomes": {"m": {"quality": NaN}}}',
        "outcomes['m'].quality: must be a finite number",
        id="quality-nan",
    ),
    pytest.param(
        b'{"prompt": "p", "outcomes": {"m": {"quality": Infinity}}}',
        "outcomes['m'].quality: must be a finite number",
        id="quality-inf",
    ),
    pytest.param(
        _outcome_line(quality=1, cost_usd=-0.01),
        "outcomes['m'].cost_usd: must be non-negative",
        id="cost-negative",
    ),
    pytest.param(
        _outcome_line(quality=1, cost_usd="0.01"),
        "outcomes['m'].cost_usd: must be a number, got string",
        id="cost-string",
    ),
    pytest.param(
        _outcome_line(quality=1, cost_usd=False),
        "outcomes['m'].cost_usd: must be a number, got boolean",
        id="cost-bool",
    ),
    pytest.param(
        b'{"prompt": "p", "outcomes": {"m": {"quality": 1, "cost_usd": NaN}}}',
        "outcomes['m'].cost_usd: must be a finite number",
        id="cost-nan",
    ),
    pytest.param(
        b'{"prompt": "p", "outcomes": {"m": {"quality": 1, "cost_usd": 1e999}}}',
        "outcomes['m'].cost_usd: must be a finite number",
        id="cost-overflowing-float",
    ),
    pytest.param(
        _outcome_line(quality=1, cost_usd=10**400),
        "outcomes['m'].cost_usd: is too large",
        id="cost-huge-int",
    ),
    pytest.param(
        _outcome_line(quality=1, latency_ms=-1),
        "outcomes['m'].latency_ms: must be non-negative",
        id="latency-negative",
    ),
    pytest.param(
        _outcome_line(quality=1, latency_ms=[]),
        "outcomes['m'].latency_ms: must be a number, got array",
        id="latency-array",
    ),
    pytest.param(
        _outcome_line(quality=1, input_tokens=-3),
        "outcomes['m'].input_tokens: must be non-negative",
        id="tokens-negative",
    ),
    pytest.param(
        _outcome_line(quality=1, output_tokens=2.5),
        "outcomes['m'].output_tokens: must be a whole number of tokens",
        id="tokens-fraction",
    ),
    pytest.param(
        _outcome_line(quality=1, output_tokens="7"),
        "outcomes['m'].output_tokens: must be a number, got string",
        id="tokens-string",
    ),
    # Integers past 64 bits: orjson reads them as floats, the standard library as ints; both
    # are refused where they would be kept as integers.
    pytest.param(
        _outcome_line(quality=1, input_tokens=2**63),
        "outcomes['m'].input_tokens: must be below 2^63",
        id="tokens-2^63",
    ),
    pytest.param(
        _outcome_line(quality=1, input_tokens=10**30),
        "outcomes['m'].input_tokens: must be below 2^63",
        id="tokens-past-64-bits",
    ),
    pytest.param(
        b'{"id": 9223372036854775808, "prompt": "p", "outcomes": {"m": {"quality": 1}}}',
        "id: an integer id must be below 2^63 in magnitude; write it as a string",
        id="id-2^63",
    ),
    pytest.param(
        b'{"id": -123456789012345678901234567890, "prompt": "p", "outcomes": {"m": {"quality": 1}}}',
        "id: an integer id must be below 2^63 in magnitude; write it as a string",
        id="id-past-64-bits",
    ),
    pytest.param(
        _single(model="", success=True), "model: must be a non-empty string", id="model-empty"
    ),
    pytest.param(
        _single(model=3, success=True), "model: must be a non-empty string", id="model-number"
    ),
    pytest.param(_single(), "quality: a single-call row needs a 'quality'", id="no-quality"),
    pytest.param(
        _single(quality=None), "quality: a single-call row needs a 'quality'", id="null-quality"
    ),
    pytest.param(
        _single(success=None),
        "success: is null (no feedback arrived for this call), so the row has no quality label"
        " and cannot be used for training",
        id="success-null",
    ),
    pytest.param(
        _single(success="yes"), "success: must be true or false, got string", id="success-str"
    ),
    pytest.param(_single(success=1), "success: must be true or false, got int", id="success-int"),
    pytest.param(_single(quality=2), "quality: must be between 0 and 1", id="single-q>1"),
    pytest.param(
        _single(quality=True), "quality: must be a number, got boolean", id="single-q-bool"
    ),
    pytest.param(
        _single(quality=1, cost_usd=-1), "cost_usd: must be non-negative", id="single-cost"
    ),
    pytest.param(
        _single(quality=1, input_tokens=True),
        "input_tokens: must be a number, got boolean",
        id="single-tokens-bool",
    ),
    pytest.param(
        {"prompt": "p", "label": ""}, "label: must be a non-empty string", id="label-empty"
    ),
    pytest.param(
        {"prompt": "p", "label": 5}, "label: must be a non-empty string", id="label-number"
    ),
    pytest.param({"prompt": "p", "label": "m", "task": 5}, "task: must be a string", id="task"),
    pytest.param(
        {"prompt": "p", "label": "m", "task_type": {}},
        "task_type: must be a string",
        id="task-type",
    ),
    pytest.param({"prompt": "p", "label": "m", "id": [1]}, "id: must be a string", id="id"),
    pytest.param(
        {"prompt": "p", "label": "m", "domain": ["law"]},
        "domain: must be a string",
        id="domain",
    ),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_bad_line_raises(tmp_path: Path, line: object, reason: str, gz: bool) -> None:
    path = _write(tmp_path / ("a.jsonl.gz" if gz else "a.jsonl"), [GOOD, line, GOOD], gz=gz)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.path, info.value.line) == (str(path), 2)
    assert reason in info.value.reason
    assert str(info.value) == f"{path}:2: {info.value.reason}"
    with pytest.raises(DataError) as streamed:
        list(iter_records(path))
    assert str(streamed.value) == str(info.value)


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_line_is_skipped_and_reported(tmp_path: Path, line: object, reason: str) -> None:
    path = _write(tmp_path / "a.jsonl", [GOOD, line, GOOD])
    report = load_records(path, skip_invalid=True)
    assert [r.source for r in report.records] == [f"{path}:1", f"{path}:3"]
    assert report.lines_read == 3
    ((where, why),) = report.skipped
    assert where == f"{path}:2"
    assert reason in why
    assert report.skipped_by_reason() == {why: 1}
    seen: list[tuple[str, str]] = []
    streamed = list(iter_records(path, skip_invalid=True, on_skip=lambda w, r: seen.append((w, r))))
    assert [r.source for r in streamed] == [f"{path}:1", f"{path}:3"]
    assert seen == report.skipped


def test_skipped_by_reason_counts(tmp_path: Path) -> None:
    lines = [GOOD, "nope", _single(success=None), "nope", _single(success=None), "]", GOOD]
    report = load_records(_write(tmp_path / "a.jsonl", lines), skip_invalid=True)
    assert len(report.records) == 2
    assert len(report.skipped) == 5
    assert report.skipped_by_reason() == {
        "not valid JSON: Expecting value": 3,
        "success: is null (no feedback arrived for this call), so the row has no quality label"
        " and cannot be used for training": 2,
    }
    assert list(report.skipped_by_reason().values()) == [3, 2]  # most frequent first


def test_iter_records_skip_needs_a_hook(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.jsonl", [GOOD])
    with pytest.raises(ValueError, match="needs on_skip"):
        iter_records(path, skip_invalid=True)


# ---------------------------------------------------------------------------------------------
# Broken gzip


def _truncated_gzip(tmp_path: Path, n_lines: int) -> tuple[Path, int]:
    """A gzip of `n_lines` distinct lines cut in half; returns (path, lines before the cut)."""
    lines = [
        {"prompt": f"prompt number {i} " + "x" * (i % 50), "label": "m"} for i in range(n_lines)
    ]
    data = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    packed = gzip.compress(data, compresslevel=1, mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with gzip.open(path, "rb") as f:
        complete = 0
        try:
            for _ in f:
                complete += 1
        except EOFError:
            pass
    return path, complete


def test_truncated_gzip_raises_naming_the_last_good_line(tmp_path: Path) -> None:
    path, complete = _truncated_gzip(tmp_path, 4000)
    assert 0 < complete < 4000
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.path, info.value.line) == (str(path), None)
    assert info.value.reason == (
        f"gzip stream is truncated: it ends after line {complete}, the last complete line"
    )
    with pytest.raises(DataError, match="truncated"):
        list(iter_records(path))


def test_truncated_gzip_keeps_what_was_read_when_skipping(tmp_path: Path) -> None:
    path, complete = _truncated_gzip(tmp_path, 4000)
    report = load_records(path, skip_invalid=True)
    assert len(report.records) == report.lines_read == complete
    assert report.records[-1].prompt.text.startswith(f"prompt number {complete - 1} ")
    assert report.skipped == [
        (
            str(path),
            f"gzip stream is truncated: it ends after line {complete}, the last complete line",
        )
    ]


def test_corrupt_gzip(tmp_path: Path) -> None:
    data = b"".join(json.dumps(GOOD).encode() + b"\n" for _ in range(3))
    packed = bytearray(gzip.compress(data, mtime=0))
    packed[-8] ^= 0xFF  # break the CRC in the trailer
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(DataError, match=r"gzip stream is corrupt after line \d+") as info:
        load_records(path)
    assert info.value.line is None
    report = load_records(path, skip_invalid=True)
    assert len(report.skipped) == 1
    assert report.skipped[0][0] == str(path)


# ---------------------------------------------------------------------------------------------
# The bundled data


@pytest.mark.parametrize(
    ("name", "count", "models", "tasks"),
    [
        pytest.param("routerbench", 2537, 11, {"arc-challenge", "winogrande", "mbpp"}, id="rb"),
        pytest.param("routellm", 15441, 2, {"mmlu", "gsm8k", "mt_bench"}, id="routellm"),
        pytest.param("llmrouter_dcrouter", 6108, 9, None, id="dcrouter"),
    ],
)
def test_bundled_files_load(name: str, count: int, models: int, tasks: set[str] | None) -> None:
    path = DATA / f"{name}.jsonl.gz"
    start = time.perf_counter()
    report = load_records(path)
    elapsed = time.perf_counter() - start
    assert (len(report.records), report.lines_read, report.skipped) == (count, count, [])
    assert elapsed < 10
    assert {m for r in report.records for m in r.outcomes} == {
        m for m in report.records[0].outcomes
    }
    assert len(report.records[0].outcomes) == models
    assert all(len(r.labelled_models) == models for r in report.records)
    assert all(r.id and r.id.startswith(f"{name}/") for r in report.records)
    if tasks is not None:
        assert {r.task for r in report.records} == tasks
    # RouteLLM's MMLU rows name their subject in meta.subject: the finer domain
    subjects = {r.domain for r in report.records if r.domain is not None}
    assert len(subjects) == (57 if name == "routellm" else 0)
    assert all(r.task == "mmlu" for r in report.records if r.domain is not None)
    costs = [o.cost_usd for r in report.records for o in r.outcomes.values()]
    assert all(c is not None and math.isfinite(c) and c >= 0 for c in costs)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63) + 1, 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES, ensure_ascii=st.booleans())
def test_the_fast_json_reader_reads_what_the_standard_library_reads(value, ensure_ascii):
    from training.logs import _decode

    line = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8")
    decoded = _decode(line, 2)
    assert decoded == json.loads(line)
    # same types too: an int stays an int, a float a float
    assert json.dumps(decoded) == json.dumps(json.loads(line))
