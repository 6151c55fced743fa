"""The compiled hashed n-grams (features/_compiled.c) against the Python reference.

`features.extractor._hashed_python` defines the hashed block; `_hashed_compiled` must give the
same columns in the same order with bit-identical values, for any input, so that rows (and
therefore FEATURE_VERSION "2" and trained artifacts) do not depend on whether the extension
was built.
"""

from __future__ import annotations

import math
import os
import re
import sys

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from features import Prompt, PromptFeaturizer, extractor, from_messages, signals
from features.signals import DENSE_FEATURE_NAMES

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
    assert extractor._single_row is extractor._single_row_compiled


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
def test_rows_of_any_size_in_turn_are_identical():
    """The C merge keeps its hash table between rows (cleared for each row, and used in part
    when it is larger than the row needs): rows small, large (40,000 tokens), small again and
    in between, the same row twice and a different row of the same size, one after another,
    are each the reference row."""
    sizes = [3, 3, 40_000, 5, 700, 700, 701, 12, 9_000, 9_000, 1, 1]
    for turn, size in enumerate(sizes):
        words = [f"w{i % (size // 2 + 1 + turn % 2)}x" for i in range(size)]
        assert_identical(*both(words, 2**17, 2, 3, 4, None))


@compiled
@settings(max_examples=150, deadline=None)
@given(text=st.text(ANY_CHAR, max_size=300), task_type=st.none() | st.text(max_size=8))
def test_transform_one_is_the_same_row_on_either_path(text, task_type):
    f = PromptFeaturizer(n_hash_features=1000, word_ngram_max=3, char_ngrams=(2, 5)).fit([])
    ref_dense, ref_cols, ref_values = row_with(extractor._hashed_python, f, text, task_type)
    dense, cols, values = row_with(extractor._hashed_compiled, f, text, task_type)
    assert dense.tobytes() == ref_dense.tobytes()
    assert_identical((ref_cols, ref_values), (cols, values))


@compiled
@settings(max_examples=100, deadline=None)
@given(
    text=st.text(ANY_CHAR, max_size=300),
    seed=st.integers(0, 2**32 - 1),
    conversation=st.booleans(),
)
@example(text="a " * (extractor._LOG_TABLE_SIZE + 5), seed=1, conversation=False)  # long input
def test_weighted_rows_are_the_same_on_either_path(text, seed, conversation):
    # Column weights are applied inside the row, before its one norm: in C on the hot path.
    f = PromptFeaturizer(n_hash_features=1000).fit([])
    f.set_column_weights(np.random.default_rng(seed).uniform(0.25, 9.0, 1000))
    prompt = (
        from_messages(
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
        )
        if conversation and text.strip()
        else text
    )
    ref = row_with(extractor._hashed_python, f, prompt, None)
    got = row_with(extractor._hashed_compiled, f, prompt, None)
    assert got[0].tobytes() == ref[0].tobytes()
    assert_identical((ref[1], ref[2]), (got[1], got[2]))


@compiled
def test_weighted_rows_past_the_log_table_are_the_same_on_either_path():
    # A count past the log table comes back raw from C and is finished in Python
    # (`_hashed_arrays`), weights included. The feature row's scan window never gets there, so
    # this calls the hashed block directly.
    n = 97
    w = np.random.default_rng(3).uniform(0.25, 9.0, n)
    weights = extractor._Weights(w, w.tobytes())
    words = ["a"] * (extractor._LOG_TABLE_SIZE + 5) + ["b", "c"]
    ref = extractor._hashed_python(words, n, 2, 3, 4, None, N_DENSE, weights)
    got = extractor._hashed_compiled(words, n, 2, 3, 4, None, N_DENSE, weights)
    assert_identical(ref, got)
    unweighted = extractor._hashed_python(words, n, 2, 3, 4, None, N_DENSE)
    assert not np.array_equal(ref[1], unweighted[1])


def test_the_compiled_row_refuses_weights_of_the_wrong_size():
    if extractor._compiled is None:
        pytest.skip("features._compiled not built")
    for weights in (b"", np.ones(7).tobytes(), "nine"):
        with pytest.raises(TypeError, match="column_weights must be None or bytes of n"):
            extractor._compiled.hashed_row(
                ["a"], 8, 2, 3, 4, None, 0, extractor._LOG_TABLE, weights
            )


def row_with(hashed, f: PromptFeaturizer, text, task_type: str | None):
    # Not monkeypatch: a function-scoped fixture would be shared by hypothesis's examples.
    # A single prompt's compiled row is one call (`_single_row_compiled`); the Python row
    # assembles dense signals and `_hashed`.
    compiled = hashed is extractor._hashed_compiled
    saved = extractor._hashed, extractor._single_row
    extractor._hashed = hashed
    extractor._single_row = (
        extractor._single_row_compiled if compiled else extractor._single_row_python
    )
    try:
        return f.transform_one(text, task_type)
    finally:
        extractor._hashed, extractor._single_row = saved


