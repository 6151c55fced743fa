"""The hand-rule baseline: tiers from prompt rules, models from catalog prices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import normalize
from models.catalog import Catalog
from models.errors import UnknownModelError
from training.heuristic import HeuristicRouter, heuristic_tier


def _model(name: str, inp: float, out: float) -> dict:
    return {
        "name": name,
        "input_price_per_1m": inp,
        "output_price_per_1m": out,
        "latency_ms": 100,
        "context_window": 1000,
    }


CATALOG = Catalog.from_dict(
    {
        "models": [
            _model("gold", 10.0, 30.0),  # 40
            _model("bronze", 0.1, 0.1),  # 0.2
            _model("silver", 1.0, 2.0),  # 3
            _model("silver-b", 2.0, 1.0),  # 3: ties with silver, broken by name
            _model("tin", 0.0, 0.0),  # 0
        ]
    }
)


@pytest.mark.parametrize(
    ("text", "tier"),
    [
        pytest.param("```python\nprint(1)\n```", "strong", id="code-fence"),
        pytest.param("def add(a, b):\n    return a + b", "strong", id="python-def"),
        pytest.param("class Stack(object): pass", "strong", id="class"),
        pytest.param("import numpy as np", "strong", id="import"),
        pytest.param("#include <stdio.h>", "strong", id="include"),
        pytest.param("SELECT name FROM users", "strong", id="sql"),
        pytest.param("Write a Python function that reverses a list", "strong", id="write-function"),
        pytest.param("What is 17 * 23?", "strong", id="arithmetic-beats-simple"),
        pytest.param(r"Simplify \frac{1}{2} + \frac{1}{3}", "strong", id="latex"),
        pytest.param("Solve for y: 2y = 8", "strong", id="solve"),
        pytest.param("How many legs do 3 spiders have?", "strong", id="how-many"),
        pytest.param("Prove that there are infinitely many primes.", "strong", id="prove"),
        pytest.param("Explain step by step how a bill becomes law.", "strong", id="step-by-step"),
        pytest.param("Compare Rome and Athens.", "strong", id="compare"),
        pytest.param("What is the capital of France?", "cheap", id="what-is"),
        pytest.param("  who was Ada Lovelace", "cheap", id="who-was-leading-space"),
        pytest.param("Define entropy.", "cheap", id="define"),
        pytest.param("Name three primary colours.", "cheap", id="name"),
        pytest.param("WHEN DID the war end?", "cheap", id="case-insensitive"),
        pytest.param("What is " + "very " * 70 + "long?", "mid", id="simple-but-long"),
        pytest.param("Write a short poem about autumn leaves.", "mid", id="creative"),
        pytest.param("Tell me about the history of Lyon.", "mid", id="plain"),
        pytest.param("Named entities are fun to tag.", "mid", id="name-needs-a-word-boundary"),
        pytest.param("I think, therefore I am: what is it?", "mid", id="simple-only-at-start"),
    ],
)
def test_tier(text: str, tier: str) -> None:
    assert heuristic_tier(normalize(text)) == tier


def test_tier_reads_the_last_user_turn() -> None:
    prompt = normalize(
        messages=[
            {"role": "system", "content": "You write code: def f(x): return x"},
            {"role": "user", "content": "Solve 2 + 2"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "What is your name?"},
        ]
    )
    assert heuristic_tier(prompt) == "cheap"


def test_tier_scans_a_bounded_window() -> None:
    # A code marker beyond the first 16384 characters is not seen, so a huge prompt costs
    # the same as a 16 KB one.
    far = normalize("a " * 9000 + "def f(x):")
    assert heuristic_tier(far) == "mid"
    near = normalize("def f(x):" + " a" * 9000)
    assert heuristic_tier(near) == "strong"


@settings(max_examples=100, deadline=None)
@given(text=st.text(min_size=1).filter(str.strip))
def test_tier_is_total(text: str) -> None:
    assert heuristic_tier(normalize(text)) in {"strong", "mid", "cheap"}


@pytest.mark.parametrize(
    ("models", "tiers"),
    [
        pytest.param(
            ["gold", "bronze", "silver", "silver-b", "tin"],
            {"cheap": "tin", "mid": "silver", "strong": "gold"},
            id="five",
        ),
        pytest.param(
            ["gold", "bronze", "silver", "tin"],
            {"cheap": "tin", "mid": "bronze", "strong": "gold"},
            id="four-lower-middle",
        ),
        pytest.param(
            ["silver-b", "silver", "bronze"],
            {"cheap": "bronze", "mid": "silver", "strong": "silver-b"},
            id="equal-price-by-name",
        ),
        pytest.param(
            ["gold", "bronze"], {"cheap": "bronze", "mid": "bronze", "strong": "gold"}, id="two"
        ),
        pytest.param(
            ["silver"], {"cheap": "silver", "mid": "silver", "strong": "silver"}, id="one"
        ),
    ],
)
def test_tiers_by_price(models: list[str], tiers: dict[str, str]) -> None:
    assert HeuristicRouter(CATALOG).tiers(models) == tiers


def test_choose_maps_the_tier_onto_the_models() -> None:
    h = HeuristicRouter(CATALOG)
    models = ["gold", "silver", "bronze"]
    assert h.choose(normalize("Prove it."), models) == "gold"
    assert h.choose(normalize("What is love?"), models) == "bronze"
    assert h.choose(normalize("Write a haiku."), models) == "silver"


def test_choose_needs_catalog_models() -> None:
    with pytest.raises(UnknownModelError, match="'platinum'"):
        HeuristicRouter(CATALOG).choose(normalize("hi"), ["gold", "platinum"])
