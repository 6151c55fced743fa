"""The feature extractor: sklearn contract, hot path == batch path, signals, bounds, hashing."""

from __future__ import annotations

import doctest
import math
import pickle
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import features
from features import (
    FEATURE_VERSION,
    Prompt,
    PromptError,
    PromptFeaturizer,
    extractor,
    from_messages,
    normalize,
    signals,
)
from features import text as text_module
from features.signals import DENSE_FEATURE_NAMES

SMALL = 2**12  # hashed columns for tests that do not pin real column numbers
NEUTRAL = "The weather was pleasant and we walked home"
ROOT = Path(__file__).resolve().parents[1]


def fitted(**params) -> PromptFeaturizer:
    return PromptFeaturizer(**{"n_hash_features": SMALL, **params}).fit([])


def dense_of(text: str | Prompt, **params) -> dict[str, float]:
    dense, _, _ = fitted(**params).transform_one(text)
    return dict(zip(extractor.FEATURE_NAMES, dense.tolist(), strict=True))


def assembled_row(f: PromptFeaturizer, prompt, task_type=None) -> np.ndarray:
    dense, cols, values = f.transform_one(prompt, task_type)
    row = np.zeros(f.n_dense_ + f.n_hash_features)
    row[: f.n_dense_] = dense
    row[cols] = values
    return row


@pytest.fixture(params=["python", "compiled"])
def hashing(request, monkeypatch) -> str:
    """Run a test on the Python reference and on the compiled hashing (features/_compiled.c)."""
    if request.param == "compiled" and extractor._compiled is None:
        pytest.skip("features._compiled is not built (see tests/test_features_compiled.py)")
    compiled = request.param == "compiled"
    monkeypatch.setattr(
        extractor, "_hashed", extractor._hashed_compiled if compiled else extractor._hashed_python
    )
    # A single prompt's row is one compiled call; the Python row goes through `_hashed`.
    monkeypatch.setattr(
        extractor,
        "_single_row",
        extractor._single_row_compiled if compiled else extractor._single_row_python,
    )
    return request.param


@pytest.fixture
def python_hashing(monkeypatch) -> None:
    """The Python path, for tests of its word cache and vectorised batches."""
    monkeypatch.setattr(extractor, "_hashed", extractor._hashed_python)
    monkeypatch.setattr(extractor, "_single_row", extractor._single_row_python)


def messages_prompt() -> Prompt:
    return from_messages(
        [
            {"role": "system", "content": "You are a careful math tutor."},
            {"role": "user", "content": "Solve x^2 = 4."},
            {"role": "assistant", "content": "x = 2 or x = -2."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is shown in this picture?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}},
                ],
            },
        ]
    )


# ---------------------------------------------------------------------------------------------
# Package surface and documentation


def test_package_exports_exactly_the_documented_api():
    assert sorted(features.__all__) == sorted(
        [
            "PromptFeaturizer",
            "FEATURE_VERSION",
            "Prompt",
            "PromptError",
            "normalize",
            "from_messages",
        ]
    )
    assert FEATURE_VERSION == "3"
    assert extractor.__all__ == [
        "CONTEXT_FEATURE_NAMES",
        "FEATURE_NAMES",
        "FEATURE_VERSION",
        "PromptFeaturizer",
        "idf_weights",
    ]


def test_every_dense_feature_is_named_once_and_documented():
    assert len(set(DENSE_FEATURE_NAMES)) == len(DENSE_FEATURE_NAMES)
    base = [n for n in DENSE_FEATURE_NAMES if not n.startswith("ff.")]
    undocumented = [n for n in base if f"``{n}``" not in extractor.__doc__]
    assert undocumented == []
    assert "``ff.free_form``" in extractor.__doc__
    assert [n for n in DENSE_FEATURE_NAMES if n.startswith("ff.")] == [
        *(f"ff.{n}" for n in base),
        "ff.free_form",
    ]