@compiled
@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=300),
    table=st.lists(
        st.floats(-1e150, 1e150, allow_nan=False) | st.floats(-2.0, 2.0, allow_nan=False),
        min_size=1,
        max_size=40,
    ),
)
@example(words=["a", "b", "c"], table=[0.0, 0.0])  # weights exactly 1: the integer sum
@example(words=["a"] * 3, table=[0.0, 0.0, 0.0, -1.0])  # a weight of 0
def test_the_compiled_norm_is_the_correctly_rounded_one(words, table):
    """The C row's L2 norm is math.fsum's, for weights in the integer sum's range and out of it
    (a log table is an argument, so any finite weight can be made)."""
    n, kmax, lo, hi = 97, 2, 2, 3
    # A one-entry table puts every count past it: the row's values are the signed counts.
    cols, counts, raw = extractor._compiled.hashed_row(
        words, n, kmax, lo, hi, None, N_DENSE, np.zeros(1).tobytes()
    )
    counts = np.frombuffer(counts, dtype=np.float64)
    assume(raw and counts.size and np.abs(counts).max() < len(table))
    cols2, values, raw2 = extractor._compiled.hashed_row(
        words, n, kmax, lo, hi, None, N_DENSE, np.array(table, dtype=np.float64).tobytes()
    )
    assert not raw2 and cols2 == cols
    weights = np.copysign(1.0 + np.array(table)[np.abs(counts).astype(int)], counts)
    assume(np.any(weights != 0.0))
    expected = weights * (1.0 / math.sqrt(math.fsum((weights * weights).tolist())))
    assert np.frombuffer(values, dtype=np.float64).tobytes() == expected.tobytes()


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


def test_the_compiled_module_is_built_in_ci():
    """The extension is optional, so that an install without a compiler still works; CI has one
    (.ci/run), and there a failed build must fail the run instead of skipping these tests."""
    if os.environ.get("CI") != "true":
        pytest.skip("only CI requires the build")
    assert signals._compiled is not None
    assert extractor._compiled is not None


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


def test_signals_use_the_compiled_dense_signals():
    if ALLOW_PURE_PYTHON and signals._compiled is None:
        pytest.skip("PROMPTROUTE_ALLOW_PURE_PYTHON=1 and features._compiled is not built")
    assert signals._compiled is not None
    prompt = Prompt("Why? 1. step", "Why? 1. step")
    # The served path is the compiled one: the Python reference is never called.
    saved = signals._dense_signals_python
    signals._dense_signals_python = None  # type: ignore[assignment]
    try:
        values, words = signals.dense_signals(prompt, 16384)
    finally:
        signals._dense_signals_python = saved
    assert values.tobytes() == saved(prompt, 16384)[0].tobytes() and words == ["why", "1", "step"]


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
    assert compiled_keyword_counts(words) == signals._keyword_counts_python(words)


def compiled_keyword_counts(words: list[str]) -> list[int]:
    return signals._compiled.keyword_counts(signals._LEXICON, signals._N_COUNTERS, words)


@needs_build
def test_keyword_counts_of_many_words_are_the_reference_counts():
    words = signals.tokenize(" ".join(signals._LEXICON) * 50)
    assert compiled_keyword_counts(words) == signals._keyword_counts_python(words)


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


def assert_same_signals(prompt, max_scan_chars: int) -> None:
    ref_values, ref_words = signals._dense_signals_python(prompt, max_scan_chars)
    values, words = signals._dense_signals_compiled(prompt, max_scan_chars)
    assert values.dtype == ref_values.dtype == np.float64
    assert values.tobytes() == ref_values.tobytes()
    assert words == ref_words
    assert values.flags.writeable and values.flags.owndata is False  # a bytearray's buffer
    values += 0.0  # callers may scale the row in place, as the Python path allows


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


@needs_build
@pytest.mark.parametrize("other", ["", " caf\u00e9", " \u4e2d\u6587", " \U0001f600"])
def test_every_lexicon_phrase_is_counted_as_the_reference_counts(other):
    """The compiled scan matches phrases against runs of the lower-cased window, not a list of
    str: every phrase of the lexicon, whole, cut short, with a token changed and repeated, in
    strings of one, two and four bytes per code point, counts as the Python reference does."""
    phrases = sorted(
        {" ".join(tokens) for _, hits in signals._LEXICON.values() for _, tokens, _ in hits}
    )
    assert phrases  # the lexicon has phrases (keyed by their longest token)
    for phrase in phrases:
        tokens = phrase.split()
        texts = [
            phrase,
            f"so, {phrase.upper()}!{other}",
            " ".join(tokens[:-1]) + other,
            " ".join([*tokens[:-1], tokens[-1] + "x"]),
            f"{phrase} {phrase}{other} {tokens[0]}",
        ]
        for text in texts:
            assert_same_signals(Prompt(text, text), 16384)
            f = PromptFeaturizer(n_hash_features=1000).fit([])
            ref = row_with(extractor._hashed_python, f, text, None)
            row = row_with(extractor._hashed_compiled, f, text, None)
            assert row[0].tobytes() == ref[0].tobytes()
            assert_identical(ref[1:], row[1:])


