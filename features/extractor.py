"""Turn a `Prompt` into the feature row the router's classifier scores.

A row is a dense block of named signals followed by a block of hashed n-grams::

    [ dense (n_dense_ columns, named below) | hash:0 … hash:N-1 (N = n_hash_features) ]

so a decision can be explained as weight × value per named feature. All features are computed
from the prompt alone (never from `Record.task` or metadata), deterministically and identically
in every process.

Versioning
----------
`FEATURE_VERSION` names the computation. Any change to a feature's name, the order of columns or
how any value is computed (patterns, keyword lists, tokenisation, hash function, scaling) must
bump it: a model trained on one version is only valid on rows of the same version, and the
artifact manifest records it.

The scan window
---------------
Counting signals read at most the first ``max_scan_chars`` characters plus the last 2048
(joined by a newline); only the length group looks at the whole prompt, through C-speed string
methods. So the work per prompt is bounded, and a huge prompt has the same non-length features
as its window.

Length (``len.*``, whole prompt; counts are log1p-scaled)
    ``len.chars_log``            characters
    ``len.words_log``            word tokens (see tokenisation); past the window, extrapolated
                                 from the window's tokens per character
    ``len.tokens_est_log``       estimated tokens, ceil(chars / 4)
    ``len.lines_log``            lines (newlines + 1; 0 for an empty prompt)
    ``len.turns_log``            user turns (`Prompt.turns`)
    ``len.images_log``           image parts
    ``len.has_system``           1 if a system or developer message is present
    ``len.last_user_chars_log``  characters of the last user turn
    ``len.last_user_share``      last user turn chars / all chars, clipped to [0, 1]

Regex signals (``re.*``, on the window; counts are log1p-scaled)
    ``re.code_fence``         occurrences of ```
    ``re.code_keyword``       code constructs: ``def f(``, ``function f(…) {``, ``class X`` then
                              ``:``/``(``/``{``, a line starting ``import x`` or
                              ``from x import y``, ``#include <``, ``public static``,
                              ``SELECT … FROM`` (upper case), ``console.log(``, ``std::``
    ``re.arithmetic``         an operator ``+ - * / ^ = × ÷`` between digits (``3+4``, ``12 = 5``;
                              at most one space either side)
    ``re.latex``              LaTeX commands (``\\frac``, ``\\begin``, ``\\sqrt``, ``\\alpha`` …,
                              ``\\(``, ``\\[``) plus math ``$`` openers (``$x``, ``$\\``, ``$$``;
                              not money like ``$5``)
    ``re.url``                ``://`` and ``www.`` (counted once when both)
    ``re.json``               JSON-looking objects: ``{ "key":``
    ``re.numbered_steps``     lines starting ``1.`` / ``2)`` and a space
    ``re.multiple_choice``    lines starting ``A)``, ``(B)``, ``C.`` (letters A-H, either case)
    ``re.few_shot_repeats``   repeats of line-start markers ``Q:``, ``A:``, ``Question:``,
                              ``Answer:``, ``Input:``, ``Output:``, ``Example [n]:``,
                              ``Solution:``, ``Problem:`` (any case, after optional ``#``/``*``)
                              — per marker, occurrences − 1, summed
    ``re.question_marks``     ``?`` and ``？``
    ``re.digit_ratio``        ASCII digits / characters
    ``re.upper_ratio``        ASCII upper-case letters / ASCII letters
    ``re.punct_ratio``        ASCII punctuation / characters
    ``re.avg_word_len_log``   log1p(mean characters per word token)

Keyword groups (``kw.*``, on the window; log1p of the number of matches)
    Whole lower-cased word tokens, phrases as consecutive tokens (full lists in
    `features.signals`):

    ``kw.reasoning``    step by step, explain in detail, prove, analyze, compare, why, derive,
                        justify, evaluate, pros and cons …
    ``kw.simple``       what is, who is, when did, name the, define, list, synonym …
    ``kw.translate``    translate, translation, into english …
    ``kw.summarize``    summarize, summary, tldr, key points …
    ``kw.creative``     poem, story, essay, lyrics, haiku, fiction …
    ``kw.coding``       implement, function, bug, debug, refactor, python, sql, algorithm …
    ``kw.math``         how many, how much, calculate, compute, total, percent, average …
    ``kw.equation``     solve, equation, integral, derivative, probability, theorem, matrix …
    ``kw.constraints``  only, must, exactly, format, without explanation, do not, at most …
    ``kw.roleplay``     roleplay, pretend, act as, you are, persona, hello, thanks …
    ``kw.quantity``     each, per, twice, half, times, more than, total, remaining, price …

Scripts (``script.*``, on the window; share of characters)
    ``script.latin``           ASCII letters and Latin-1/Extended letters
    ``script.cjk``             Han, kana, Hangul, CJK punctuation and full-width forms
    ``script.cyrillic``, ``script.arabic``, ``script.devanagari``
    ``script.other_nonascii``  any other non-ASCII character (emoji, Greek, Hebrew, Thai …)

Quantities (``num.*``, on the window; log1p-scaled counts)
    ``num.count_log``        numbers (digit runs, with ``.``/``,`` groups: ``1,250.5`` is one)
    ``num.distinct_log``     distinct numbers
    ``num.max_digits_log``   characters of the longest number
    ``num.sentences_log``    sentence ends (``.``, ``!`` or ``?`` before a space or the end)
    ``num.percent_log``      ``%`` signs
    ``num.fraction_log``     fractions like ``3/4``
    ``num.decimal_log``      decimals like ``2.5``
    ``num.commas_log``       commas

Free-form copies (``ff.*``)
    ``ff.<name>`` repeats every feature above for free-form prompts (``re.multiple_choice``
    is 0) and is 0 for multiple-choice prompts; ``ff.free_form`` is the indicator itself. What
    makes a question hard differs between the two formats, and a linear head can express that
    only with separate weights per format.

Conversation context (``ctx.*``)
    A conversation (a system prompt, or more than one turn) is split in two: every feature above
    and the hashed n-grams read the last user turn alone (with the images of the whole
    conversation), and ``ctx.<name>`` repeats the features above that are not ``ff.*`` copies
    for the context: the system prompt and the earlier turns, with ``ctx.len.turns_log`` the
    user turns of the whole conversation and ``ctx.len.has_system`` its system flag. A single
    prompt has no context: its ``ctx.*`` columns are all 0, so a model trained on single prompts
    learns no weight for them, and context moves a conversation's scores exactly by the
    ``ctx.*`` weights a model did learn.

Tokenisation
    The window is lower-cased; ASCII punctuation except ``_`` and common Unicode punctuation
    become spaces; tokens are the whitespace-separated runs (``"Don't"`` → ``don``, ``t``).

Hashed n-grams (``hash:0`` … ``hash:N-1``)
    Tokens: word unigrams up to ``word_ngram_max``-grams, and character n-grams of sizes
    ``char_ngrams`` inside each word padded with one space on each side (scikit-learn's
    ``char_wb``: a padded word shorter than n counts once, whole). If a ``task_type`` is given,
    one more token ``__task_type__=<value>`` (value stripped and lower-cased).

    Hash: a token's 32-bit hash ``h`` is CRC-32 (`zlib.crc32`) of its UTF-8 bytes after a
    namespace prefix: ``w:`` for words and the task type, ``c:`` for character n-grams. A word
    n-gram's hash is the top 32 bits of ``(a * 0x9E3779B97F4A7C15) XOR (b * 0xC2B2AE3D27D4EB4F)``
    (mod 2**64), where ``a`` is the hash of its first n-1 words and ``b`` of its last word.
    Column ``(h mod 2**31) mod N``; sign -1 when ``h >= 2**31``, else +1 (HashingVectorizer's
    ``alternate_sign``: collisions tend to cancel rather than pile up).

    Values: per column the signed count ``v``; sublinear tf ``sign(v) * (1 + ln|v|)``; columns
    that cancel to 0 are dropped; then the hashed block is L2-normalised.

Column weights (learned at training time, optional)
    A trained router may carry one positive weight per hashed column (`column_weights_`, set
    with `set_column_weights`; `idf_weights` makes them from the training prompts' document
    frequencies). The values above are then multiplied by their column's weight and the hashed
    block is L2-normalised again. Rare n-grams (an MMLU subject's vocabulary) then count for
    more than the character n-grams every prompt shares, which otherwise dominate the norm.
    A featurizer without weights computes exactly the rows described above.
"""

