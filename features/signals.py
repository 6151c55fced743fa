"""The dense, named signals of one prompt: length, regex, keyword and script features.

What each feature means is documented once, in `features.extractor` (the public module); this
module computes them. Everything except the length group reads only the scan window (see
`scan_window`), so the work per prompt is bounded whatever its size.
"""

from __future__ import annotations

import math
import re
import string
from itertools import compress

import numpy as np

from features.text import Prompt

try:  # the compiled twin of `_dense_signals_python` (and its counting steps); optional
    from features import _compiled
except ImportError:  # not built (no compiler at install time): the Python path is exact too
    _compiled = None

__all__ = ["DENSE_FEATURE_NAMES", "TAIL_SCAN_CHARS", "dense_signals", "scan_window", "tokenize"]

TAIL_SCAN_CHARS = 2048

# ---------------------------------------------------------------------------------------------
# Keyword groups. Entries are matched as whole lower-cased word tokens (a phrase as consecutive
# tokens), after the same tokenisation as the hashed n-grams, so "step-by-step" matches
# "step by step" and "don't" is the two tokens "don t".
# fmt: off
_KEYWORD_GROUPS: dict[str, tuple[str, ...]] = {
    "reasoning": (
        "step by step", "explain in detail", "in detail", "in depth", "think carefully",
        "show your work", "pros and cons", "chain of thought", "walk me through", "prove",
        "proof", "derive", "derivation", "justify", "analyze", "analyse", "analysis", "compare",
        "comparison", "contrast", "why", "explain", "explanation", "evaluate", "reasoning",
        "rationale", "critique", "critically", "argue", "implications", "tradeoffs", "elaborate",
        "deduce", "infer",
    ),
    "simple": (
        "what is", "what are", "what was", "what does", "who is", "who was", "who wrote",
        "when did", "when was", "where is", "where was", "name the", "how do you spell", "define",
        "definition", "list", "synonym", "synonyms", "antonym", "meaning", "abbreviation",
        "acronym",
    ),
    "translate": (
        "translate", "translation", "translated", "translating", "translator", "into english",
        "into french", "into spanish", "into german", "into chinese", "into japanese",
    ),
    "summarize": (
        "summarize", "summarise", "summarized", "summary", "summaries", "summarization", "tldr",
        "tl dr", "condense", "recap", "synopsis", "gist", "key points", "main points",
        "in a nutshell",
    ),
    "creative": (
        "poem", "poems", "poetry", "story", "stories", "essay", "essays", "lyrics", "song",
        "haiku", "limerick", "sonnet", "verse", "rhyme", "rhyming", "novel", "fiction",
        "fictional", "screenplay", "fable", "fairy tale", "slogan", "creative", "narrative",
    ),
    "coding": (
        "implement", "implementation", "function", "functions", "bug", "bugs", "debug",
        "refactor", "python", "javascript", "typescript", "java", "golang", "rust", "kotlin",
        "cpp", "sql", "html", "css", "regex", "code", "coding", "compile", "compiler",
        "algorithm", "api", "script", "program", "programming", "variable", "array", "pandas",
        "numpy", "exception", "traceback", "recursion", "recursive", "unittest", "pytest",
        "leetcode", "bash", "docker", "git", "method", "library",
    ),
    "math": (
        "how many", "how much", "calculate", "calculated", "calculation", "compute", "sum",
        "total", "percent", "percentage", "average", "remainder", "multiply", "multiplied",
        "divide", "divided", "division", "fraction", "fractions", "ratio", "decimal",
        "arithmetic", "digits",
    ),
    "equation": (
        "solve", "solving", "equation", "equations", "integral", "integrate", "derivative",
        "differentiate", "probability", "theorem", "lemma", "polynomial", "matrix", "matrices",
        "eigenvalue", "eigenvalues", "determinant", "logarithm", "quadratic", "inequality",
        "geometry", "triangle", "vector", "vectors", "calculus", "differential", "algebra",
        "algebraic", "prime", "primes", "factorial", "modulo", "integer", "integers", "sqrt",
        "frac",
    ),
    "constraints": (
        "only", "must", "exactly", "strictly", "format", "formatted", "concise", "concisely",
        "briefly", "without explanation", "do not", "don t", "no more than", "at most",
        "at least", "in one word", "one sentence",
    ),
    "roleplay": (
        "roleplay", "role play", "pretend", "persona", "character", "act as", "you are",
        "imagine you", "stay in character", "chat", "chatbot", "hi", "hello", "hey", "thanks",
        "thank you", "how are you",
    ),
    "quantity": (
        "each", "per", "every", "twice", "thrice", "half", "times", "more than", "less than",
        "fewer than", "total", "remaining", "left", "altogether", "in all", "sum", "difference",
        "ratio", "rate", "price", "cost", "costs", "dollars", "cents", "hours", "minutes", "miles",
    ),
}
# fmt: on