# Pieces the compiled dense_signals handles itself (line starts, operators between digits, URLs,
# fences, counted characters) or hands to Python's regexes behind a gate (code constructs,
# LaTeX, JSON), in dense mixes: texts of these pieces join into lines that nearly match.
SIGNAL_PIECES = st.sampled_from(
    ["\n", "\n", " ", "  ", "\t", "\r", "1", "12", "1234", "\u0663", ".", ")", "(", ":", "#", "*"]
    + ["A", "a", "B", "h", "H", "I", "i", "J", "q", "Q", "x", "\u0131", "\u0130", "\u017f"]
    + ["question", "Question", "QUESTION", "answer", "Answer", "input", "Output", "example"]
    + ["Example 2", "solution", "Problem", "in", "ou", "so", "pr", "ex", "questio", "answe"]
    + ["queſtion", "ınput", "A) ", "(b)", "C.", "1. ", "2) ", "10.\t", "1000. ", "Q1:", "A #3:"]
    + ["+", "-", "*", "/", "^", "=", "\u00d7", "\u00f7", "3+4", "12 = 5", "2 *\t3"]
    + ["://", "www.", "://www.", "w", "W", "WWW.", "http://x.com", "```", "``", "`"]
    + ["?", "\uff1f", "%", ",", "$x", "$5", "$$", "\\frac", "\\(", "\\", "{", '{"a":', '"']
    + ["def f(", "function g() {", "class A:", "import os", "from a import b", "#include <"]
    + ["public static", "SELECT a FROM", "console.log(", "std::", "step by step", "why"]
    + ["\u0130", "\ud800", "\U0001d7d9", "\u3002", "\u2028", "\x85", "\u00a0", "K", "\u212a"]
    + [" " * 8, " " * 9, "\t" * 11, " " * 12, "#####", "****", "Q 123:", "A#4:", "answer *:"]
    + ["example\t#1 :", "(h)", "(I)", "i.", "h)\r", "1234. ", "Solution  :", "q\t\t\t12\t*:"]
)
SIGNAL_TEXT = st.lists(SIGNAL_PIECES, max_size=80).map("".join)


