"""Static rules: first match wins, every condition must hold, bounded regex work."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import serving.rules as rules_module
from serving.config import RuleConfig, load_settings
from serving.rules import REGEX_WINDOW_CHARS, RuleOutcome, RuleSet


def _rule(name: str = "r", model: str | None = "m", candidates=None, **match) -> RuleConfig:
    return RuleConfig(name=name, match=match, model=model, candidates=candidates)


def _match(rules: RuleSet, text: str = "hello", task_type=None, metadata=None, tokens: int = 10):
    return rules.match(text=text, task_type=task_type, metadata=metadata, input_tokens=tokens)


def test_all_is_exact():
    assert sorted(rules_module.__all__) == ["REGEX_WINDOW_CHARS", "RuleOutcome", "RuleSet"]


def test_empty_rule_set_matches_nothing():
    rules = RuleSet.compile([])
    assert len(rules) == 0
    assert _match(rules) is None


def test_first_matching_rule_wins_and_outcomes_are_exact():
    rules = RuleSet.compile(
        [
            _rule("code", model="coder", task_types=["code"]),
            _rule("long", model=None, candidates=["big", "bigger"], min_input_tokens=1000),
            _rule("also-code", model="other", task_types=["code", "math"]),
        ]
    )
    assert len(rules) == 3
    assert _match(rules, task_type="code", tokens=5000) == RuleOutcome("code", "coder", None)
    assert _match(rules, task_type="chat", tokens=5000) == RuleOutcome(
        "long", None, ("big", "bigger")
    )
    assert _match(rules, task_type="math") == RuleOutcome("also-code", "other", None)
    assert _match(rules, task_type="chat") is None
    assert _match(rules, task_type=None) is None


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        pytest.param(99, False, id="below"),
        pytest.param(100, True, id="min-inclusive"),
        pytest.param(150, True, id="inside"),
        pytest.param(200, True, id="max-inclusive"),
        pytest.param(201, False, id="above"),
    ],
)
def test_token_bounds_are_inclusive(tokens, expected):
    rules = RuleSet.compile([_rule(min_input_tokens=100, max_input_tokens=200)])
    assert (_match(rules, tokens=tokens) is not None) is expected


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        pytest.param({"tier": "gold", "team": "data"}, True, id="equal-and-in-list"),
        pytest.param({"tier": "gold", "team": "ml", "extra": 1}, True, id="other-list-value"),
        pytest.param({"tier": "silver", "team": "data"}, False, id="wrong-value"),
        pytest.param({"tier": "gold", "team": "web"}, False, id="not-in-list"),
        pytest.param({"tier": "gold"}, False, id="missing-key"),
        pytest.param({}, False, id="empty"),
        pytest.param(None, False, id="no-metadata"),
        pytest.param({"tier": "gold", "team": ["data"]}, False, id="list-value-is-not-a-string"),
        pytest.param({"tier": "Gold", "team": "data"}, False, id="case-sensitive"),
    ],
)
def test_metadata_must_be_present_and_equal(metadata, expected):
    rules = RuleSet.compile([_rule(metadata={"tier": "gold", "team": ["data", "ml"]})])
    assert (_match(rules, metadata=metadata) is not None) is expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(1, id="int"),
        pytest.param(1.0, id="float"),
        pytest.param(True, id="bool"),
        pytest.param({"1": "1"}, id="dict"),
    ],
)
def test_metadata_values_are_not_coerced_to_strings(value):
    rules = RuleSet.compile([_rule(metadata={"tier": ["1", "True", "1.0"]})])
    assert _match(rules, metadata={"tier": value}) is None
    assert _match(rules, metadata={"tier": "1"}) == RuleOutcome("r", "m", None)


def test_all_conditions_of_a_rule_must_hold():
    rules = RuleSet.compile(
        [
            _rule(
                task_types=["code"],
                metadata={"team": "data"},
                min_input_tokens=10,
                max_input_tokens=20,
                prompt_regex=r"(?i)\bselect\b",
            )
        ]
    )
    good = {"text": "please SELECT *", "task_type": "code", "metadata": {"team": "data"}}
    assert _match(rules, tokens=15, **good) is not None
    for change in (
        {"text": "please pick"},
        {"task_type": "chat"},
        {"metadata": {"team": "web"}},
    ):
        assert _match(rules, tokens=15, **{**good, **change}) is None
    assert _match(rules, tokens=21, **good) is None
    assert _match(rules, tokens=9, **good) is None


def test_regex_is_searched_not_anchored():
    rules = RuleSet.compile([_rule(prompt_regex=r"\d{3}-\d{4}")])
    assert _match(rules, text="call 555-1234 now") is not None
    assert _match(rules, text="call 555-123 now") is None


@pytest.mark.parametrize(
    ("offset", "expected"),
    [
        pytest.param(0, True, id="start"),
        pytest.param(REGEX_WINDOW_CHARS - len("NEEDLE"), True, id="ends-at-window-edge"),
        pytest.param(REGEX_WINDOW_CHARS - len("NEEDLE") + 1, False, id="crosses-window-edge"),
        pytest.param(REGEX_WINDOW_CHARS + 10, False, id="beyond-window"),
    ],
)
def test_regex_only_sees_the_first_window_of_text(offset, expected):
    assert REGEX_WINDOW_CHARS == 16_384
    text = "x" * offset + "NEEDLE" + "x" * 50_000
    rules = RuleSet.compile([_rule(prompt_regex="NEEDLE")])
    assert (_match(rules, text=text) is not None) is expected


def test_rules_from_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "rules:\n"
        "  - name: sql\n"
        "    match: {prompt_regex: '(?i)select .* from'}\n"
        "    candidates: [a, b]\n"
        "  - name: vip\n"
        "    match: {metadata: {tier: gold}}\n"
        "    model: best\n",
        encoding="utf-8",
    )
    rules = RuleSet.compile(load_settings(path).rules)
    assert _match(rules, text="Select x FROM t", metadata={"tier": "gold"}) == RuleOutcome(
        "sql", None, ("a", "b")
    )
    assert _match(rules, metadata={"tier": "gold"}) == RuleOutcome("vip", "best", None)
    assert repr(rules) == "RuleSet(['sql', 'vip'])"


@settings(max_examples=80, deadline=None)
@given(
    bounds=st.tuples(
        st.none() | st.integers(min_value=0, max_value=50),
        st.none() | st.integers(min_value=0, max_value=50),
    ).filter(lambda b: b[0] is None or b[1] is None or b[0] <= b[1]),
    task_types=st.none() | st.lists(st.sampled_from("abc"), min_size=1, max_size=3),
    tokens=st.integers(min_value=0, max_value=60),
    task_type=st.none() | st.sampled_from("abcd"),
)
def test_match_agrees_with_a_direct_reading_of_the_conditions(
    bounds, task_types, tokens, task_type
):
    lo, hi = bounds
    if lo is None and hi is None and task_types is None:
        task_types = ["a"]  # a rule needs at least one condition
    rules = RuleSet.compile(
        [_rule(task_types=task_types, min_input_tokens=lo, max_input_tokens=hi)]
    )
    expected = (
        (task_types is None or task_type in task_types)
        and (lo is None or tokens >= lo)
        and (hi is None or tokens <= hi)
    )
    assert (_match(rules, task_type=task_type, tokens=tokens) is not None) is expected