# Quantities: word problems get harder with the number of quantities and sentences, and that
# difficulty is what separates a strong model from a weak one (see README, GSM8K).
_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
_FRACTION_RE = re.compile(r"\d\s?/\s?\d")
_DECIMAL_RE = re.compile(r"\d\.\d")

# ---------------------------------------------------------------------------------------------
# Tokenisation: lower-case, ASCII punctuation (except "_") and common Unicode punctuation split
# words, then whitespace. The ASCII fast path (translate + split) and the regex path agree.
_SPLIT_PUNCT = (
    string.punctuation.replace("_", "")
    + "\u00a1\u00a7\u00ab\u00b6\u00b7\u00bb\u00bf\u2010\u2011\u2012\u2013\u2014\u2015\u2016"
    + "\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f\u2020\u2021\u2022\u2026\u2030\u2032"
    + "\u2033\u2039\u203a\u3001\u3002\u3008\u3009\u300a\u300b\u300c\u300d\u300e\u300f\u3010"
    + "\u3011\u3014\u3015\uff01\uff08\uff09\uff0c\uff0e\uff1a\uff1b\uff1f\uff3b\uff3d\uff5b"
    + "\uff5d"
)
# ASCII byte -> itself, or a space for a splitting punctuation mark: `bytes.translate` is a plain
# table lookup, several times faster than `str.translate`.
_ASCII_SPLIT_TABLE = bytes(32 if b < 128 and chr(b) in _SPLIT_PUNCT else b for b in range(256))
_TOKEN_RE = re.compile(rf"[^\s{re.escape(_SPLIT_PUNCT)}]+")


def tokenize(lower: str) -> list[str]:
    """Word tokens of an already lower-cased text.

    >>> tokenize("step-by-step, don't")
    ['step', 'by', 'step', 'don', 't']
    """
    if lower.isascii():
        return lower.encode("ascii").translate(_ASCII_SPLIT_TABLE).decode("ascii").split()
    return _TOKEN_RE.findall(lower)


def scan_window(text: str, max_scan_chars: int) -> str:
    """The part of `text` that signals and tokenisation read: all of it when short, otherwise
    the first `max_scan_chars` characters and the last `TAIL_SCAN_CHARS`, joined by a newline.

    Applying it twice gives the same window, so a prompt and its window featurise alike.
    """
    if len(text) <= max_scan_chars + TAIL_SCAN_CHARS:
        return text
    return text[:max_scan_chars] + "\n" + text[-TAIL_SCAN_CHARS:]