@pytest.mark.parametrize(
    "module", [signals, extractor, text_module], ids=["signals", "extractor", "text"]
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------------------------
# scikit-learn contract


def test_fit_returns_self_and_sets_learned_attributes():
    f = PromptFeaturizer(n_hash_features=SMALL)
    assert f.fit(["anything"]) is f
    assert f.n_dense_ == len(extractor.FEATURE_NAMES)
    assert list(f.dense_feature_names_) == list(extractor.FEATURE_NAMES)
    assert extractor.FEATURE_NAMES[: len(DENSE_FEATURE_NAMES)] == DENSE_FEATURE_NAMES
    assert f.feature_version_ == FEATURE_VERSION


def test_get_params_are_the_constructor_arguments_before_and_after_fit():
    params = {
        "n_hash_features": 1000,
        "word_ngram_max": 3,
        "char_ngrams": (2, 5),
        "max_scan_chars": 500,
    }
    f = PromptFeaturizer(**params)
    assert f.get_params() == params
    f.fit(["x"]).transform(["some text here"])
    assert f.get_params() == params
    assert PromptFeaturizer().get_params() == {
        "n_hash_features": 2**17,
        "word_ngram_max": 2,
        "char_ngrams": (3, 4),
        "max_scan_chars": 4096,
    }


def test_the_default_window_holds_every_bundled_prompt_whole():
    """The default scan window shortens no prompt of the bundled data, so the default model is
    the one a longer window would train; it only bounds the work on longer prompts."""
    from training.logs import iter_records
    from training.paths import bundled_data

    window = PromptFeaturizer().max_scan_chars + signals.TAIL_SCAN_CHARS
    longest = max(len(r.prompt.text) for path in bundled_data() for r in iter_records(path))
    assert 4096 < longest <= window


def test_clone_copies_parameters_but_not_the_fit():
    f = fitted(word_ngram_max=3)
    copy = clone(f)
    assert copy.get_params() == f.get_params()
    assert not hasattr(copy, "n_dense_")
    with pytest.raises(NotFittedError):
        copy.transform(["x"])


def test_pickle_round_trip_gives_identical_output_and_leaves_the_cache_behind():
    f = fitted()
    docs = ["Explain step by step why the sky is blue.", messages_prompt(), ""]
    before = f.transform(docs, task_types=["qa", None, "chat"])
    blob = pickle.dumps(f)
    # the word cache is module-level: only parameters and a few small attributes are pickled
    assert len(blob) < 5000
    restored = pickle.loads(blob)
    after = restored.transform(docs, task_types=["qa", None, "chat"])
    assert (before != after).nnz == 0
    assert np.array_equal(restored.transform_one(docs[0])[2], f.transform_one(docs[0])[2])


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda f: f.transform(["x"]), id="transform"),
        pytest.param(lambda f: f.transform_one("x"), id="transform_one"),
        pytest.param(lambda f: f.get_feature_names_out(), id="get_feature_names_out"),
    ],
)
def test_unfitted_use_raises_not_fitted(call):
    with pytest.raises(NotFittedError):
        call(PromptFeaturizer())


def test_feature_names_cover_every_column():
    f = fitted(n_hash_features=64)
    names = f.get_feature_names_out()
    X = f.transform(["a prompt"])
    assert names.shape == (X.shape[1],) == (len(extractor.FEATURE_NAMES) + 64,)
    assert list(names[: f.n_dense_]) == list(extractor.FEATURE_NAMES)
    assert names[f.n_dense_] == "hash:0" and names[-1] == "hash:63"


def test_transform_returns_canonical_float64_csr():
    f = fitted()
    X = f.transform(["What is 2+2?", "Write a poem", ""])
    assert isinstance(X, sp.csr_matrix)
    assert X.dtype == np.float64
    assert X.shape == (3, f.n_dense_ + SMALL)
    assert X.has_sorted_indices
    assert X.has_canonical_format


def test_fit_transform_passes_task_types_through():
    docs = ["Summarize this text.", "Hello there"]
    a = fitted().fit_transform(docs, task_types=["summarization", None])
    b = fitted().transform(docs, task_types=["summarization", None])
    assert (a != b).nnz == 0


@pytest.mark.parametrize(
    ("params", "message"),
    [
        pytest.param({"n_hash_features": 0}, "n_hash_features must be in", id="zero-hash"),
        pytest.param({"n_hash_features": 2**24 + 1}, "n_hash_features must be in", id="huge-hash"),
        pytest.param({"n_hash_features": 10.0}, "must be an integer", id="float-hash"),
        pytest.param({"n_hash_features": True}, "must be an integer", id="bool-hash"),
        pytest.param({"word_ngram_max": 0}, "word_ngram_max must be in", id="no-words"),
        pytest.param({"char_ngrams": (3,)}, "char_ngrams must be a pair", id="char-one"),
        pytest.param({"char_ngrams": "34"}, "char_ngrams must be a pair", id="char-str"),
        pytest.param({"char_ngrams": (4, 3)}, r"char_ngrams\[1\] must be in", id="char-order"),
        pytest.param({"char_ngrams": (0, 3)}, r"char_ngrams\[0\] must be in", id="char-zero"),
        pytest.param({"max_scan_chars": 0}, "max_scan_chars must be >= 1", id="no-scan"),
    ],
)
def test_fit_rejects_invalid_parameters(params, message):
    with pytest.raises(ValueError, match=message):
        PromptFeaturizer(**params).fit([])