@needs_build
@settings(max_examples=600, deadline=None)
@given(text=SIGNAL_TEXT, max_scan_chars=st.sampled_from([1, 7, 40, 16384]))
@example(text="Q: a\nA: b\nQ: c\nA: d\nq:e", max_scan_chars=16384)
@example(text="  \t Question 12 *: x\n## Answer:\n**Example #3**:", max_scan_chars=16384)
@example(text="A)\n(b) x\nC.\nH) y\nI) z\n10. a\n1000. b\n\u0663. c", max_scan_chars=16384)
@example(text="\u0131nput: x\nQUE\u017fTION: y\n\u0130nput: z", max_scan_chars=16384)
@example(text="3+4 12 = 5 2*\t3 1 / 2 7^2 8\u00d79 9\u00f73 -4 5-", max_scan_chars=16384)
@example(text="http://www.x.com www.y.org HTTPS://WWW.Z ftp://", max_scan_chars=16384)
@example(text='```` ``` `````` ?\uff1f %, $x \\frac{1}{2} {"k": 1}', max_scan_chars=16384)
@example(text="A: one\n" * 30 + "Answer: x", max_scan_chars=40)
def test_dense_signals_of_signal_pieces_are_the_same_on_either_path(text, max_scan_chars):
    assert_same_signals(Prompt(text, text[: len(text) // 2]), max_scan_chars)


@needs_build
@settings(max_examples=150, deadline=None)
@given(
    text=st.text(ANY_CHAR, max_size=200) | SIGNAL_TEXT,
    last_user=st.text(max_size=300),
    turns=st.integers(0, 10**6) | st.floats(0, 1e300),
    images=st.integers(0, 2**70),
    has_system=st.booleans() | st.sampled_from([0, 1, "", "x"]),
)
def test_length_signals_of_any_prompt_fields_are_the_same_on_either_path(
    text, last_user, turns, images, has_system
):
    assert_same_signals(Prompt(text, last_user, turns, images, has_system), 16384)


@needs_build
@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param(Prompt("x", "x", turns=-1), id="turns-minus-one"),
        pytest.param(Prompt("x", "x", images=-5), id="images-below-minus-one"),
        pytest.param(Prompt("x", "x", images=10**400), id="images-past-float"),
        pytest.param(Prompt("x", "x", turns="3"), id="turns-str"),  # type: ignore[arg-type]
    ],
)
def test_bad_prompt_fields_raise_the_same_error_on_either_path(prompt):
    with pytest.raises(Exception) as reference:
        signals._dense_signals_python(prompt, 16384)
    with pytest.raises(reference.type):
        signals._dense_signals_compiled(prompt, 16384)


@needs_build
@pytest.mark.parametrize(
    "text",
    [
        pytest.param("w" * 30_000 + "\n1. x\nA) y", id="long-window"),
        pytest.param(("Q: 1+2=3 www.a.b\n" * 5000), id="many-lines"),
        pytest.param("\U0001d7d9/\U0001d7da. \n" * 4000, id="astral"),
        pytest.param("é" * 20_000 + " A) x", id="latin1-long"),
    ],
)
@pytest.mark.parametrize("max_scan_chars", [100, 16384, 10**6])
def test_large_prompts_give_the_same_signals(text, max_scan_chars):
    assert_same_signals(Prompt(text, text), max_scan_chars)


@needs_build
@pytest.mark.parametrize(
    ("args", "error"),
    [
        pytest.param(("x", 1, 1, 0, False, 16384), TypeError, id="six-arguments"),
        pytest.param(("x", -1, 1, 0, False, 16384, None), ValueError, id="negative-last-user"),
        pytest.param(("x", 1, 1, 0, False, -1, None), ValueError, id="negative-scan"),
        pytest.param(("x", 1, 1, 0, False, 16384, ()), TypeError, id="empty-spec"),
        pytest.param(("x", 1, 1, 0, False, 16384, "spec"), TypeError, id="str-spec"),
    ],
)
def test_bad_dense_signal_arguments_raise_instead_of_crashing(args, error):
    with pytest.raises(error):
        signals._compiled.dense_signals(*args)
    spec = list(signals.COMPILED_SPEC)
    spec[1] = 5000  # more counters than the module allows
    with pytest.raises(ValueError):
        signals._compiled.dense_signals("x", 1, 1, 0, False, 16384, tuple(spec))
    spec = list(signals.COMPILED_SPEC)
    spec[0] = []
    with pytest.raises(TypeError):
        signals._compiled.dense_signals("x", 1, 1, 0, False, 16384, tuple(spec))


# ---------------------------------------------------------------------------------------------
# The head's compiled kernels (models.router.LinearHead.logits_one and .scores): the logits and
# scores of numpy's path, to rounding, whatever the layout of the weights.

HEAD_SHAPES = st.tuples(st.integers(1, 300), st.integers(1, 24), st.integers(0, 50))


@needs_build
@settings(max_examples=200, deadline=None)
@given(shape=HEAD_SHAPES, seed=st.integers(0, 2**32 - 1), fortran=st.booleans())
def test_head_logits_with_the_compiled_kernel_are_the_take_logits(shape, seed, fortran):
    from models import router

    n_hash, k, n_dense = shape
    rng = np.random.default_rng(seed)
    hashed_w = rng.normal(scale=3, size=(n_hash, k)).astype(np.float32)
    if fortran:
        hashed_w = np.asfortranarray(hashed_w)
    head = router.LinearHead("sigmoid", rng.normal(size=(n_dense, k)), hashed_w, rng.normal(size=k))
    idx = n_dense + rng.choice(n_hash, size=rng.integers(0, n_hash + 1), replace=False)
    vals = rng.normal(size=idx.size)
    dense = rng.normal(size=n_dense)
    dense[rng.random(n_dense) < 0.5] = 0.0  # the kernel skips zero rows of the dense block
    expected = dense @ head.dense_w + head.bias
    if idx.size:
        expected += vals @ hashed_w.take(idx - n_dense, axis=0)
    got = head.logits_one(dense, idx.astype(np.int64), vals, n_dense)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@needs_build
@settings(max_examples=200, deadline=None)
@given(
    width=st.integers(1, 70),
    n=st.integers(0, 41),
    seed=st.integers(0, 2**32 - 1),
    fortran=st.booleans(),
)
def test_head_kernel_adds_the_rows_one_after_another(width, n, seed, fortran):
    """Whatever path the kernel takes (AVX blocks of rows and their tails, the portable loops,
    column-strided weights), each logit is z + x_0 w_0 + x_1 w_1 + ... rounded step by step in
    row order: the same bits on every machine."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(scale=2, size=(50, width)).astype(np.float32)
    if fortran:
        weights = np.asfortranarray(weights)
    idx = rng.integers(7, 57, size=n).astype(np.int64)
    vals = rng.normal(size=n)
    z = rng.normal(size=width)
    expected = z.copy()
    for row, x in zip(idx - 7, vals, strict=True):
        expected = expected + x * weights[row].astype(np.float64)
    signals._compiled.add_rows(z, weights, idx, vals, 7)
    assert z.tobytes() == expected.tobytes()


_PORTABLE_HEAD = """
import sys
import numpy as np
from features import _compiled
data = np.load(sys.argv[1])
out = {}
for key in sorted({k.split("/")[0] for k in data.files}):
    z = data[key + "/z"].copy()
    _compiled.add_rows(z, data[key + "/w"], data[key + "/idx"], data[key + "/vals"], 3)
    out[key] = z
np.savez(sys.argv[2], **out)
"""


@needs_build
def test_head_kernel_portable_loops_give_the_simd_bits(tmp_path):
    """With PROMPTROUTE_COMPILED_AVX=0 (what a CPU without AVX runs) the portable loops give
    the same logits, bit for bit, as this process's kernel."""
    import subprocess

    rng = np.random.default_rng(11)
    cases, expected = {}, {}
    for width in (1, 5, 8, 13, 54):
        for n in (0, 1, 2, 3, 17):
            key = f"w{width}n{n}"
            w = rng.normal(size=(40, width)).astype(np.float32)
            idx = rng.integers(3, 43, size=n).astype(np.int64)
            vals, z = rng.normal(size=n), rng.normal(size=width)
            cases.update({f"{key}/z": z, f"{key}/w": w, f"{key}/idx": idx, f"{key}/vals": vals})
            expected[key] = z.copy()
            signals._compiled.add_rows(expected[key], w, idx, vals, 3)
    np.savez(tmp_path / "in.npz", **cases)
    env = {**os.environ, "PROMPTROUTE_COMPILED_AVX": "0"}
    subprocess.run(
        [sys.executable, "-c", _PORTABLE_HEAD, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env,
        check=True,
    )
    got = np.load(tmp_path / "out.npz")
    assert sorted(got.files) == sorted(expected)
    for key, z in expected.items():
        assert got[key].tobytes() == z.tobytes(), key


@needs_build
@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=64)
        | st.floats(-2.0, 2.0)
        | st.integers(-(10**7), 10**7).map(lambda i: i / 2e6),  # halves at the 6th decimal
        max_size=40,
    ),
    decimals=st.integers(0, 8),
    step=st.integers(1, 3),
)
def test_rounded_scores_are_numpys_round(values, decimals, step):
    """The answer's rounded scores: numpy's round(x, d).tolist(), bit for bit (NaN as NaN),
    whatever the values, including strided vectors."""
    x = np.repeat(np.asarray(values, dtype=np.float64), step)[::step]
    got = signals._compiled.round_list(x, decimals)
    with np.errstate(all="ignore"):  # numpy warns where x * 10**d overflows (to inf, as here)
        want = np.round(x, decimals).tolist()
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert type(g) is float
        assert (math.isnan(g) and math.isnan(w)) or struct_bits(g) == struct_bits(w)


