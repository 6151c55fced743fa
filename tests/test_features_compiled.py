"""The compiled hashed n-grams (features/_compiled.c) against the Python reference.

`features.extractor._hashed_python` defines the hashed block; `_hashed_compiled` must give the
same columns in the same order with bit-identical values, for any input, so that rows (and
therefore FEATURE_VERSION "2" and trained artifacts) do not depend on whether the extension
was built.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features import Prompt, PromptFeaturizer, extractor, signals

# Set on a machine that cannot compile C, to run the suite on the Python path alone.
ALLOW_PURE_PYTHON = os.environ.get("PROMPTROUTE_ALLOW_PURE_PYTHON") == "1"
compiled = pytest.mark.skipif(
    extractor._compiled is None and ALLOW_PURE_PYTHON, reason="features._compiled not built"
)
N_DENSE = 97

# Any code point, lone surrogates included (hypothesis leaves them out by default).
ANY_CHAR = st.characters(exclude_categories=())
WORD = st.text(ANY_CHAR, max_size=12) | st.text(ANY_CHAR, min_size=50, max_size=400)
HASH_SIZES = st.sampled_from([1, 2, 3, 97, 1000, 4096, 2**17, 2**24])


def both(words, n, kmax, lo, hi, task_code):
    reference = extractor._hashed_python(list(words), n, kmax, lo, hi, task_code, N_DENSE)
    fast = extractor._hashed_compiled(list(words), n, kmax, lo, hi, task_code, N_DENSE)
    return reference, fast


def assert_identical(reference, fast) -> None:
    (ref_cols, ref_values), (cols, values) = reference, fast
    assert cols.dtype == ref_cols.dtype == np.int64
    assert values.dtype == ref_values.dtype == np.float64
    # Same order too: the order fixes the rounding of the L2 norm and of the heads' dot product.
    assert cols.tolist() == ref_cols.tolist()
    assert values.tobytes() == ref_values.tobytes()


def test_the_extension_is_built_and_used():
    """Fails when `pip install -e '.[dev]'` did not compile features/_compiled.c, so that CI
    proves the fast path is the one being served (PROMPTROUTE_ALLOW_PURE_PYTHON=1 opts out)."""
    if ALLOW_PURE_PYTHON and extractor._compiled is None:
        pytest.skip("PROMPTROUTE_ALLOW_PURE_PYTHON=1 and features._compiled is not built")
    assert extractor._compiled is not None, (
        "features._compiled was not built: is a C compiler installed?"
    )
    assert extractor._hashed is extractor._hashed_compiled


@compiled
@settings(max_examples=300, deadline=None)
@given(
    words=st.lists(WORD, max_size=30),
    n=HASH_SIZES,
    kmax=st.integers(1, 8),
    lo=st.integers(1, 8),
    extra=st.integers(0, 7),
    task_type=st.none() | st.text(ANY_CHAR, max_size=10),
)
@example(words=[], n=2**17, kmax=2, lo=3, extra=1, task_type=None)
@example(words=[], n=2**17, kmax=2, lo=3, extra=1, task_type="qa")
@example(words=["\ud800", "a\udfffb", "😀😀", "é"], n=97, kmax=3, lo=1, extra=3, task_type=None)
@example(words=["x" * 5000, "y"], n=1000, kmax=2, lo=3, extra=1, task_type="long")
def test_compiled_rows_equal_the_python_rows(words, n, kmax, lo, extra, task_type):
    hi = min(lo + extra, 8)
    task_code = None if task_type is None else extractor._task_type_code(task_type, n)
    assert_identical(*both(words, n, kmax, lo, hi, task_code))


@compiled
@settings(max_examples=60, deadline=None)
@given(
    vocabulary=st.lists(st.text(ANY_CHAR, min_size=1, max_size=6), min_size=1, max_size=5),
    picks=st.lists(st.integers(0, 4), min_size=1, max_size=400),
    n=HASH_SIZES,
)
def test_many_repeated_words_give_the_same_counts(vocabulary, picks, n):
    words = [vocabulary[i % len(vocabulary)] for i in picks]
    assert_identical(*both(words, n, 3, 2, 5, None))


@compiled
@pytest.mark.parametrize(
    "words",
    [
        pytest.param(["a"] * (extractor._LOG_TABLE_SIZE + 5), id="count-past-the-log-table"),
        pytest.param(["a", "b"] * 6000, id="two-words-past-the-log-table"),
        pytest.param(["ab" * 200_000], id="one-huge-word"),
        pytest.param([f"w{i}" for i in range(20_000)], id="many-distinct-words"),
    ],
)
@pytest.mark.parametrize("n", [1, 97, 2**17])
def test_large_inputs_are_identical(words, n):
    assert_identical(*both(words, n, 2, 3, 4, None))


@compiled
@settings(max_examples=150, deadline=None)
@given(text=st.text(ANY_CHAR, max_size=300), task_type=st.none() | st.text(max_size=8))
def test_transform_one_is_the_same_row_on_either_path(text, task_type):
    f = PromptFeaturizer(n_hash_features=1000, word_ngram_max=3, char_ngrams=(2, 5)).fit([])
    ref_dense, ref_cols, ref_values = row_with(extractor._hashed_python, f, text, task_type)
    dense, cols, values = row_with(extractor._hashed_compiled, f, text, task_type)
    assert dense.tobytes() == ref_dense.tobytes()
    assert_identical((ref_cols, ref_values), (cols, values))


def row_with(hashed, f: PromptFeaturizer, text: str, task_type: str | None):
    # Not monkeypatch: a function-scoped fixture would be shared by hypothesis's examples.
    saved = extractor._hashed
    extractor._hashed = hashed
    try:
        return f.transform_one(text, task_type)
    finally:
        extractor._hashed = saved


def test_the_log_table_is_numpys_log_however_numpy_is_called():
    # numpy's SIMD log differs from libm's for some integers; the table must be what the
    # Python path's in-place `np.log` gives, for arrays short and long.
    table = np.frombuffer(extractor._LOG_TABLE, dtype=np.float64)
    assert table.size == extractor._LOG_TABLE_SIZE and table[0] == 0.0
    k = np.arange(1.0, extractor._LOG_TABLE_SIZE)
    for size in (1, 2, 3, 7, 8, 9, 16, 17, 1000, k.size):
        for start in range(0, k.size, max(size, 97)):
            chunk = k[start : start + size].copy()
            np.log(chunk, out=chunk)
            assert chunk.tobytes() == table[1 + start : 1 + start + chunk.size].tobytes()


def test_returned_arrays_are_writable_and_owned():
    if extractor._compiled is None:
        pytest.skip("features._compiled not built")
    cols, values = extractor._hashed_compiled(["hello", "world"], 2**17, 2, 3, 4, None, N_DENSE)
    assert cols.flags.writeable and values.flags.writeable
    cols += 1  # callers may shift columns in place, as the Python path allows


@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param(("not a list", 8, 2, 3, 4, None, 0), TypeError, id="str-words"),
        pytest.param(([1], 8, 2, 3, 4, None, 0), TypeError, id="int-word"),
        pytest.param((["a"], 0, 2, 3, 4, None, 0), ValueError, id="zero-columns"),
        pytest.param((["a"], 2**24 + 1, 2, 3, 4, None, 0), ValueError, id="too-many-columns"),
        pytest.param((["a"], 8, 9, 3, 4, None, 0), ValueError, id="kmax"),
        pytest.param((["a"], 8, 2, 4, 3, None, 0), ValueError, id="hi-below-lo"),
        pytest.param((["a"], 8, 2, 3, 4, 8, 0), ValueError, id="task-code-out-of-range"),
        pytest.param((["a"], 8, 2, 3, 4, "qa", 0), TypeError, id="task-code-str"),
        pytest.param((["a"], 8, 2, 3, 4, None, -1), ValueError, id="negative-offset"),
    ],
)
def test_bad_arguments_raise_instead_of_crashing(args, error):
    if extractor._compiled is None:
        pytest.skip("features._compiled not built")
    with pytest.raises(error):
        extractor._compiled.hashed_row(*args, extractor._LOG_TABLE)
    with pytest.raises(TypeError):
        extractor._compiled.hashed_row(["a"], 8, 2, 3, 4, None, 0, b"short")


# ---------------------------------------------------------------------------------------------
# The compiled dense-signal counts (char_classes, quantities, keyword_counts) against the
# Python reference in features.signals: the same counts for any input, so dense rows do not
# depend on whether the extension was built either.

needs_build = pytest.mark.skipif(signals._compiled is None, reason="features._compiled not built")
ALL_CODE_POINTS = range(sys.maxunicode + 1)
# Characters the quantity patterns care about, in dense mixes: ASCII and other decimal digits
# (Arabic-Indic, Devanagari, full-width, Mathematical bold), look-alikes that are not decimal
# (superscript, circled, Roman numeral), separators, ASCII and Unicode whitespace.
QUANTITY_CHAR = st.sampled_from(
    list("0123456789")
    + ["\u0663", "\u0967", "\uff17", "\U0001d7d1", "\u00b2", "\u2460"]
    + ["\u2167", ".", ",", "/", "!", "?", "%", " ", "\n", "\t", "\r", "\x0b", "\x0c", "\x1c"]
    + ["\x1f", "\x85", "\xa0", "\u2003", "\u2028", "\u3000", "\u200b", "a", "Z", "\ud800"]
)
QUANTITY_TEXT = st.text(QUANTITY_CHAR, max_size=200) | st.text(ANY_CHAR, max_size=200)


def test_signals_use_the_compiled_counts():
    if ALLOW_PURE_PYTHON and signals._compiled is None:
        pytest.skip("PROMPTROUTE_ALLOW_PURE_PYTHON=1 and features._compiled is not built")
    assert signals._class_counts is signals._compiled.char_classes
    assert signals._quantities is signals._compiled.quantities
    assert signals._keyword_counts.func is signals._compiled.keyword_counts


@needs_build
def test_every_code_point_has_the_reference_class():
    got = [signals._compiled.char_classes(chr(c)).index(1) for c in ALL_CODE_POINTS]
    cps = np.arange(sys.maxunicode + 1, dtype=np.uint32)
    interval = np.searchsorted(signals._CLASS_STARTS, cps, side="right") - 1
    assert got == signals._CLASS_OF_INTERVAL[interval].tolist()


@needs_build
def test_digit_and_space_are_res_for_every_code_point():
    # quantities' \d and \s against re's, one code point at a time: a number is a digit alone,
    # and ".{c}x" holds a sentence end exactly when c is whitespace.
    everything = "".join(map(chr, ALL_CODE_POINTS))
    digits = {ord(c) for c in re.findall(r"\d", everything)}
    spaces = {ord(c) for c in re.findall(r"\s", everything)}
    quantities = signals._compiled.quantities
    assert {c for c in ALL_CODE_POINTS if quantities(chr(c), True)[0]} == digits
    assert {c for c in ALL_CODE_POINTS if quantities(f".{chr(c)}x", False)[5]} == spaces


@needs_build
@settings(max_examples=500, deadline=None)
@given(text=QUANTITY_TEXT | st.text(ANY_CHAR, max_size=3000), numbers_too=st.booleans())
@example(text="", numbers_too=True)
@example(text="1.5, 3/4 and 1.5! 12,3.4.", numbers_too=True)
@example(text="1 / 2 /3 1/ 2 1 /2 1  /2 1/  2 4/5/6", numbers_too=True)
@example(text="1..2 1.,2 ,1, .1. 1,2,3.4.5 0.1.2.3", numbers_too=True)
@example(text="?\n.\u2003!\x85. .", numbers_too=False)
@example(text="\u0663.\u0664 \uff11/\uff12 1\u00b2", numbers_too=True)
@example(text="\ud800 1.2 \udfff3", numbers_too=True)
def test_quantities_are_the_reference_counts(text, numbers_too):
    expected = signals._quantities_python(text, numbers_too)
    assert signals._compiled.quantities(text, numbers_too) == expected
    if numbers_too:  # the reference's guards skip nothing that could match
        numbers = signals._NUMBER_RE.findall(text)
        assert expected[:3] == (
            len(numbers),
            len(set(numbers)),
            max(map(len, numbers), default=0),
        )
        assert expected[3] == len(signals._FRACTION_RE.findall(text))
        assert expected[4] == len(signals._DECIMAL_RE.findall(text))


@needs_build
@settings(max_examples=300, deadline=None)
@given(text=st.text(ANY_CHAR, max_size=3000) | st.text(QUANTITY_CHAR, max_size=500))
@example(text="\ud800\udfff\U0001f600 \u00ff\u0100")
def test_char_classes_are_the_reference_counts(text):
    assert signals._compiled.char_classes(text) == signals._class_counts_python(text)


LARGE_TEXTS = [
    pytest.param("1" * 1_000_000, id="one-huge-number"),
    pytest.param("1.2," * 250_000, id="one-huge-grouped-number"),
    pytest.param(" ".join(map(str, range(150_000))), id="many-distinct-numbers"),
    pytest.param("\u0663 \u0664." * 200_000, id="arabic-indic-digits"),
    pytest.param("\U0001d7d9/\U0001d7da. " * 100_000, id="astral-digits"),
    pytest.param("1/2. 3.4! " * 100_000, id="fractions-decimals-sentences"),
    pytest.param("\ud800" * 100_000, id="lone-surrogates"),
]


@needs_build
@pytest.mark.parametrize("text", LARGE_TEXTS)
def test_large_texts_give_the_reference_counts(text):
    for numbers_too in (True, False):
        expected = signals._quantities_python(text, numbers_too)
        assert signals._compiled.quantities(text, numbers_too) == expected
    assert signals._compiled.char_classes(text) == signals._class_counts_python(text)


# Words the lexicon knows (keys and every phrase token), in mixes dense enough to form phrases.
LEXICON_WORD = st.sampled_from(
    sorted(
        set(signals._LEXICON)
        | {t for _, phrases in signals._LEXICON.values() for _, ts, _ in phrases for t in ts}
    )
)


@needs_build
@settings(max_examples=400, deadline=None)
@given(
    words=st.lists(LEXICON_WORD | st.text(ANY_CHAR, max_size=6), max_size=60)
    | st.lists(LEXICON_WORD, max_size=300)
)
@example(words=["step", "by", "step", "by", "step"])
@example(words=["by", "step"])
@example(words=["in", "a", "nutshell", "in", "a"])
@example(words=["total", "sum", "ratio", "def", "std", "import"])
def test_keyword_counts_are_the_reference_counts(words):
    assert signals._keyword_counts(words) == signals._keyword_counts_python(words)


@needs_build
def test_keyword_counts_of_many_words_are_the_reference_counts():
    words = signals.tokenize(" ".join(signals._LEXICON) * 50)
    assert signals._keyword_counts(words) == signals._keyword_counts_python(words)


class _Str(str):
    pass


@needs_build
@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda h: h.char_classes(b"abc"), TypeError, id="classes-of-bytes"),
        pytest.param(lambda h: h.quantities(b"1", True), TypeError, id="quantities-of-bytes"),
        pytest.param(lambda h: h.quantities("1"), TypeError, id="quantities-one-argument"),
        pytest.param(lambda h: h.keyword_counts({}, 3, ("a",)), TypeError, id="tuple-words"),
        pytest.param(lambda h: h.keyword_counts({}, 3, [1]), TypeError, id="int-word"),
        pytest.param(lambda h: h.keyword_counts({}, 3, [_Str("a")]), TypeError, id="str-subclass"),
        pytest.param(lambda h: h.keyword_counts({}, -1, []), ValueError, id="negative-counters"),
        pytest.param(lambda h: h.keyword_counts({}, 5000, []), ValueError, id="many-counters"),
        pytest.param(lambda h: h.keyword_counts([], 3, []), TypeError, id="list-lexicon"),
        pytest.param(lambda h: h.keyword_counts({"a": (1,)}, 3, ["a"]), TypeError, id="entry"),
        pytest.param(
            lambda h: h.keyword_counts({"a": ((3,), ())}, 3, ["a"]), ValueError, id="group"
        ),
        pytest.param(
            lambda h: h.keyword_counts({"a": ((), ((0, ("a",), 0),))}, 3, ["a"]),
            TypeError,
            id="phrase-tokens",
        ),
        pytest.param(
            lambda h: h.keyword_counts({"a": ((), ((-1, ["a"], 0),))}, 3, ["a"]),
            ValueError,
            id="phrase-offset",
        ),
    ],
)
def test_bad_signal_arguments_raise_instead_of_crashing(call, error):
    with pytest.raises(error):
        call(signals._compiled)


def python_signals(prompt, max_scan_chars: int):
    # Not monkeypatch: a function-scoped fixture would be shared by hypothesis's examples.
    names = ("_class_counts", "_quantities", "_keyword_counts")
    saved = [getattr(signals, name) for name in names]
    for name in names:
        setattr(signals, name, getattr(signals, name + "_python"))
    try:
        return signals.dense_signals(prompt, max_scan_chars)
    finally:
        for name, value in zip(names, saved, strict=True):
            setattr(signals, name, value)


def assert_same_signals(prompt, max_scan_chars: int) -> None:
    ref_values, ref_words = python_signals(prompt, max_scan_chars)
    values, words = signals.dense_signals(prompt, max_scan_chars)
    assert np.array(values).tobytes() == np.array(ref_values).tobytes()
    assert words == ref_words


@needs_build
@settings(max_examples=300, deadline=None)
@given(
    text=st.text(ANY_CHAR, max_size=400) | QUANTITY_TEXT | st.text(max_size=2000),
    max_scan_chars=st.sampled_from([1, 40, 16384]),
)
@example(text="Why? Explain step by step: 1.5 + 3/4 = 2.25, \u0663.\u0664", max_scan_chars=16384)
@example(text="\u0663 \u0664/\u0665 only Arabic-Indic digits.", max_scan_chars=16384)
def test_dense_signals_are_the_same_on_either_path(text, max_scan_chars):
    assert_same_signals(Prompt(text, text), max_scan_chars)


@needs_build
def test_dense_signals_of_real_prompts_are_the_same_on_either_path():
    from bench._common import real_prompts

    for _, prompt in real_prompts(400, seed=1):
        assert_same_signals(prompt, 16384)
        assert_same_signals(prompt, 100)