from __future__ import annotations

import math
import threading
import zlib
from array import array
from collections.abc import Iterable
from numbers import Integral
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils.validation import check_is_fitted

from features.signals import COMPILED_SPEC as SIGNAL_SPEC
from features.signals import DENSE_FEATURE_NAMES, dense_signals
from features.text import Prompt

try:  # the compiled twin of `_hashed_python`; optional, see `_hashed_compiled`
    from features import _compiled
except ImportError:  # not built (no compiler at install time): the Python path is exact too
    _compiled = None

__all__ = [
    "CONTEXT_FEATURE_NAMES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "PromptFeaturizer",
    "idf_weights",
]

FEATURE_VERSION = "3"

# The context block: the signals that are not free-form copies, read on the context.
_CONTEXT_BASE = np.array(
    [i for i, name in enumerate(DENSE_FEATURE_NAMES) if not name.startswith("ff.")],
    dtype=np.int64,
)
CONTEXT_FEATURE_NAMES: tuple[str, ...] = tuple(
    f"ctx.{DENSE_FEATURE_NAMES[i]}" for i in _CONTEXT_BASE
)
FEATURE_NAMES: tuple[str, ...] = DENSE_FEATURE_NAMES + CONTEXT_FEATURE_NAMES

_MAX_HASH_FEATURES = 2**24  # bounds the per-thread scratch array (8 bytes per column)
_WORD_SEED = zlib.crc32(b"w:")  # crc32(data, crc32(prefix)) == crc32(prefix + data)
_CHAR_SEED = zlib.crc32(b"c:")
_MIX_A = 0x9E3779B97F4A7C15
_MIX_B = 0xC2B2AE3D27D4EB4F
_MIX_A_NP = np.uint64(_MIX_A)
_SHIFT_32 = np.uint64(32)
_LOW_31 = 0x7FFFFFFF
_TASK_TYPE_PREFIX = "__task_type__="