def test_numpy_integer_parameters_are_accepted():
    f = PromptFeaturizer(n_hash_features=np.int64(128), char_ngrams=[np.int32(2), 3]).fit([])
    assert f.transform(["ok"]).shape == (1, f.n_dense_ + 128)


@pytest.mark.parametrize(
    ("X", "error", "message"),
    [
        pytest.param("a single prompt", ValueError, "single str", id="bare-str"),
        pytest.param(Prompt("x", "x"), ValueError, "single Prompt", id="bare-prompt"),
        pytest.param(42, ValueError, "collection of prompts", id="int"),
        pytest.param(["ok", {"role": "user"}], TypeError, r"X\[1\] must be a Prompt", id="dict"),
    ],
)
def test_transform_rejects_what_is_not_a_collection_of_prompts(X, error, message):
    with pytest.raises(error, match=message):
        fitted().transform(X)


def test_task_types_must_align_and_be_strings():
    f = fitted()
    with pytest.raises(ValueError, match="task_types has 1 entries for 2 prompts"):
        f.transform(["a", "b"], task_types=["qa"])
    with pytest.raises(TypeError, match="task_type must be a string or None, got int"):
        f.transform_one("a", task_type=3)


def test_a_featurizer_fitted_under_another_feature_version_refuses_to_transform():
    f = fitted()
    f.feature_version_ = "0"
    with pytest.raises(ValueError, match="fitted with feature version '0'"):
        f.transform_one("x")


def test_refit_after_set_params_changes_the_width():
    f = fitted(n_hash_features=32)
    f.set_params(n_hash_features=16).fit([])
    assert f.transform(["x"]).shape[1] == f.n_dense_ + 16


# ---------------------------------------------------------------------------------------------
# transform_one is exactly a row of transform

EQUALITY_CASES = [
    pytest.param("What is the capital of France?", None, id="short-question"),
    pytest.param("", None, id="empty"),
    pytest.param("", "chat", id="empty-with-task-type"),
    pytest.param("   \n\t ", None, id="whitespace"),
    pytest.param(messages_prompt(), None, id="messages-with-images"),
    pytest.param(messages_prompt(), "Vision QA", id="messages-with-task-type"),
    pytest.param("Implement quicksort in python.\n```python\ndef f(x):\n```", "code", id="code"),
    pytest.param("Привет! 你好，世界。 مرحبا नमस्ते 😀", None, id="scripts"),
    pytest.param("the the the the a a b", None, id="repeats"),
    pytest.param("word " * 6000 + "tail end", "long", id="longer-than-window"),
]


@pytest.mark.parametrize(("prompt", "task_type"), EQUALITY_CASES)
def test_transform_one_is_the_transform_row(prompt, task_type, hashing):
    f = fitted(word_ngram_max=3)
    batch = f.transform([prompt], task_types=[task_type]).toarray()[0]
    assert np.array_equal(batch, assembled_row(f, prompt, task_type))


def test_transform_one_return_types():
    f = fitted()
    dense, cols, values = f.transform_one("Explain why the sky is blue, step by step.")
    assert dense.dtype == np.float64 and dense.shape == (f.n_dense_,)
    assert cols.dtype == np.int64 and values.dtype == np.float64
    assert cols.shape == values.shape
    assert len(np.unique(cols)) == cols.size
    assert cols.min() >= f.n_dense_ and cols.max() < f.n_dense_ + SMALL
    assert math.isclose(float(values @ values), 1.0)
    assert np.all(values != 0)


def test_batch_rows_match_single_rows():
    f = fitted()
    prompts = [c.values[0] for c in EQUALITY_CASES]
    types = [c.values[1] for c in EQUALITY_CASES]
    X = f.transform(prompts, task_types=types).toarray()
    for i, (p, t) in enumerate(zip(prompts, types, strict=True)):
        assert np.array_equal(X[i], assembled_row(f, p, t))


def test_string_input_equals_its_normalized_prompt():
    f = fitted()
    text = "Define entropy."
    assert np.array_equal(assembled_row(f, text), assembled_row(f, normalize(prompt=text)))