def struct_bits(x: float) -> bytes:
    import struct

    return struct.pack("<d", x)


@needs_build
@pytest.mark.parametrize(
    ("values", "decimals", "error"),
    [
        pytest.param(np.zeros(3, np.float32), 6, TypeError, id="float32"),
        pytest.param(np.zeros((2, 2)), 6, TypeError, id="2-d"),
        pytest.param(np.zeros(3), 9, ValueError, id="decimals-too-many"),
        pytest.param(np.zeros(3), -1, ValueError, id="decimals-negative"),
        pytest.param(np.zeros(3), "6", TypeError, id="decimals-str"),
    ],
)
def test_round_list_refuses_what_it_cannot_round(values, decimals, error):
    with pytest.raises(error):
        signals._compiled.round_list(values, decimals)


@needs_build
def test_head_logits_and_scores_of_real_rows_are_numpys(tiny_artifact, monkeypatch):
    from bench._common import real_prompts
    from models import router
    from models.artifact import load_router

    r, _ = load_router(tiny_artifact)
    for _, prompt in real_prompts(300, seed=2):
        dense, idx, vals = r.featurizer.transform_one(prompt)
        for head in r.heads.values():
            # All columns (scores, then any gain and domain blocks), as the head stacks them.
            expected = dense @ head._dense + head._bias
            expected += vals @ head._hashed.take(idx - r.n_dense, axis=0)
            z = head.logits_one(dense, idx, vals, r.n_dense)
            np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-12)
            with monkeypatch.context() as m:
                m.setattr(router, "_head_scores", None)
                want = head.scores(expected.copy())
            got = head.scores(z)
            np.testing.assert_allclose(got[0], want[0], rtol=1e-12, atol=1e-15)
            if want[1] is None:
                assert got[1] is None
            else:
                np.testing.assert_allclose(got[1], want[1], rtol=1e-12, atol=1e-15)


@needs_build
@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(1, 12),
    g=st.integers(0, 6),
    d=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.1, 3.0, 40.0, 800.0]),
)
def test_compiled_head_scores_are_the_numpy_scores(k, g, d, seed, scale):
    """Gain block and domain prior, any sizes, logits up to ±800 (sigmoid and softmax saturate)."""
    from models import router

    rng = np.random.default_rng(seed)
    g = min(g, k - 1) if k > 1 else 0
    picked = rng.permutation(k)
    gain_models, gain_ref = picked[:g], rng.choice(picked[g:], size=g)
    domain = None
    if d:
        domain = router.DomainPrior(
            names=[f"d{i}" for i in range(d)],
            means=rng.uniform(size=(d, k)),
            measured=rng.uniform(size=(d, k)) < 0.8,
            strength=rng.uniform(size=(d, k)),
        )
    n_dense = 3
    width = g + d
    extra = None
    if width:
        extra = (
            rng.normal(size=(n_dense, width)),
            np.zeros((4, width), np.float32),
            np.zeros(width),
        )
    head = router.LinearHead(
        "sigmoid",
        rng.normal(size=(n_dense, k)),
        np.zeros((4, k), np.float32),
        np.zeros(k),
        extra=extra,
        gain_models=gain_models,
        gain_ref=gain_ref,
        domain=domain,
    )
    z = rng.normal(scale=scale, size=k + width)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(router, "_head_scores", None)
        want_s, want_p = head.scores(z.copy())
    got_s, got_p = head.scores(z.copy())
    np.testing.assert_allclose(got_s, want_s, rtol=1e-12, atol=1e-15)
    if d:
        np.testing.assert_allclose(got_p, want_p, rtol=1e-12, atol=1e-15)
    else:
        assert got_p is None and want_p is None