# word -> (int64 codes of its unigram and char n-grams, uint64 pair (h * A, h * B) mod 2**64 of
# its hash h for the word n-grams it starts or ends). A code is the column when the sign is +1
# and ~column when it is -1. Module-level, so never pickled; one dict per (n_hash_features,
# char n-gram sizes), cleared when full.
_CACHE_MAX_WORDS = 200_000
_CACHE_MAX_WORD_CHARS = 64
# Unseen words totalling more characters than this are hashed in one vectorised batch.
_BATCH_MIN_CHARS = 256
_CACHES: dict[tuple[int, int, int], dict[str, tuple[bytes, bytes]]] = {}
_codes_of = itemgetter(0)
_mix_of = itemgetter(1)

# Per-thread scratch for de-duplicating columns without sorting (see `_merge`).
_SCRATCH = threading.local()

# np.log(k) for k < _LOG_TABLE_SIZE (entry 0 unused), for the compiled path's sublinear tf:
# numpy's SIMD log differs from libm's in the last bit for some integers, and rows must be
# identical whichever path built them. Larger counts are finished with numpy itself.
_LOG_TABLE_SIZE = 8192
_LOG_TABLE = np.concatenate(([0.0], np.log(np.arange(1.0, _LOG_TABLE_SIZE)))).tobytes()


def _code(h: int, n: int) -> int:
    """Column of 32-bit hash `h`, as ~column when its sign is -1."""
    col = (h & _LOW_31) % n
    return ~col if h > _LOW_31 else col


def _codes_np(h: np.ndarray, n: int) -> np.ndarray:
    """`_code` over an int64 array of 32-bit hashes."""
    col = (h & _LOW_31) % n
    return np.where(h > _LOW_31, ~col, col)


def _char_ngrams(word: str, lo: int, hi: int) -> list[bytes]:
    """UTF-8 character n-grams of " word " (scikit-learn's char_wb), by size then position."""
    padded = f" {word} "
    if padded.isascii():
        data = padded.encode("ascii")
        size = len(data)
        grams: list[bytes] = []
        for k in range(lo, hi + 1):
            if size <= k:
                grams.append(data)
                break
            grams += [data[i : i + k] for i in range(size - k + 1)]
        return grams
    size = len(padded)
    texts: list[str] = []
    for k in range(lo, hi + 1):
        if size <= k:
            texts.append(padded)
            break
        texts += [padded[i : i + k] for i in range(size - k + 1)]
    return [t.encode("utf-8", "surrogatepass") for t in texts]


def _word_entry(word: str, n: int, lo: int, hi: int) -> tuple[bytes, bytes]:
    """One word's cache entry, in plain Python: cheapest for a few short words."""
    crc32 = zlib.crc32
    h = crc32(word.encode("utf-8", "surrogatepass"), _WORD_SEED)
    codes = [_code(h, n)]
    codes += [_code(crc32(g, _CHAR_SEED), n) for g in _char_ngrams(word, lo, hi)]
    mix = array("Q", [(h * _MIX_A) & 0xFFFFFFFFFFFFFFFF, (h * _MIX_B) & 0xFFFFFFFFFFFFFFFF])
    return array("q", codes).tobytes(), mix.tobytes()


def _crc_table() -> np.ndarray:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table.append(c)
    return np.asarray(table, dtype=np.uint32)


_CRC_TABLE = _crc_table()