def test_task_type_adds_exactly_one_normalised_token(hashing):
    f = fitted(n_hash_features=2**17)
    _, plain_cols, _ = f.transform_one("Hello")
    _, cols, _ = f.transform_one("Hello", task_type="  Coding ")
    assert set(cols) - set(plain_cols) == {f.n_dense_ + 69908}
    h = zlib.crc32(b"w:__task_type__=coding")
    assert (h & 0x7FFFFFFF) % 2**17 == 69908
    assert np.array_equal(assembled_row(f, "Hello", "coding"), assembled_row(f, "Hello", " CODING"))
    assert np.array_equal(assembled_row(f, "Hello", ""), assembled_row(f, "Hello"))


def test_concurrent_threads_get_the_same_rows(hashing):
    f = fitted()
    prompts = [f"Question {i}: why is {i} * {i + 1} even?" for i in range(40)]
    expected = [assembled_row(f, p) for p in prompts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda p: assembled_row(f, p), prompts * 3))
    for i, row in enumerate(got):
        assert np.array_equal(row, expected[i % len(prompts)])


# ---------------------------------------------------------------------------------------------
# Each signal fires on its example, with the exact value

L = math.log1p
SIGNAL_CASES = [
    pytest.param("abcd", "len.chars_log", L(4), id="chars"),
    pytest.param("one two, three", "len.words_log", L(3), id="words"),
    pytest.param("abcde", "len.tokens_est_log", L(2), id="tokens-ceil"),
    pytest.param("a\nb\nc", "len.lines_log", L(3), id="lines"),
    pytest.param(messages_prompt(), "ctx.len.turns_log", L(2), id="turns"),
    pytest.param(messages_prompt(), "len.images_log", L(2), id="images"),
    pytest.param(messages_prompt(), "ctx.len.has_system", 1.0, id="system"),
    pytest.param(messages_prompt(), "len.last_user_chars_log", L(30), id="last-user"),
    pytest.param(Prompt("abcd" * 5, "abcd"), "ctx.len.chars_log", L(16), id="context-chars"),
    pytest.param("```py\nx = 1\n```", "re.code_fence", L(2), id="fence"),
    pytest.param("def add(a, b):\n    return a + b", "re.code_keyword", L(1), id="py-def"),
    pytest.param("function f(a) { return a; }", "re.code_keyword", L(1), id="js-function"),
    pytest.param("from os import path\nimport sys", "re.code_keyword", L(2), id="imports"),
    pytest.param("#include <stdio.h>", "re.code_keyword", L(1), id="include"),
    pytest.param("SELECT name FROM users;", "re.code_keyword", L(1), id="sql"),
    pytest.param("public static void main()", "re.code_keyword", L(1), id="java"),
    pytest.param("class Foo(Base):", "re.code_keyword", L(1), id="class"),
    pytest.param("Compute 12 + 7 and 3*4=12", "re.arithmetic", L(3), id="arithmetic"),
    pytest.param(r"Find \frac{1}{2} and $x^2$", "re.latex", L(2), id="latex"),
    pytest.param("See https://www.a.com or www.b.org", "re.url", L(2), id="url"),
    pytest.param('Return {"name": "x", "age": 3}', "re.json", L(1), id="json"),
    pytest.param("1. Mix\n2. Bake\n  3) Serve", "re.numbered_steps", L(3), id="steps"),
    pytest.param("Pick:\nA) one\n(B) two\nc. three", "re.multiple_choice", L(3), id="choices"),
    pytest.param("Q: a\nA: b\nQ: c\nA: d\nQ: e\nA:", "re.few_shot_repeats", L(4), id="few-shot"),
    pytest.param("Example 1: x\nExample 2: y", "re.few_shot_repeats", L(1), id="examples"),
    pytest.param("Why? How？", "re.question_marks", L(2), id="questions"),
    pytest.param("ab12", "re.digit_ratio", 0.5, id="digits"),
    pytest.param("ABcd", "re.upper_ratio", 0.5, id="upper"),
    pytest.param("a,b.", "re.punct_ratio", 0.5, id="punct"),
    pytest.param("ab abcd", "re.avg_word_len_log", L(3), id="avg-word"),
    pytest.param("Explain step by step why", "kw.reasoning", L(3), id="reasoning"),
    pytest.param("What is the capital of France", "kw.simple", L(1), id="simple"),
    pytest.param("Translate this into French", "kw.translate", L(2), id="translate"),
    pytest.param("Summarize the key points", "kw.summarize", L(2), id="summarize"),
    pytest.param("Write a poem and a short story", "kw.creative", L(2), id="creative"),
    pytest.param("Implement a python function", "kw.coding", L(3), id="coding"),
    pytest.param("How many apples in total", "kw.math", L(2), id="math"),
    pytest.param("Solve the quadratic equation", "kw.equation", L(3), id="equation"),
    pytest.param("Answer only yes or no; do not", "kw.constraints", L(2), id="constraints"),
    pytest.param("Pretend you are a pirate", "kw.roleplay", L(2), id="roleplay"),
    pytest.param("cafe café", "script.latin", 8 / 9, id="latin"),
    pytest.param("你好，世界", "script.cjk", 1.0, id="cjk"),
    pytest.param("Привет", "script.cyrillic", 1.0, id="cyrillic"),
    pytest.param("مرحبا", "script.arabic", 1.0, id="arabic"),
    pytest.param("नमस्ते", "script.devanagari", 1.0, id="devanagari"),
    pytest.param("😀a", "script.other_nonascii", 0.5, id="other-script"),
    pytest.param("Each costs twice as much in total", "kw.quantity", L(4), id="quantity"),
    pytest.param("Buy 3 pens, 1,250.5 g and 3 cups", "num.count_log", L(3), id="numbers"),
    pytest.param("Buy 3 pens, 1,250.5 g and 3 cups", "num.distinct_log", L(2), id="distinct"),
    pytest.param("Buy 3 pens, 1,250.5 g and 3 cups", "num.max_digits_log", L(7), id="max-digits"),
    pytest.param("One. Two! Three? Four", "num.sentences_log", L(3), id="sentences"),
    pytest.param("Save 20% or 30%", "num.percent_log", L(2), id="percent"),
    pytest.param("Use 3/4 of 1 / 2", "num.fraction_log", L(2), id="fraction"),
    pytest.param("It is 2.5 or 0.75", "num.decimal_log", L(2), id="decimal"),
    pytest.param("a, b, c", "num.commas_log", L(2), id="commas"),
    pytest.param("Why? Explain step by step", "ff.kw.reasoning", L(3), id="ff-copy"),
    pytest.param("Explain step by step", "ff.free_form", 1.0, id="ff-indicator"),
]