# ---------------------------------------------------------------------------------------------
# Regex signals. Each pattern starts with a literal (or a small character set) so the engine
# skips ahead quickly, and every repetition is bounded or cannot overlap its neighbour, so no
# input backtracks catastrophically.
# Code constructs, each gated by a word token that must be present (so ordinary prose pays for
# none of them) and starting with its literal (so the engine searches, not steps).
_CODE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (gate, re.compile(pattern))
    for gate, pattern in (
        ("def", r"def(?<!\wdef)[ \t]+[A-Za-z_]\w{0,60}[ \t]*\("),
        ("function", r"function(?<!\wfunction)[ \t]*[\w$]{0,60}[ \t]*\([^)\n]{0,200}\)[ \t]*\{"),
        ("class", r"class(?<!\wclass)[ \t]+[A-Za-z_]\w{0,60}[ \t]*[:({]"),
        ("import", r"(?m)^[ \t]*(?:from[ \t]+[\w.]{1,60}[ \t]+)?import[ \t]+[A-Za-z_{*]"),
        ("include", r"#include[ \t]*[<\"]"),
        ("public", r"public(?<!\wpublic)[ \t]+static(?!\w)"),
        ("select", r"SELECT(?<!\wSELECT)[ \t\n][^;]{0,200}?(?<!\w)FROM(?!\w)"),
        ("console", r"console\.log\("),
        ("std", r"std::"),
    )
)
# An operator with a digit just before it (optionally one space) and a digit right after. One
# pattern per operator, each run only if its operator occurs: a literal search is far faster
# than stepping through a character set.
_ARITH_OPERATORS = "+-*/^=\u00d7\u00f7"
_ARITH_PATTERNS = tuple(
    (op, re.compile(re.escape(op) + r"(?:(?<=\d.)|(?<=\d[ \t].))[ \t]?(?=\d)"))
    for op in _ARITH_OPERATORS
)
_LATEX_CMD_RE = re.compile(
    r"\\(?:d?frac|begin|end|sqrt|sum|int|prod|lim|cdot|times|alpha|beta|gamma|delta|theta"
    r"|lambda|sigma|pi|infty|left|right|mathbb|mathrm|mathbf|leq?|geq?|neq|pm|binom)(?![a-z])"
    r"|\\[(\[]"
)
# "$x", "$\frac", "$$": math openers; "$5" (money) is not.
_LATEX_DOLLAR_RE = re.compile(r"\$[A-Za-z\\({$]")
_JSON_RE = re.compile(r'\{\s{0,20}"[^"\n]{1,80}"\s{0,20}:')
# Line-start markers, one pass over "\n" + window (so the first line counts too): a numbered
# step "1." / "2)", a multiple-choice option "A)" / "(b)" / "C.", or a few-shot marker.
_LINE_START_RE = re.compile(
    r"\n[ \t]{0,8}(?:"
    r"(?P<step>\d{1,3}[.)][ \t])"
    r"|(?P<choice>\([A-Ha-h]\)|[A-Ha-h][.)])(?=[ \t\r\n]|$)"
    r"|[#*]{0,4}[ \t]{0,3}"
    r"(?P<marker>(?i:q|a|question|answer|input|output|example|solution|problem))"
    r"(?:[ \t]{0,3}#?\d{1,3})?[ \t*]{0,3}:"
    r")"
)

# ---------------------------------------------------------------------------------------------
# Character classes, for the ratio and script features.
(_C_ASCII_OTHER, _C_DIGIT, _C_UPPER, _C_LOWER, _C_PUNCT) = range(5)
(_C_LATIN_EXT, _C_CJK, _C_CYRILLIC, _C_ARABIC, _C_DEVANAGARI, _C_OTHER) = range(5, 11)
_N_CLASSES = 11
_ASCII_GROUPS = (
    (string.digits, _C_DIGIT),
    (string.ascii_uppercase, _C_UPPER),
    (string.ascii_lowercase, _C_LOWER),
    (string.punctuation, _C_PUNCT),
)
_ASCII_CLASS = [
    next((cls for chars, cls in _ASCII_GROUPS if chr(b) in chars), _C_ASCII_OTHER)
    for b in range(128)
]
# ASCII byte -> its class as a byte, so one `bytes.translate` classifies a whole ASCII window.
_ASCII_CLASS_TABLE = bytes(_ASCII_CLASS) + bytes(128)
_DIGIT_BYTE, _UPPER_BYTE, _LOWER_BYTE, _PUNCT_BYTE = (
    bytes([c]) for c in (_C_DIGIT, _C_UPPER, _C_LOWER, _C_PUNCT)
)

# Inclusive code-point ranges above ASCII; anything not listed is "other".
# fmt: off
_SCRIPT_RANGES = (
    (0x00C0, 0x00D6, _C_LATIN_EXT), (0x00D8, 0x00F6, _C_LATIN_EXT),
    (0x00F8, 0x024F, _C_LATIN_EXT), (0x1E00, 0x1EFF, _C_LATIN_EXT),
    (0x2C60, 0x2C7F, _C_LATIN_EXT), (0xA720, 0xA7FF, _C_LATIN_EXT),
    (0x0400, 0x052F, _C_CYRILLIC), (0x1C80, 0x1C8F, _C_CYRILLIC),
    (0x2DE0, 0x2DFF, _C_CYRILLIC), (0xA640, 0xA69F, _C_CYRILLIC),
    (0x0600, 0x06FF, _C_ARABIC), (0x0750, 0x077F, _C_ARABIC), (0x0870, 0x08FF, _C_ARABIC),
    (0xFB50, 0xFDFF, _C_ARABIC), (0xFE70, 0xFEFF, _C_ARABIC),
    (0x0900, 0x097F, _C_DEVANAGARI), (0xA8E0, 0xA8FF, _C_DEVANAGARI),
    (0x1100, 0x11FF, _C_CJK), (0x2E80, 0x9FFF, _C_CJK), (0xAC00, 0xD7AF, _C_CJK),
    (0xF900, 0xFAFF, _C_CJK), (0xFF00, 0xFFEF, _C_CJK), (0x20000, 0x3FFFF, _C_CJK),
)
# fmt: on


