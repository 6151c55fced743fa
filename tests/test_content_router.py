"""The seed design's ContentRouter rules (bench/content_router.py), the decision benchmark's
second baseline: each rule on its own example, and the early stop against a full count."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import content_router
from bench.content_router import CATEGORIES, ContentRouter, content_category
from features.text import Prompt


@pytest.mark.parametrize(
    ("text", "category"),
    [
        pytest.param("```python\nx = 1\n```\nimport os", "code", id="fence-and-import"),
        pytest.param("def f(x):\n    pass\nclass A: pass", "code", id="def-and-class"),
        pytest.param("function go() {}\nfunction stop() {}", "code", id="two-functions"),
        pytest.param("import os", "simple", id="one-code-match-is-not-code"),
        pytest.param("What is 2 + 2 and 3*4?", "math", id="two-sums"),
        pytest.param("Solve the equation x + 1 = 3", "math", id="words-and-arithmetic"),
        pytest.param("Compute the INTEGRAL $\\int_0^1 x dx$", "math", id="integral-and-latex"),
        pytest.param("\\frac{1}{2} + \\sqrt{2}", "math", id="latex-commands"),
        pytest.param("Solve it.", "simple", id="one-math-match-is-not-math"),
        pytest.param("What is the capital of France?", "simple", id="short-question"),
        pytest.param("x" * 500, "simple", id="500-characters"),
        pytest.param("x" * 501, "complex", id="501-characters"),
        pytest.param("Explain in detail how tides work.", "complex", id="explain-in-detail"),
        pytest.param("Please ANALYZE this.", "complex", id="analyze-any-case"),
        pytest.param("Compare and contrast cats and dogs", "complex", id="compare-and-contrast"),
        pytest.param("Go step by step", "complex", id="step-by-step"),
        pytest.param("A comprehensive list", "complex", id="comprehensive"),
    ],
)
def test_each_rule_on_its_example(text: str, category: str) -> None:
    assert content_category(text) == category


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(
        st.sampled_from(["def f(", "import x", "class A", "1+2", "solve", "integral", "$x$", " "])
        | st.text(max_size=5),
        max_size=12,
    ).map("".join)
)
def test_stopping_at_the_second_match_is_counting_them_all(text: str) -> None:
    lower = text.lower()
    for patterns, scanned in (
        (content_router._CODE_PATTERNS, text),
        (content_router._MATH_PATTERNS, lower),
    ):
        total = sum(len(p.findall(scanned)) for p in patterns)
        assert content_router._at_least(patterns, scanned, 2) == (total >= 2)


def test_the_router_maps_each_category_to_its_model() -> None:
    router = ContentRouter({c: f"model-{c}" for c in CATEGORIES})
    assert router.choose(Prompt("import a\nimport b", "")) == "model-code"
    assert router.choose(Prompt("hi", "")) == "model-simple"
    with pytest.raises(ValueError, match=r"models: no model for \['math'\]"):
        ContentRouter({"code": "a", "simple": "b", "complex": "c"})