@pytest.mark.parametrize(("prompt", "name", "expected"), SIGNAL_CASES)
def test_signal_fires_on_its_example(prompt, name, expected):
    assert dense_of(prompt)[name] == pytest.approx(expected, rel=1e-12)


NEUTRAL_NONZERO = {
    "len.chars_log": L(43),
    "len.words_log": L(8),
    "len.tokens_est_log": L(11),
    "len.lines_log": L(1),
    "len.turns_log": L(1),
    "len.last_user_chars_log": L(43),
    "len.last_user_share": 1.0,
    "re.upper_ratio": 1 / 36,
    "re.avg_word_len_log": L(36 / 8),
    "script.latin": 36 / 43,
}
# The neutral text is free-form, so its ff.* copies repeat these and the indicator is set.
NEUTRAL_NONZERO.update({f"ff.{k}": v for k, v in NEUTRAL_NONZERO.items()})
NEUTRAL_NONZERO["ff.free_form"] = 1.0


@pytest.mark.parametrize("name", DENSE_FEATURE_NAMES)
def test_signal_is_silent_on_neutral_text(name):
    assert dense_of(NEUTRAL)[name] == pytest.approx(NEUTRAL_NONZERO.get(name, 0.0), rel=1e-12)


def test_every_signal_has_a_targeted_example():
    # Since the main block reads the last user turn alone, len.last_user_share is 1 for every
    # prompt; turns and the system flag move with the context block.
    base = {n for n in DENSE_FEATURE_NAMES if not n.startswith("ff.")} - {"len.last_user_share"}
    assert base <= {c.values[1].removeprefix("ctx.") for c in SIGNAL_CASES}


def test_free_form_copies_are_zero_for_multiple_choice():
    mc = dense_of("Which is larger?\nA) 3\nB) 12\nC) 7")
    assert mc["re.multiple_choice"] > 0 and mc["num.count_log"] > 0
    assert all(v == 0.0 for k, v in mc.items() if k.startswith("ff."))
    free = dense_of("Which is larger, 3 or 12?")
    base = [k for k in free if not k.startswith(("ff.", "ctx."))]
    assert [free[f"ff.{k}"] for k in base] == [free[k] for k in base]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        pytest.param("The class will import goods", "re.code_keyword", id="english-class-import"),
        pytest.param("the function f(x) = 2x", "re.code_keyword", id="math-function"),
        pytest.param("Select the answer from the list", "re.code_keyword", id="english-select"),
        pytest.param("It costs $5 and $10", "re.latex", id="money"),
        pytest.param("in 2023 we met 40 people", "re.arithmetic", id="numbers-no-operator"),
        pytest.param("Answer: B", "re.few_shot_repeats", id="single-answer"),
        pytest.param("what a day, who knew", "kw.simple", id="simple-words-apart"),
        pytest.param("a step by the step", "kw.reasoning", id="phrase-broken"),
        pytest.param("1.5 liters\nA fine day", "re.numbered_steps", id="decimal-line"),
    ],
)
def test_near_misses_do_not_fire(text, name):
    assert dense_of(text)[name] == 0.0