def _class_intervals() -> tuple[np.ndarray, np.ndarray]:
    """Interval starts over all code points and each interval's class."""
    starts = list(range(128))
    classes = list(_ASCII_CLASS)
    pos = 128
    for lo, hi, cls in sorted(_SCRIPT_RANGES):
        if lo > pos:
            starts.append(pos)
            classes.append(_C_OTHER)
        starts.append(lo)
        classes.append(cls)
        pos = hi + 1
    starts.append(pos)
    classes.append(_C_OTHER)
    return np.asarray(starts, dtype=np.uint32), np.asarray(classes, dtype=np.intp)


_CLASS_STARTS, _CLASS_OF_INTERVAL = _class_intervals()


def _class_counts_ascii(window: str) -> list[int]:
    classified = window.encode("ascii").translate(_ASCII_CLASS_TABLE)
    digits = classified.count(_DIGIT_BYTE)
    upper = classified.count(_UPPER_BYTE)
    lower = classified.count(_LOWER_BYTE)
    punct = classified.count(_PUNCT_BYTE)
    other = len(classified) - digits - upper - lower - punct
    return [other, digits, upper, lower, punct, 0, 0, 0, 0, 0, 0]


def _class_counts_unicode(window: str) -> list[int]:
    # "surrogatepass": a lone surrogate (legal in a JSON string) must not crash featurisation.
    cps = np.frombuffer(window.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    interval = np.searchsorted(_CLASS_STARTS, cps, side="right") - 1
    return np.bincount(_CLASS_OF_INTERVAL[interval], minlength=_N_CLASSES).tolist()


def _class_counts_python(window: str) -> list[int]:
    """Code points of `window` per character class (the reference for `_compiled.char_classes`)."""
    return _class_counts_ascii(window) if window.isascii() else _class_counts_unicode(window)


def _quantities_python(window: str, numbers_too: bool) -> tuple[int, int, int, int, int, int]:
    """Numbers, distinct numbers, the longest number's length, fractions, decimals (all 0
    unless `numbers_too`) and sentence ends: the reference for `_compiled.quantities`."""
    sentences = len(_SENTENCE_END_RE.findall(window))
    numbers = _NUMBER_RE.findall(window) if numbers_too else []
    if not numbers:  # no digit: no fraction or decimal either
        return 0, 0, 0, 0, 0, sentences
    return (
        len(numbers),
        len(set(numbers)),
        max(map(len, numbers)),
        len(_FRACTION_RE.findall(window)) if "/" in window else 0,
        len(_DECIMAL_RE.findall(window)),
        sentences,
    )


# ---------------------------------------------------------------------------------------------
_GROUP_NAMES = tuple(_KEYWORD_GROUPS)
_N_GROUPS = len(_GROUP_NAMES)
# Counter slots after the keyword groups: one per code pattern, counting its gate token.
_N_COUNTERS = _N_GROUPS + len(_CODE_PATTERNS)

# token -> (groups it matches alone, ((its offset in a phrase, the phrase's tokens, group), ...)).
# A phrase is keyed by its longest token ("in detail" by "detail"), so frequent short words
# like "in" or "at" rarely trigger a phrase check.
_LexiconEntry = tuple[tuple[int, ...], tuple[tuple[int, list[str], int], ...]]


def _build_lexicon() -> dict[str, _LexiconEntry]:
    singles: dict[str, list[int]] = {}
    phrases: dict[str, list[tuple[int, list[str], int]]] = {}
    entries = [(p, g) for g, name in enumerate(_GROUP_NAMES) for p in _KEYWORD_GROUPS[name]]
    entries += [(gate, _N_GROUPS + j) for j, (gate, _) in enumerate(_CODE_PATTERNS)]
    for phrase, group in entries:
        tokens = tokenize(phrase)
        if len(tokens) == 1:
            singles.setdefault(tokens[0], []).append(group)
        else:
            offset = max(range(len(tokens)), key=lambda i: len(tokens[i]))
            phrases.setdefault(tokens[offset], []).append((offset, tokens, group))
    return {
        word: (tuple(singles.get(word, ())), tuple(phrases.get(word, ())))
        for word in singles.keys() | phrases.keys()
    }


_LEXICON = _build_lexicon()


def _keyword_counts_python(words: list[str]) -> list[int]:
    """Matches per keyword group, then per code-pattern gate token (the reference for
    `_compiled.keyword_counts`)."""
    counts = [0] * _N_COUNTERS
    hits = list(map(_LEXICON.get, words))
    for i in compress(range(len(hits)), hits):
        singles, phrases = hits[i]
        for group in singles:
            counts[group] += 1
        for offset, tokens, group in phrases:
            start = i - offset
            if start >= 0 and words[start : start + len(tokens)] == tokens:
                counts[group] += 1
    return counts


def _arithmetic(window: str) -> int:
    """Operators between digits (the reference for the compiled count)."""
    return sum(len(pattern.findall(window)) for op, pattern in _ARITH_PATTERNS if op in window)


def _line_starts(window: str) -> tuple[int, int, int]:
    """Numbered steps, multiple-choice options, and few-shot repeats (per marker, count - 1):
    the reference for the compiled count, which runs the pattern only on lines that may match."""
    steps = choices = 0
    markers: list[str] = []
    for step, choice, marker in _LINE_START_RE.findall("\n" + window):
        if step:
            steps += 1
        elif choice:
            choices += 1
        else:
            markers.append(marker.lower())
    repeats = len(markers) - len(set(markers))
    return steps, choices, repeats


# ---------------------------------------------------------------------------------------------
_LENGTH_NAMES = (
    "len.chars_log",
    "len.words_log",
    "len.tokens_est_log",
    "len.lines_log",
    "len.turns_log",
    "len.images_log",
    "len.has_system",
    "len.last_user_chars_log",
    "len.last_user_share",
)
_REGEX_NAMES = (
    "re.code_fence",
    "re.code_keyword",
    "re.arithmetic",
    "re.latex",
    "re.url",
    "re.json",
    "re.numbered_steps",
    "re.multiple_choice",
    "re.few_shot_repeats",
    "re.question_marks",
    "re.digit_ratio",
    "re.upper_ratio",
    "re.punct_ratio",
    "re.avg_word_len_log",
)
_SCRIPT_NAMES = (
    "script.latin",
    "script.cjk",
    "script.cyrillic",
    "script.arabic",
    "script.devanagari",
    "script.other_nonascii",
)
_QUANTITY_NAMES = (
    "num.count_log",
    "num.distinct_log",
    "num.max_digits_log",
    "num.sentences_log",
    "num.percent_log",
    "num.fraction_log",
    "num.decimal_log",
    "num.commas_log",
)
_BASE_NAMES: tuple[str, ...] = (
    _LENGTH_NAMES
    + _REGEX_NAMES
    + tuple(f"kw.{g}" for g in _GROUP_NAMES)
    + _SCRIPT_NAMES
    + _QUANTITY_NAMES
)
# Every base signal again, non-zero only for free-form prompts (no multiple-choice options):
# what makes a question hard differs between "pick A-D" and "work it out", and a linear head
# can only express that with separate weights per format.
DENSE_FEATURE_NAMES: tuple[str, ...] = (
    _BASE_NAMES + tuple(f"ff.{name}" for name in _BASE_NAMES) + ("ff.free_form",)
)
_MULTIPLE_CHOICE = _BASE_NAMES.index("re.multiple_choice")

_log1p = math.log1p


def _dense_signals_python(prompt: Prompt, max_scan_chars: int) -> tuple[np.ndarray, list[str]]:
    """`dense_signals` in Python: the reference for the compiled twin, and the fallback."""
    text = prompt.text
    n_chars = len(text)
    window = scan_window(text, max_scan_chars)
    n_window = len(window)
    lower = window.lower()
    words = tokenize(lower)
    n_words = len(words)

    # Length: whole-text counts use C-speed str methods only; past the window, words are
    # extrapolated from the window's density.
    total_words = round(n_words * n_chars / n_window) if n_window < n_chars else n_words
    last_user_chars = len(prompt.last_user)
    values = [
        _log1p(n_chars),
        _log1p(total_words),
        _log1p(-(-n_chars // 4)),
        _log1p(text.count("\n") + 1 if text else 0),
        _log1p(prompt.turns),
        _log1p(prompt.images),
        1.0 if prompt.has_system else 0.0,
        _log1p(last_user_chars),
        min(1.0, last_user_chars / max(n_chars, 1)),
    ]

    # Everything else reads the window only.
    classes = _class_counts_python(window)
    counters = _keyword_counts_python(words)
    code = 0
    for j, (_, pattern) in enumerate(_CODE_PATTERNS, start=_N_GROUPS):
        if counters[j]:
            code += len(pattern.findall(window))
    latex = 0
    if "\\" in window:
        latex += len(_LATEX_CMD_RE.findall(window))
    if "$" in window:
        latex += len(_LATEX_DOLLAR_RE.findall(window))
    urls = lower.count("://")
    www = lower.count("www.")
    if www:
        urls += www - lower.count("://www.")
    steps, choices, few_shot_repeats = _line_starts(window)
    counts = [
        window.count("```"),
        code,
        _arithmetic(window) if classes[_C_DIGIT] > 1 else 0,
        latex,
        urls,
        len(_JSON_RE.findall(window)) if "{" in window else 0,
        steps,
        choices,
        few_shot_repeats,
        window.count("?") + window.count("\uff1f"),
    ]
    values += map(_log1p, counts)
    letters = classes[_C_UPPER] + classes[_C_LOWER]
    per_char = 1.0 / max(n_window, 1)
    values += [
        classes[_C_DIGIT] * per_char,
        classes[_C_UPPER] / max(letters, 1),
        classes[_C_PUNCT] * per_char,
        _log1p(len("".join(words)) / n_words) if n_words else 0.0,
    ]
    values += map(_log1p, counters[:_N_GROUPS])
    values += [
        (letters + classes[_C_LATIN_EXT]) * per_char,
        classes[_C_CJK] * per_char,
        classes[_C_CYRILLIC] * per_char,
        classes[_C_ARABIC] * per_char,
        classes[_C_DEVANAGARI] * per_char,
        classes[_C_OTHER] * per_char,
    ]
    # Version 2 counts numbers only in a window holding an ASCII digit.
    numbers, distinct, longest, fractions, decimals, sentences = _quantities_python(
        window, classes[_C_DIGIT] > 0
    )
    values += [
        _log1p(numbers),
        _log1p(distinct),
        _log1p(longest),
        _log1p(sentences),
        _log1p(window.count("%")),
        _log1p(fractions),
        _log1p(decimals),
        _log1p(window.count(",")),
    ]
    if values[_MULTIPLE_CHOICE] == 0.0:
        values += values
        values.append(1.0)
    else:
        values += [0.0] * (len(values) + 1)
    return np.array(values, dtype=np.float64), words


# Everything the compiled twin reads besides the prompt, built once (also passed by
# features.extractor, whose one-call row runs the same scan).
COMPILED_SPEC = (
    _LEXICON,
    _N_COUNTERS,
    _N_GROUPS,
    tuple(pattern for _, pattern in _CODE_PATTERNS),
    _LATEX_CMD_RE,
    _LATEX_DOLLAR_RE,
    _JSON_RE,
    _LINE_START_RE,
    _SPLIT_PUNCT,
    TAIL_SCAN_CHARS,
)


def _dense_signals_compiled(prompt: Prompt, max_scan_chars: int) -> tuple[np.ndarray, list[str]]:
    """`_dense_signals_python`, value for value, in one call to features/_compiled.c."""
    values, words = _compiled.dense_signals(
        prompt.text,
        len(prompt.last_user),
        prompt.turns,
        prompt.images,
        prompt.has_system,
        max_scan_chars,
        COMPILED_SPEC,
    )
    # A bytearray: the array is writable and owns its memory, like the Python path's.
    return np.frombuffer(values, dtype=np.float64), words


def dense_signals(prompt: Prompt, max_scan_chars: int) -> tuple[np.ndarray, list[str]]:
    """Dense feature values (float64, in `DENSE_FEATURE_NAMES` order) and the window's word
    tokens; compiled when features._compiled is built, else in Python, with equal results.

    >>> values, words = dense_signals(Prompt("Why? Explain step by step.", "Why?"), 16384)
    >>> float(dict(zip(DENSE_FEATURE_NAMES, values))["kw.reasoning"]) == math.log1p(3)
    True
    >>> words
    ['why', 'explain', 'step', 'by', 'step']
    """
    if _compiled is None:
        return _dense_signals_python(prompt, max_scan_chars)
    return _dense_signals_compiled(prompt, max_scan_chars)