@needs_build
@pytest.mark.parametrize(
    ("z", "weights", "idx", "vals", "offset", "error"),
    [
        pytest.param(
            np.zeros(2),
            np.zeros((3, 2), np.float64),
            [0],
            [1.0],
            0,
            TypeError,
            id="float64-weights",
        ),
        pytest.param(
            np.zeros(2), np.zeros(3, np.float32), [0], [1.0], 0, TypeError, id="1d-weights"
        ),
        pytest.param(
            np.zeros(2),
            np.zeros((3, 2), np.float32),
            np.zeros(1, np.int32),
            [1.0],
            0,
            TypeError,
            id="int32",
        ),
        pytest.param(
            np.zeros(3), np.zeros((3, 2), np.float32), [0], [1.0], 0, TypeError, id="z-too-wide"
        ),
        pytest.param(
            np.zeros(2, np.float32),
            np.zeros((3, 2), np.float32),
            [0],
            [1.0],
            0,
            TypeError,
            id="float32-z",
        ),
        pytest.param(
            np.zeros(2), np.zeros((3, 2), np.float32), [0, 1], [1.0], 0, TypeError, id="short-vals"
        ),
        pytest.param(
            np.zeros(2), np.zeros((3, 2), np.float32), [3], [1.0], 0, IndexError, id="past-the-end"
        ),
        pytest.param(
            np.zeros(2),
            np.zeros((3, 2), np.float32),
            [1],
            [1.0],
            2,
            IndexError,
            id="below-the-offset",
        ),
        pytest.param(
            np.zeros(2), np.zeros((3, 2), np.float32), [0], [1.0], "0", TypeError, id="str-offset"
        ),
        pytest.param(np.zeros(2), b"abcdefgh", [0], [1.0], 0, TypeError, id="bytes-weights"),
    ],
)
def test_bad_head_kernel_arguments_raise_instead_of_crashing(z, weights, idx, vals, offset, error):
    idx = np.asarray(idx, dtype=np.int64) if isinstance(idx, list) else idx
    before = z.copy()
    with pytest.raises(error):
        signals._compiled.add_rows(z, weights, idx, np.asarray(vals, dtype=np.float64), offset)
    assert z.tobytes() == before.tobytes()


@needs_build
@pytest.mark.parametrize(
    ("dense", "dense_w", "idx", "error"),
    [
        pytest.param(np.ones(3), np.ones((3, 2)), [5], IndexError, id="bad-row-after-dense"),
        pytest.param(np.ones(3), np.ones((2, 2)), [0], TypeError, id="too-few-dense-rows"),
        pytest.param(np.ones(3), np.ones((3, 3)), [0], TypeError, id="dense-w-wider-than-z"),
        pytest.param(np.ones(3), np.ones((3, 2), np.float32), [0], TypeError, id="float32-dense-w"),
        pytest.param(np.ones((3, 1)), np.ones((3, 2)), [0], TypeError, id="2-d-dense"),
        pytest.param([1.0, 1.0, 1.0], np.ones((3, 2)), [0], TypeError, id="list-dense"),
    ],
)
def test_bad_dense_head_arguments_leave_z_alone(dense, dense_w, idx, error):
    z = np.zeros(2)
    with pytest.raises(error):
        signals._compiled.add_rows(
            z, np.ones((3, 2), np.float32), np.asarray(idx, np.int64), np.ones(1), 0, dense, dense_w
        )
    assert z.tobytes() == np.zeros(2).tobytes()
    with pytest.raises(TypeError, match="5 or 7 arguments"):
        signals._compiled.add_rows(z, np.ones((3, 2), np.float32), np.zeros(0, np.int64), z, 0, z)


@needs_build
@pytest.mark.parametrize(
    ("z", "k", "gm", "gr", "num", "den", "error"),
    [
        pytest.param(np.zeros(3), 3, [], [], None, None, None, id="plain"),
        pytest.param(np.zeros(3), 4, [], [], None, None, ValueError, id="k-past-z"),
        pytest.param(np.zeros(3), 2, [], [], None, None, ValueError, id="domains-without-prior"),
        pytest.param(np.zeros(3), 2, [0], [5], None, None, IndexError, id="ref-out-of-range"),
        pytest.param(np.zeros(3), 2, [0], [], None, None, TypeError, id="gain-lengths-differ"),
        pytest.param(
            np.zeros(3), 2, [], [], np.zeros((1, 2)), None, TypeError, id="num-without-den"
        ),
        pytest.param(
            np.zeros(3), 2, [], [], np.zeros((1, 3)), np.zeros((1, 3)), TypeError, id="prior-shape"
        ),
        pytest.param(np.zeros(6)[::2], 3, [], [], None, None, TypeError, id="strided-z"),
    ],
)
def test_head_scores_checks_its_arguments(z, k, gm, gr, num, den, error):
    gm, gr = np.asarray(gm, dtype=np.int64), np.asarray(gr, dtype=np.int64)
    if error is None:
        signals._compiled.head_scores(z, k, gm, gr, num, den)
        assert z.tolist() == [0.5, 0.5, 0.5]
    else:
        with pytest.raises(error):
            signals._compiled.head_scores(z, k, gm, gr, num, den)