def test_messages_length_features_come_from_the_prompt_fields():
    p = messages_prompt()
    d = dense_of(p)
    # the last user turn alone, with the conversation's images ...
    assert d["len.chars_log"] == L(len(p.last_user))
    assert d["len.last_user_share"] == 1.0
    assert d["len.images_log"] == L(2)
    assert d["len.turns_log"] == L(1) and d["len.has_system"] == 0.0
    # ... and the context (system prompt and earlier turns) in its own block
    context = "You are a careful math tutor.\n\nSolve x^2 = 4.\n\nx = 2 or x = -2."
    assert d["ctx.len.chars_log"] == L(len(context))
    assert d["ctx.len.turns_log"] == L(2) and d["ctx.len.has_system"] == 1.0
    assert d["ctx.re.arithmetic"] > 0.0 and d["ctx.len.lines_log"] == L(5)


def test_a_single_prompt_has_no_context_and_the_last_turn_reads_as_a_single_prompt():
    conversation = from_messages(
        [
            {"role": "system", "content": "You are a maths tutor. Solve equations step by step."},
            {"role": "user", "content": "Solve 3x + 4 = 10."},
            {"role": "assistant", "content": "x = 2"},
            {"role": "user", "content": "What is the capital of France?"},
        ]
    )
    f = fitted()
    alone_dense, alone_cols, alone_values = f.transform_one("What is the capital of France?")
    dense, cols, values = f.transform_one(conversation)
    n_main = len(DENSE_FEATURE_NAMES)
    assert np.all(alone_dense[n_main:] == 0.0)
    assert np.array_equal(dense[:n_main], alone_dense[:n_main])
    assert np.array_equal(cols, alone_cols) and np.array_equal(values, alone_values)
    assert np.any(dense[n_main:] > 0)


def test_words_past_the_window_are_extrapolated_from_its_density():
    text = "abc " * 10000
    d = dense_of(text, max_scan_chars=100)
    # window: 100 chars (25 words) + "\n" + 2048 chars (512 words) = 2149 chars, 537 words
    assert d["len.words_log"] == L(round(537 * 40000 / 2149))
    assert d["len.chars_log"] == L(40000)


# ---------------------------------------------------------------------------------------------
# Properties over open input


def check_row(f: PromptFeaturizer, prompt, task_type=None) -> None:
    dense, cols, values = f.transform_one(prompt, task_type)
    assert dense.shape == (f.n_dense_,) and np.all(np.isfinite(dense))
    assert np.all(dense >= 0)
    assert cols.shape == values.shape and np.all(np.isfinite(values))
    assert np.all((cols >= f.n_dense_) & (cols < f.n_dense_ + f.n_hash_features))
    assert len(np.unique(cols)) == cols.size
    if values.size:
        assert math.isclose(float(values @ values), 1.0)
        assert np.all(values != 0)


@settings(max_examples=150, deadline=None)
@given(text=st.text(), task_type=st.none() | st.text(max_size=10))
def test_any_unicode_text_gives_a_valid_row(text, task_type):
    f = fitted(n_hash_features=97, word_ngram_max=3, char_ngrams=(1, 4), max_scan_chars=40)
    check_row(f, text, task_type)
    assert np.array_equal(
        f.transform([text], task_types=[task_type]).toarray()[0],
        assembled_row(f, text, task_type),
    )


@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127)))
def test_ascii_fast_paths_agree_with_the_general_paths(text):
    lower = text.lower()
    assert signals.tokenize(lower) == signals._TOKEN_RE.findall(lower)
    assert signals._class_counts_ascii(text) == signals._class_counts_unicode(text)


def test_ascii_tokenisation_splits_on_exactly_the_regex_separators():
    # Every ASCII character between two letters: the bytes.translate fast path and the regex
    # agree on which ones split a word.
    text = "".join(f"a{chr(b)}b" for b in range(128))
    assert signals.tokenize(text) == signals._TOKEN_RE.findall(text)


