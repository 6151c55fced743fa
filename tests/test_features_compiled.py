"""The compiled hashed n-grams (features/_hashing.c) against the Python reference.

`features.extractor._hashed_python` defines the hashed block; `_hashed_compiled` must give the
same columns in the same order with bit-identical values, for any input, so that rows (and
therefore FEATURE_VERSION "2" and trained artifacts) do not depend on whether the extension
was built.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features import PromptFeaturizer, extractor

# Set on a machine that cannot compile C, to run the suite on the Python path alone.
ALLOW_PURE_PYTHON = os.environ.get("PROMPTROUTE_ALLOW_PURE_PYTHON") == "1"
compiled = pytest.mark.skipif(
    extractor._hashing is None and ALLOW_PURE_PYTHON, reason="features._hashing not built"
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
    """Fails when `pip install -e '.[dev]'` did not compile features/_hashing.c, so that CI
    proves the fast path is the one being served (PROMPTROUTE_ALLOW_PURE_PYTHON=1 opts out)."""
    if ALLOW_PURE_PYTHON and extractor._hashing is None:
        pytest.skip("PROMPTROUTE_ALLOW_PURE_PYTHON=1 and features._hashing is not built")
    assert extractor._hashing is not None, (
        "features._hashing was not built: is a C compiler installed?"
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
    if extractor._hashing is None:
        pytest.skip("features._hashing not built")
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
    if extractor._hashing is None:
        pytest.skip("features._hashing not built")
    with pytest.raises(error):
        extractor._hashing.hashed_row(*args, extractor._LOG_TABLE)
    with pytest.raises(TypeError):
        extractor._hashing.hashed_row(["a"], 8, 2, 3, 4, None, 0, b"short")