def _lexsort_rank(score, cost, scale, mask):
    """models.router.Router.rank's numpy path."""
    negative_u = -score if scale is None else cost * scale - score
    order = np.lexsort((cost, negative_u))
    return order if mask is None else order[mask[order]]


# Few distinct values, so that keys and costs tie; NaN, infinities and signed zeros included.
_RANK_VALUES = st.sampled_from([0.0, -0.0, 0.25, 0.5, 1.0, 3.0, -1.0, np.inf, -np.inf, np.nan])


@needs_build
@settings(max_examples=400, deadline=None)
@given(
    data=st.data(),
    k=st.integers(0, 70),
    scale=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 2.0, 1e300])),
    masked=st.booleans(),
)
def test_compiled_rank_is_numpys_lexsort(data, k, scale, masked):
    score = np.array(data.draw(st.lists(_RANK_VALUES, min_size=k, max_size=k)), dtype=np.float64)
    cost = np.array(data.draw(st.lists(_RANK_VALUES, min_size=k, max_size=k)), dtype=np.float64)
    mask = None
    if masked:
        mask = np.array(data.draw(st.lists(st.booleans(), min_size=k, max_size=k)), dtype=bool)
    out = np.full(k, -1, dtype=np.int64)
    n = signals._compiled.rank_order(out, score, cost, scale, mask)
    with np.errstate(invalid="ignore", over="ignore"):
        want = _lexsort_rank(score, cost, scale, mask)
    assert out[:n].tolist() == want.tolist()


@needs_build
def test_router_rank_with_the_kernel_is_the_numpy_rank(tiny_artifact, monkeypatch):
    from bench._common import real_prompts
    from models import router
    from models.artifact import load_router

    r, _ = load_router(tiny_artifact)
    rng = np.random.default_rng(0)
    k = len(r.models)
    for _, prompt in real_prompts(200, seed=3):
        scored = r.score(prompt)
        mask = rng.uniform(size=k) < 0.7
        for knob in (None, 0.0, 0.3, 5.0, 1e308):
            for m in (None, mask):
                got = r.rank(scored, knob, m)
                with monkeypatch.context() as patch:
                    patch.setattr(router, "_rank_order", None)
                    want = r.rank(scored, knob, m)
                assert got.dtype == want.dtype and got.tolist() == want.tolist()


@needs_build
@pytest.mark.parametrize(
    ("out", "score", "cost", "scale", "mask"),
    [
        pytest.param(np.zeros(2, np.int64), np.zeros(3), np.zeros(3), None, None, id="short-out"),
        pytest.param(np.zeros(3, np.int64), np.zeros(3), np.zeros(2), None, None, id="short-cost"),
        pytest.param(np.zeros(3), np.zeros(3), np.zeros(3), None, None, id="float-out"),
        pytest.param(
            np.zeros(3, np.int64), np.zeros(3, np.float32), np.zeros(3), None, None, id="f32-score"
        ),
        pytest.param(
            np.zeros(3, np.int64), np.zeros(3), np.zeros(3), None, np.ones(3, int), id="int-mask"
        ),
        pytest.param(np.zeros(3, np.int64), np.zeros(3), np.zeros(3), "x", None, id="str-scale"),
    ],
)
def test_rank_order_checks_its_arguments(out, score, cost, scale, mask):
    with pytest.raises(TypeError):
        signals._compiled.rank_order(out, score, cost, scale, mask)


@needs_build
def test_rank_order_refuses_more_models_than_it_holds():
    n = 1025
    with pytest.raises(ValueError, match="at most 1024"):
        signals._compiled.rank_order(np.zeros(n, np.int64), np.zeros(n), np.zeros(n), None, None)


@needs_build
@pytest.mark.parametrize(
    "lexicon",
    [
        pytest.param({"why": ((1,), ()), "how": ((1,), ())}, id="str-keys"),
        pytest.param({"why": ((1,), ()), 7: ((2,), ()), "how": ((1,), ())}, id="an-int-key"),
    ],
)
def test_another_lexicon_is_used_then_the_spec_s_own_again(lexicon):
    # The compiled keyword table is rebuilt from whichever lexicon a spec holds.
    prompt = Prompt("Why? How, why... step by step", "x")
    spec = (lexicon, *signals.COMPILED_SPEC[1:])
    values, _ = signals._compiled.dense_signals(prompt.text, 1, 1, 0, False, 16384, spec)
    named = dict(zip(DENSE_FEATURE_NAMES, np.frombuffer(values), strict=True))
    assert named["kw.simple"] == math.log1p(3)
    assert named["kw.reasoning"] == named["kw.translate"] == 0.0
    assert_same_signals(prompt, 16384)