ROLES = st.sampled_from(["system", "developer", "user", "assistant"])
PART = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=30)),
    st.just({"type": "image_url", "image_url": {"url": "https://x/y.png"}}),
)
MESSAGE = st.builds(
    lambda role, content: {"role": role, "content": content},
    ROLES,
    st.text(max_size=40) | st.lists(PART, max_size=3),
)


@settings(max_examples=100, deadline=None)
@given(messages=st.lists(MESSAGE, max_size=5), last=st.text(min_size=1, max_size=40))
def test_messages_from_random_parts_give_a_valid_row(messages, last):
    messages = [*messages, {"role": "user", "content": "q " + last}]
    prompt = from_messages(messages)
    f = fitted(n_hash_features=101)
    check_row(f, prompt)
    d = dict(zip(extractor.FEATURE_NAMES, f.transform_one(prompt)[0].tolist(), strict=True))
    users = sum(m["role"] == "user" for m in messages)
    images = sum(
        part.get("type") == "image_url"
        for m in messages
        if isinstance(m["content"], list)
        for part in m["content"]
    )
    system = any(m["role"] in ("system", "developer") for m in messages)
    if users > 1 or system or prompt.text != prompt.last_user:
        assert d["ctx.len.turns_log"] == L(users)
        assert d["ctx.len.has_system"] == float(system)
    else:
        assert d["len.turns_log"] == L(1)
    assert d["len.images_log"] == L(images)
    assert 0.0 < d["len.last_user_share"] <= 1.0


def test_script_ranges_do_not_overlap():
    assert np.all(np.diff(signals._CLASS_STARTS.astype(np.int64)) > 0)


def test_a_lone_surrogate_is_featurised_not_an_error(hashing):
    check_row(fitted(), "abc \ud800 def \udfff")


# ---------------------------------------------------------------------------------------------
# Bounded work