def _crc32_ranges(
    data: np.ndarray, starts: np.ndarray, lengths: np.ndarray, seed: int
) -> np.ndarray:
    """``zlib.crc32(data[s : s + l], seed)`` for every range, one byte position at a time."""
    crc = np.full(starts.size, seed ^ 0xFFFFFFFF, dtype=np.uint32)
    if starts.size == 0:
        return crc
    shortest, longest = int(lengths.min()), int(lengths.max())
    last = data.size - 1
    for t in range(longest):
        position = starts + t
        if t >= shortest:
            np.minimum(position, last, out=position)  # finished ranges read a dummy byte
        updated = _CRC_TABLE[(crc ^ data[position]) & 0xFF] ^ (crc >> 8)
        crc = updated if t < shortest else np.where(t < lengths, updated, crc)
    return crc ^ 0xFFFFFFFF


def _batch_entries(words: list[str], n: int, lo: int, hi: int) -> list[tuple[bytes, bytes]]:
    """`_word_entry` for many words at once, byte for byte, with the char n-gram hashing
    vectorised: bounded, fast work for long or many unseen tokens (base64, unspaced CJK)."""
    encoded = [w.encode("utf-8", "surrogatepass") for w in words]
    word_hashes = np.array([zlib.crc32(e, _WORD_SEED) for e in encoded], dtype=np.int64)
    # All padded words back to back, as UTF-8 bytes and as code points.
    text = "".join(f" {w} " for w in words)
    data = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    utf8_len = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    byte_at = np.zeros(points.size + 1, dtype=np.int64)
    np.cumsum(utf8_len, out=byte_at[1:])

    padded = np.array([len(w) + 2 for w in words], dtype=np.int64)
    word_start = np.zeros(len(words), dtype=np.int64)
    np.cumsum(padded[:-1], out=word_start[1:])
    # Grams per (word, size): all windows; a padded word shorter than `lo` counts once, whole.
    sizes = np.arange(lo, hi + 1)
    counts = np.maximum(padded[:, None] - sizes[None, :] + 1, 0)
    counts[:, 0] = np.maximum(counts[:, 0], 1)
    per_word = counts.sum(axis=1)
    # Output layout, word by word: its unigram code, then its grams by size then position.
    slot = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(per_word + 1, out=slot[1:])
    block = (slot[:-1, None] + 1 + np.cumsum(counts, axis=1) - counts).ravel()
    flat_counts = counts.ravel()
    total = int(flat_counts.sum())
    block_of = np.repeat(np.arange(flat_counts.size), flat_counts)
    within = np.arange(total) - np.repeat(np.cumsum(flat_counts) - flat_counts, flat_counts)
    word_of = block_of // sizes.size
    first = word_start[word_of] + within
    size = np.minimum(sizes[block_of % sizes.size], padded[word_of])
    gram_hashes = _crc32_ranges(
        data, byte_at[first], byte_at[first + size] - byte_at[first], _CHAR_SEED
    )

    codes = np.empty(int(slot[-1]), dtype=np.int64)
    codes[slot[:-1]] = _codes_np(word_hashes, n)
    codes[block[block_of] + within] = _codes_np(gram_hashes.astype(np.int64), n)
    unsigned = word_hashes.astype(np.uint64)
    mix = np.stack([unsigned * np.uint64(_MIX_A), unsigned * np.uint64(_MIX_B)], axis=1)
    code_bytes, mix_bytes = codes.tobytes(), mix.tobytes()
    bounds = (slot * 8).tolist()
    return [
        (code_bytes[bounds[j] : bounds[j + 1]], mix_bytes[16 * j : 16 * j + 16])
        for j in range(len(words))
    ]


def _entries(words: list[str], n: int, lo: int, hi: int) -> list[tuple[bytes, bytes]]:
    cache = _CACHES.get((n, lo, hi))
    if cache is None:
        if len(_CACHES) >= 8:
            _CACHES.clear()
        cache = _CACHES[(n, lo, hi)] = {}
    entries = list(map(cache.get, words))
    if None not in entries:
        return entries
    missing = list(dict.fromkeys(w for w, e in zip(words, entries, strict=True) if e is None))
    if sum(map(len, missing)) > _BATCH_MIN_CHARS:
        fresh = dict(zip(missing, _batch_entries(missing, n, lo, hi), strict=True))
    else:
        fresh = {w: _word_entry(w, n, lo, hi) for w in missing}
    for word, entry in fresh.items():
        if len(word) <= _CACHE_MAX_WORD_CHARS:
            if len(cache) >= _CACHE_MAX_WORDS:
                cache.clear()
            cache[word] = entry
    return [fresh[w] if e is None else e for w, e in zip(words, entries, strict=True)]