@needs_build
def test_switching_lexicons_frees_the_tables_it_replaces():
    import tracemalloc

    other = ({"why": ((1,), ())}, *signals.COMPILED_SPEC[1:])
    specs = (other, signals.COMPILED_SPEC)

    def switch(times: int) -> None:
        for k in range(times):
            signals._compiled.dense_signals("why not", 1, 1, 0, False, 16384, specs[k % 2])

    switch(10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        switch(400)  # a leaked table is ~20 KB: 400 of them would be ~8 MB
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 200_000


@needs_build
@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(((99,), ()), id="group-out-of-range"),
        pytest.param(((1,),), id="one-item"),
        pytest.param(((1,), ((0, ("why",), 1),)), id="phrase-tokens-not-a-list"),
    ],
)
def test_a_malformed_lexicon_entry_raises_when_its_word_occurs(entry):
    spec = ({"why": entry}, *signals.COMPILED_SPEC[1:])
    signals._compiled.dense_signals("nothing here", 1, 1, 0, False, 16384, spec)
    with pytest.raises((TypeError, ValueError)):
        signals._compiled.dense_signals("why", 1, 1, 0, False, 16384, spec)


@needs_build
def test_a_prior_built_from_fortran_ordered_arrays_still_scores_through_the_kernel():
    """Artifact arrays may come back in any memory order; the kernel needs C-ordered (D, K)."""
    from models import router

    rng = np.random.default_rng(5)
    prior = router.DomainPrior(
        names=["a", "b"],
        means=np.asfortranarray(rng.uniform(size=(2, 3))),
        measured=np.asfortranarray(np.ones((2, 3), dtype=bool)),
        strength=np.asfortranarray(rng.uniform(size=(2, 3))),
    )
    head = router.LinearHead(
        "sigmoid",
        np.zeros((1, 3)),
        np.zeros((2, 3), np.float32),
        np.zeros(3),
        extra=(np.zeros((1, 2)), np.zeros((2, 2), np.float32), np.zeros(2)),
        domain=prior,
    )
    z = rng.normal(size=5)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(router, "_head_scores", None)
        want = head.scores(z.copy())
    got = head.scores(z.copy())
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)


@needs_build
@given(
    text=st.text(ANY_CHAR, max_size=40)
    | st.text(ANY_CHAR, min_size=250, max_size=700)
    | st.builds(
        lambda a, b, c: a * 300 + b + c,
        st.sampled_from(["a", "\u00e9", "\u4e2d", "\U0001f600"]),
        st.text(ANY_CHAR, max_size=3),
        st.text(max_size=3),
    )
)
@example(text="x" * 256 + "\ud800")
@example(text="\u4e2d" * 255 + "\udfff")
@example(text="\U0001f600" * 513 + "\udbff")
@example(text="\ud7ff\ue000\uf800\U0001d800")  # just outside the range, in every position
def test_has_surrogates_is_whether_utf8_refuses_the_text(text):
    """The compiled check answers as the encoder does, for every string width and wherever the
    surrogate sits relative to the 256-code-point blocks the C loop reads."""
    from features import text as text_module

    assert text_module._compiled.has_surrogates(text) is text_module._has_surrogates_python(text)


def test_has_surrogates_wants_a_str():
    from features import text as text_module

    if text_module._compiled is None:
        pytest.skip("features._compiled not built")
    with pytest.raises(TypeError, match="must be a str"):
        text_module._compiled.has_surrogates(b"\xed\xa0\x80")


@needs_build
@pytest.mark.parametrize("filler", ["a", "\u00e9", "\u4e2d", "\U0001f600"])
def test_the_line_count_reads_the_whole_prompt_of_any_width(filler):
    """len.lines_log counts every newline of a prompt far longer than the window, in strings of
    one, two and four bytes per code point (the compiled count has a loop for each)."""
    text = ("x\n" + filler * 37) * 3000 + "\n"
    for path in (signals._dense_signals_python, signals._dense_signals_compiled):
        values, _ = path(Prompt(text, text), 64)
        lines = values[list(DENSE_FEATURE_NAMES).index("len.lines_log")]
        assert lines == math.log1p(text.count("\n") + 1)


@needs_build
def test_every_splitting_character_and_its_neighbours_split_as_the_reference_does():
    """The compiled tokenizer skips the search for a non-ASCII character whose block of 256
    code points holds no splitting punctuation: each punctuation character, the code points
    next to it, and characters of blocks without any, split words as `signals.tokenize` does."""
    points = set()
    for c in map(ord, signals._SPLIT_PUNCT):
        points.update({c - 1, c, c + 1, (c | 0xFF), (c & ~0xFF)})
    points.update({0x4E2D, 0x0416, 0x05D0, 0xAC00, 0x1F600, 0x10FFFF, 0xFFFF, 0x10000})
    chars = sorted(chr(p) for p in points if 0 <= p <= 0x10FFFF and not 0xD800 <= p <= 0xDFFF)
    text = " ".join(f"a{c}b" for c in chars) + "".join(f"x{c}" for c in chars)
    assert_same_signals(Prompt(text, text), 10**6)
    for c in chars:
        assert_same_signals(Prompt(f"a{c}b {c}", f"a{c}b {c}"), 16384)