def megabyte_prompt() -> str:
    block = (
        "Explain step by step why 12 + 7 = 19.\n```python\ndef f(x):\n    return x\n```\n"
        "1. First\n2. Second\nA) yes\nB) no\nAnswer: A\nSee https://example.com "
        '{"k": 1} $x^2$ \\frac{1}{2} 你好 Привет?\n'
    )
    return (block * (1_000_000 // len(block) + 1))[:1_000_000]


def test_a_huge_prompt_has_the_non_length_features_of_its_window(hashing):
    big = megabyte_prompt()
    window = big[:16384] + "\n" + big[-2048:]
    f = fitted(n_hash_features=2**17)
    big_dense, big_cols, big_values = f.transform_one(big)
    win_dense, win_cols, win_values = f.transform_one(window)
    not_length = [i for i, n in enumerate(DENSE_FEATURE_NAMES) if not n.startswith("len.")]
    assert np.array_equal(big_dense[not_length], win_dense[not_length])
    assert np.array_equal(big_cols, win_cols) and np.array_equal(big_values, win_values)
    assert dense_of(big)["len.chars_log"] == L(1_000_000)


PATHOLOGICAL = [
    pytest.param("1" * 1_000_000, id="digits"),
    pytest.param("1 + " * 250_000, id="operators"),
    pytest.param("$a" * 500_000, id="dollars"),
    pytest.param('{"' * 500_000, id="json-openers"),
    pytest.param("SELECT " * 150_000, id="select-without-from"),
    pytest.param("\n        " * 100_000, id="indented-lines"),
    pytest.param("\n" + "Q" * 1_000_000, id="marker-prefix"),
    pytest.param("a" * 1_000_000, id="one-huge-word"),
    pytest.param("\\" * 1_000_000, id="backslashes"),
    pytest.param(megabyte_prompt(), id="mixed"),
]


@pytest.mark.parametrize("text", PATHOLOGICAL)
def test_megabyte_prompts_stay_fast(text, hashing):
    f = fitted()
    f.transform_one(text[:100])
    start = time.perf_counter()
    f.transform_one(text)
    # A guard against catastrophic regressions only, not a benchmark.
    assert time.perf_counter() - start < 0.25


# ---------------------------------------------------------------------------------------------
# Stable hashing


def test_hash_columns_are_pinned(hashing):
    f = PromptFeaturizer(word_ngram_max=1, char_ngrams=(3, 3)).fit([])
    _, cols, values = f.transform_one("hello")
    got = sorted(
        zip((cols - f.n_dense_).tolist(), np.sign(values).astype(int).tolist(), strict=True)
    )
    # "hello" and its padded 3-grams " he", "hel", "ell", "llo", "lo "
    assert got == [(17547, -1), (34721, 1), (34915, -1), (51788, -1), (57942, 1), (119005, 1)]
    h = zlib.crc32(b"w:hello")
    assert (h & 0x7FFFFFFF) % 2**17 == 17547 and h >= 2**31  # the unigram, sign -1


def test_word_bigram_columns_are_pinned(hashing):
    f = PromptFeaturizer(word_ngram_max=2, char_ngrams=(3, 3)).fit([])
    unigrams = PromptFeaturizer(word_ngram_max=1, char_ngrams=(3, 3)).fit([])
    _, with_bigram, _ = f.transform_one("hello world")
    _, without, _ = unigrams.transform_one("hello world")
    assert sorted(set(with_bigram) - set(without)) == [f.n_dense_ + 86086]
    # the documented combination of the two words' hashes
    a, b = zlib.crc32(b"w:hello"), zlib.crc32(b"w:world")
    h = ((a * 0x9E3779B97F4A7C15) ^ (b * 0xC2B2AE3D27D4EB4F)) % 2**64 >> 32
    assert (h & 0x7FFFFFFF) % 2**17 == 86086


def test_hashing_is_identical_in_a_fresh_process_with_another_hash_seed():
    code = (
        "from features import PromptFeaturizer\n"
        "f = PromptFeaturizer(n_hash_features=4096).fit([])\n"
        "d, c, v = f.transform_one('Stable across processes: naïve café 你好', 'qa')\n"
        "print(sorted(zip(c.tolist(), v.tolist(), strict=True)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)},
    ).stdout
    _, cols, values = fitted(n_hash_features=4096).transform_one(
        "Stable across processes: naïve café 你好", "qa"
    )
    assert out.strip() == str(sorted(zip(cols.tolist(), values.tolist(), strict=True)))


def test_tokens_that_cancel_are_dropped(hashing):
    f = PromptFeaturizer(n_hash_features=1, word_ngram_max=1, char_ngrams=(1, 1)).fit([])
    # with one column, "b" (+1) and its char n-grams " ", "b", " " (-1, +1, -1)... sum to 0
    _, cols, values = f.transform_one("b")
    assert cols.size == 0 and values.size == 0
    _, cols, values = f.transform_one("a")
    assert cols.tolist() == [f.n_dense_] and values.tolist() == [-1.0]


def test_word_cache_is_bounded_and_does_not_change_results(monkeypatch, python_hashing):
    f = fitted()
    text = " ".join(f"w{i}" for i in range(50))
    monkeypatch.setattr(extractor, "_CACHES", {})
    cold = assembled_row(f, text)
    warm = assembled_row(f, text)
    assert np.array_equal(cold, warm)
    monkeypatch.setattr(extractor, "_CACHE_MAX_WORDS", 10)
    monkeypatch.setattr(extractor, "_CACHES", {})
    assert np.array_equal(assembled_row(f, text), cold)
    (cache,) = extractor._CACHES.values()
    assert 0 < len(cache) <= 10


def test_batched_hashing_of_unseen_words_matches_the_cache_and_the_per_word_path(
    monkeypatch, python_hashing
):
    f = fitted(n_hash_features=2**17)
    text = " ".join(f"token{i:04d}" for i in range(200)) + " " + "x9" * 100 + " 你好世界" * 3
    monkeypatch.setattr(extractor, "_CACHES", {})
    batched = assembled_row(f, text)  # > _BATCH_MIN_CHARS unseen: one vectorised batch
    cached = assembled_row(f, text)
    monkeypatch.setattr(extractor, "_CACHES", {})
    monkeypatch.setattr(extractor, "_BATCH_MIN_CHARS", 10**9)
    per_word = assembled_row(f, text)
    assert np.array_equal(batched, cached) and np.array_equal(batched, per_word)


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.text(min_size=1, max_size=90), min_size=1, max_size=10, unique=True),
    lo=st.integers(1, 5),
    extra=st.integers(0, 3),
    n=st.sampled_from([1, 97, 2**17]),
)
@example(words=["\ud800z", "a", "😀😀😀😀", "x" * 70], lo=3, extra=1, n=2**17)
def test_vectorised_word_hashing_equals_the_plain_python_path(words, lo, extra, n):
    hi = lo + extra
    expected = [extractor._word_entry(w, n, lo, hi) for w in words]
    assert extractor._batch_entries(words, n, lo, hi) == expected


def test_prompt_errors_are_the_text_module_errors():
    assert features.PromptError is PromptError
    with pytest.raises(PromptError):
        normalize(prompt="")