def _token_columns(
    entries: list[tuple[bytes, bytes]], n: int, kmax: int, task_code: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Column and sign of every hashed token occurrence: the words' unigrams and char n-grams
    (cached codes), the word 2- to kmax-grams, and the task type."""
    codes = np.frombuffer(b"".join(map(_codes_of, entries)), dtype=np.int64)
    n_words = len(entries)
    n_word_grams = sum(max(n_words - k + 1, 0) for k in range(2, kmax + 1))
    total = codes.size + n_word_grams + (task_code is not None)
    cols = np.empty(total, dtype=np.int64)
    signs = np.empty(total, dtype=np.float64)  # float: what `np.bincount` sums without a cast
    head = codes.size
    negative = codes >> 63
    np.bitwise_xor(codes, negative, out=cols[:head])
    np.bitwise_or(negative, 1, out=signs[:head])
    if n_word_grams:
        mix = np.frombuffer(b"".join(map(_mix_of, entries)), dtype=np.uint64)
        first, last = mix[0::2], mix[1::2]
        hashes = first[:-1] ^ last[1:]  # the cache stores h * A and h * B
        for k in range(2, min(kmax, n_words) + 1):
            if k > 2:
                hashes = (hashes[:-1] * _MIX_A_NP) ^ last[k - 1 :]
            hashes = hashes >> _SHIFT_32
            as_int = hashes.view(np.int64)
            end = head + as_int.size
            if n & (n - 1) == 0:
                np.bitwise_and(as_int, n - 1, out=cols[head:end])
            else:
                np.remainder(as_int & _LOW_31, n, out=cols[head:end])
            np.subtract(1, as_int >> 30 & 2, out=signs[head:end])
            head = end
    if task_code is not None:
        cols[head] = task_code ^ (task_code >> 63)
        signs[head] = (task_code >> 63) | 1
    return cols, signs


def _scratch(m: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    owner = getattr(_SCRATCH, "owner", None)
    if owner is None or owner.size < n:
        owner = _SCRATCH.owner = np.empty(n, dtype=np.intp)
    ramp = getattr(_SCRATCH, "ramp", None)
    if ramp is None or ramp.size < m:
        ramp = _SCRATCH.ramp = np.arange(max(m, 4096), dtype=np.intp)
    return owner, ramp[:m]


def _merge(cols: np.ndarray, signs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique columns and their signed counts, in O(len(cols)) without a sort.

    Every entry writes its position into its column's slot of a scratch array; the position
    that survives represents the column, and the signs of all its entries are summed onto it.
    """
    owner, ramp = _scratch(cols.size, n)
    owner[cols] = ramp
    representative = owner[cols]
    sums = np.bincount(representative, weights=signs)
    keep = (representative == ramp).nonzero()[0]
    return cols.take(keep), sums.take(keep)


def _normalised_sublinear(counts: np.ndarray, column_weights: np.ndarray | None) -> np.ndarray:
    """``sign(v) * (1 + ln|v|)`` of non-zero signed counts, times `column_weights` (the
    weights of their columns) when given, L2-normalised."""
    weights = np.abs(counts)
    np.log(weights, out=weights)
    weights += 1.0
    np.copysign(weights, counts, out=weights)
    if column_weights is not None:
        weights *= column_weights
    return _normalise(weights)


def _normalise(weights: np.ndarray) -> np.ndarray:
    # The norm from the correctly rounded sum of the squares: one value whatever the order or
    # the machine (a BLAS dot product's rounding is CPU-specific), so the compiled path
    # (features/_compiled.c, sum_of_squares) reproduces it bit for bit.
    weights *= 1.0 / math.sqrt(math.fsum((weights * weights).tolist()))
    return weights


def _empty_hashed() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


class _Weights(NamedTuple):
    """Column weights in the two forms the two paths read: an array (Python), bytes (C)."""

    array: np.ndarray
    raw: bytes


def _hashed_python(
    words: list[str],
    n: int,
    kmax: int,
    lo: int,
    hi: int,
    task_code: int | None,
    n_dense: int,
    weights: _Weights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The hashed block of a row, as (columns offset by `n_dense`, values): the reference.

    Columns are unique and ordered by their last occurrence in the token stream (see
    `_token_columns` and `_merge`); callers may rely on no other order, but the order fixes
    the rounding of the L2 norm, so the compiled path reproduces it exactly.
    """
    entries = _entries(words, n, lo, hi)
    cols, signs = _token_columns(entries, n, kmax, task_code)
    if cols.size == 0:
        return _empty_hashed()
    cols, counts = _merge(cols, signs, n)
    if np.count_nonzero(counts) < counts.size:
        kept = counts != 0
        cols, counts = cols[kept], counts[kept]
        if counts.size == 0:
            return _empty_hashed()
    w = None if weights is None else weights.array.take(cols)
    cols += n_dense
    return cols, _normalised_sublinear(counts, w)


def _hashed_compiled(
    words: list[str],
    n: int,
    kmax: int,
    lo: int,
    hi: int,
    task_code: int | None,
    n_dense: int,
    weights: _Weights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`_hashed_python`, value for value, with the hashing and merging in C (features/_compiled.c)."""
    raw_w = None if weights is None else weights.raw
    return _hashed_arrays(
        *_compiled.hashed_row(words, n, kmax, lo, hi, task_code, n_dense, _LOG_TABLE, raw_w),
        n_dense,
        weights,
    )


def _hashed_arrays(
    cols: bytearray, values: bytearray, raw: bool, n_dense: int, weights: _Weights | None
) -> tuple[np.ndarray, np.ndarray]:
    """The compiled row's (cols, values, raw) as `_hashed_python`'s arrays."""
    if not cols:
        return _empty_hashed()
    # bytearrays: the arrays are writable and own their memory, like the Python path's.
    c = np.frombuffer(cols, dtype=np.int64)
    if raw:  # a count past the log table: values are the counts, finished here
        w = None if weights is None else weights.array.take(c - n_dense)
        return c, _normalised_sublinear(np.frombuffer(values, dtype=np.float64), w)
    return c, np.frombuffer(values, dtype=np.float64)


_hashed = _hashed_python if _compiled is None else _hashed_compiled


def _single_row_python(
    prompt: Prompt,
    scan: int,
    spec: tuple[int, int, int, int],
    task_code: int | None,
    n_dense: int,
    weights: _Weights | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The feature row of a prompt without context: its ctx.* block stays 0."""
    values, words = dense_signals(prompt, scan)
    dense = np.zeros(n_dense, dtype=np.float64)
    dense[: len(values)] = values
    return (dense, *_hashed(words, *spec, task_code, n_dense, weights))


def _single_row_compiled(
    prompt: Prompt,
    scan: int,
    spec: tuple[int, int, int, int],
    task_code: int | None,
    n_dense: int,
    weights: _Weights | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_single_row_python` in one call to features/_compiled.c (the request path's row)."""
    text = prompt.text
    dense, cols, values, raw = _compiled.feature_row(
        text, len(text), prompt.turns, prompt.images, prompt.has_system, scan,
        SIGNAL_SPEC, *spec, task_code, n_dense, _LOG_TABLE,
        None if weights is None else weights.raw,
    )  # fmt: skip
    if raw or not cols:
        return (
            np.frombuffer(dense, dtype=np.float64),
            *_hashed_arrays(cols, values, raw, n_dense, weights),
        )
    return (
        np.frombuffer(dense, dtype=np.float64),
        np.frombuffer(cols, dtype=np.int64),
        np.frombuffer(values, dtype=np.float64),
    )


_single_row = _single_row_python if _compiled is None else _single_row_compiled


def idf_weights(doc_freq: np.ndarray, n_docs: int, power: float) -> np.ndarray:
    """Column weights ``(ln((1 + n_docs) / (1 + df)) + 1) ** power`` (scikit-learn's smoothed
    idf, raised to `power`) from each hashed column's document frequency `doc_freq` over
    `n_docs` prompts. ``power = 0`` gives all ones."""
    df = np.asarray(doc_freq, dtype=np.float64)
    if df.ndim != 1 or n_docs < 0 or (df < 0).any() or (df > n_docs).any():
        raise ValueError("doc_freq: one count per column, each between 0 and n_docs")
    if not (power >= 0 and math.isfinite(power)):
        raise ValueError(f"power: must be a finite number >= 0, got {power!r}")
    return (np.log((1.0 + n_docs) / (1.0 + df)) + 1.0) ** power


class PromptFeaturizer(TransformerMixin, BaseEstimator):
    """Dense named signals plus hashed word and character n-grams of a prompt.

    `fit` learns nothing from the data: it validates the parameters. Training may then set
    per-column weights of the hashed block (`set_column_weights`). The features are documented
    in this module's docstring.

    Parameters
    ----------
    n_hash_features : int, default 2**17
        Columns of the hashed block, 1 to 2**24.
    word_ngram_max : int, default 2
        Longest word n-gram hashed (1 = unigrams only), 1 to 8.
    char_ngrams : tuple of (int, int), default (3, 4)
        Smallest and largest character n-gram inside words, 1 <= lo <= hi <= 8.
    max_scan_chars : int, default 4096
        Characters read from the start of the prompt (plus the last 2048) by everything but
        the length features. The default holds every prompt of the bundled data whole (a test
        checks it), so it shortens no training prompt and only bounds the work on longer ones;
        RouteLLM's BERT classifier, for comparison, reads 512 tokens, about 2 KB.

    Attributes
    ----------
    n_dense_ : int
        Number of dense columns, which come first.
    dense_feature_names_ : ndarray of str
        Their names, e.g. ``len.chars_log``, ``re.code_fence``, ``kw.reasoning``.
    feature_version_ : str
        `FEATURE_VERSION` at fit time; transforming with different code raises.
    column_weights_ : ndarray of float64 or None
        One positive weight per hashed column, or None (`fit` resets it).

    Examples
    --------
    >>> f = PromptFeaturizer(n_hash_features=1024).fit(["x"])
    >>> X = f.transform(["Why is the sky blue?", "Solve 3x + 4 = 10 step by step."])
    >>> X.shape == (2, f.n_dense_ + 1024)
    True
    >>> dense, cols, values = f.transform_one("Solve 3x + 4 = 10 step by step.")
    >>> float(dense[list(f.dense_feature_names_).index("kw.equation")]) > 0
    True
    """

    def __init__(
        self,
        *,
        n_hash_features: int = 2**17,
        word_ngram_max: int = 2,
        char_ngrams: tuple[int, int] = (3, 4),
        max_scan_chars: int = 4096,
    ) -> None:
        self.n_hash_features = n_hash_features
        self.word_ngram_max = word_ngram_max
        self.char_ngrams = char_ngrams
        self.max_scan_chars = max_scan_chars

    def fit(self, X: Any, y: Any = None) -> PromptFeaturizer:
        """Validate the parameters; `X` is only checked to be a collection of prompts."""
        _check_collection(X)
        n = _check_int("n_hash_features", self.n_hash_features, 1, _MAX_HASH_FEATURES)
        kmax = _check_int("word_ngram_max", self.word_ngram_max, 1, 8)
        sizes = self.char_ngrams
        if not isinstance(sizes, tuple | list) or len(sizes) != 2:
            raise ValueError(f"char_ngrams must be a pair (lo, hi), got {sizes!r}")
        lo = _check_int("char_ngrams[0]", sizes[0], 1, 8)
        hi = _check_int("char_ngrams[1]", sizes[1], lo, 8)
        scan = _check_int("max_scan_chars", self.max_scan_chars, 1, None)
        self._spec = (n, kmax, lo, hi, scan)
        self.n_dense_ = len(FEATURE_NAMES)
        self.dense_feature_names_ = np.asarray(FEATURE_NAMES, dtype=object)
        self.feature_version_ = FEATURE_VERSION
        self.column_weights_: np.ndarray | None = None
        self._weights: _Weights | None = None
        return self

    def set_column_weights(self, weights: np.ndarray | None) -> PromptFeaturizer:
        """Weight the hashed columns (see "Column weights" in the module docstring); None
        removes the weights. Raises ValueError unless there is one finite positive weight per
        hashed column."""
        check_is_fitted(self)
        if weights is not None:
            w = np.array(weights, dtype=np.float64)
            if w.shape != (self._spec[0],):
                raise ValueError(
                    f"column_weights: expected {self._spec[0]} weights (one per hashed column), "
                    f"got shape {w.shape}"
                )
            if not (np.isfinite(w).all() and (w > 0).all()):
                raise ValueError("column_weights: every weight must be finite and > 0")
            w.flags.writeable = False
            weights = w
        self.column_weights_ = weights
        # Applied inside the row's computation, before its one L2 norm (in C on the hot path).
        self._weights = None if weights is None else _Weights(weights, weights.tobytes())
        return self

    def reweight(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """The rows `X` (from `transform` of this featurizer without column weights) as
        `transform` computes them with the current weights: a batch version of the hot path's
        reweighting, equal to it up to the rounding of the norms."""
        check_is_fitted(self)
        w = self.column_weights_
        X = sp.csr_matrix(X, dtype=np.float64, copy=True)
        if w is None:
            return X
        n_dense = self.n_dense_
        hashed = X.indices >= n_dense
        X.data[hashed] *= w[X.indices[hashed] - n_dense]
        squares = np.where(hashed, X.data * X.data, 0.0)
        row = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
        norms = np.sqrt(np.bincount(row, weights=squares, minlength=X.shape[0]))
        scale = np.divide(1.0, norms, out=np.ones_like(norms), where=norms > 0)
        X.data[hashed] *= scale[row[hashed]]
        return X

    def transform(self, X: Any, task_types: Iterable[str | None] | None = None) -> sp.csr_matrix:
        """Feature rows of `X` (Prompts or strings) as a CSR matrix, dense block first.

        `task_types`, if given, holds one task type (or None) per prompt.
        """
        check_is_fitted(self)
        prompts = [_as_prompt(x, i) for i, x in enumerate(_check_collection(X))]
        types = [None] * len(prompts) if task_types is None else list(task_types)
        if len(types) != len(prompts):
            raise ValueError(f"task_types has {len(types)} entries for {len(prompts)} prompts")
        indptr = np.zeros(len(prompts) + 1, dtype=np.int64)
        indices: list[np.ndarray] = []
        data: list[np.ndarray] = []
        for i, (prompt, task_type) in enumerate(zip(prompts, types, strict=True)):
            dense, cols, values = self.transform_one(prompt, task_type)
            nonzero = np.flatnonzero(dense)
            indices += [nonzero, cols]
            data += [dense[nonzero], values]
            indptr[i + 1] = indptr[i] + nonzero.size + cols.size
        shape = (len(prompts), self.n_dense_ + self._spec[0])
        matrix = sp.csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0),
                np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
                indptr,
            ),
            shape=shape,
        )
        matrix.sort_indices()
        return matrix

    def fit_transform(
        self, X: Any, y: Any = None, task_types: Iterable[str | None] | None = None
    ) -> sp.csr_matrix:
        """`fit(X).transform(X, task_types)`."""
        return self.fit(X, y).transform(X, task_types=task_types)

    def transform_one(
        self, prompt: Prompt | str, task_type: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The hot path: one prompt's dense vector, hashed columns and their values.

        Returns ``(dense, cols, values)``: `dense` is float64 of length `n_dense_`; `cols` are
        unique int64 column numbers of the full row (already offset by `n_dense_`, not
        sorted) and `values` their float64 values. ``transform([prompt])`` is this row.
        """
        try:
            n, kmax, lo, hi, scan = self._spec
        except AttributeError:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' first."
            ) from None
        if self.feature_version_ != FEATURE_VERSION:
            raise ValueError(
                f"this featurizer was fitted with feature version {self.feature_version_!r} "
                f"but the code computes version {FEATURE_VERSION!r}; refit it"
            )
        if not isinstance(prompt, Prompt):
            prompt = _as_prompt(prompt, 0)
        task_code = None if task_type is None else _task_type_code(task_type, n)
        weights = self._weights
        if prompt.turns <= 1 and not prompt.has_system and prompt.text == prompt.last_user:
            return _single_row(prompt, scan, (n, kmax, lo, hi), task_code, self.n_dense_, weights)
        dense, words = _conversation_signals(prompt, scan, self.n_dense_)
        cols, values = _hashed(words, n, kmax, lo, hi, task_code, self.n_dense_, weights)
        return dense, cols, values

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Dense feature names, then ``hash:0`` … ``hash:{n_hash_features - 1}``."""
        check_is_fitted(self)
        hashed = [f"hash:{i}" for i in range(self._spec[0])]
        return np.asarray(list(FEATURE_NAMES) + hashed, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags


def _conversation_signals(prompt: Prompt, scan: int, n_dense: int) -> tuple[np.ndarray, list[str]]:
    """Dense row and hashed words of a conversation: the last user turn, then its context."""
    last = prompt.last_user
    at = prompt.text.rfind(last) if last else -1
    context = prompt.text if at < 0 else prompt.text[:at] + prompt.text[at + len(last) :]
    values, words = dense_signals(Prompt(text=last, last_user=last, images=prompt.images), scan)
    ctx_values, _ = dense_signals(
        Prompt(
            text=context.strip(),
            last_user="",
            turns=prompt.turns,
            has_system=prompt.has_system,
        ),
        scan,
    )
    dense = np.zeros(n_dense, dtype=np.float64)
    dense[: len(values)] = values
    dense[len(values) :] = ctx_values[_CONTEXT_BASE]
    return dense, words


def _check_int(name: str, value: Any, lo: int, hi: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return int(value)


def _check_collection(X: Any) -> Any:
    if isinstance(X, str | bytes | Prompt):
        raise ValueError(
            f"expected a collection of prompts, got a single {type(X).__name__}; wrap it in a list"
        )
    if not isinstance(X, Iterable):
        raise ValueError(f"expected a collection of prompts, got {type(X).__name__}")
    return X


def _task_type_code(task_type: Any, n: int) -> int | None:
    if not isinstance(task_type, str):
        raise TypeError(f"task_type must be a string or None, got {type(task_type).__name__}")
    value = task_type.strip().lower()
    if not value:
        return None
    token = (_TASK_TYPE_PREFIX + value).encode("utf-8", "surrogatepass")
    return _code(zlib.crc32(token, _WORD_SEED), n)


def _as_prompt(x: Any, i: int) -> Prompt:
    if isinstance(x, Prompt):
        return x
    if isinstance(x, str):
        # Not `normalize`: an empty string is a valid (if uninformative) row here.
        return Prompt(text=x, last_user=x)
    raise TypeError(f"X[{i}] must be a Prompt or a str, got {type(x).__name__}")
