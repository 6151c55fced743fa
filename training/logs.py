"""Read labelled logs (JSON Lines, optionally gzip'd) into `Record`s, rejecting bad lines loudly.

Three line forms are accepted; each needs exactly one of ``prompt`` (a string) or ``messages``
(OpenAI chat format, normalised by `features.text.normalize`):

``outcomes``  (multi-outcome, the bundled data)
    ``{"id"?, "prompt"|"messages", "task"?, "task_type"?, "outcomes": {MODEL: {"quality": 0..1 |
    null, "cost_usd"?, "latency_ms"?, "input_tokens"?, "output_tokens"?, "response"?}}}``.
    ``quality`` is required in each outcome; null keeps the model as unlabelled
    (``Outcome(quality=None)``). ``response`` is the model's answer text (a string), which
    trains the answer verifier (`training/verifier.py`).
``single``  (one production call per line)
    ``{"id"?, "prompt"|"messages", "model", "quality"|"success", "cost_usd"?, "latency_ms"?,
    "input_tokens"?, "output_tokens"?, "response"?, "task"?, "task_type"?}``. ``success`` (true/false) means
    quality 1.0/0.0 when ``quality`` is absent or null. `load_records` merges rows whose
    normalised `Prompt` is equal (same text and same structure: last user turn, turns, images,
    system message) into one record, across all the files it reads, at the position of the first
    such row; that row gives the record's id, task, task_type and source. When one model appears
    more than once for a prompt, its outcome is the mean of those rows: quality, and cost,
    latency and tokens each over the rows that carry them (tokens rounded); every row's
    ``response`` is kept with that row's quality (`Outcome.responses`). `iter_records`
    streams and does not merge: each row is its own one-outcome record.
``label``  (directly labelled)
    ``{"prompt"|"messages", "label": MODEL}`` gives ``Record(label=MODEL)``.

``decision`` and ``outcome`` rows  (the service's decision log, see `models.decision_rows`)
    ``{"id", "kind": "decision", "prompt"|"messages", "model", ...}`` and ``{"id", "kind":
    "outcome", "model", "success", ...}``, in any files and any order: `load_records` joins
    them by request id into ``single`` rows (one per outcome) once every file is read. A
    decision without an outcome is an unlabelled row (rejected like ``"success": null``); an
    outcome whose decision is in none of the files is rejected at the outcome's line.
    `iter_records` streams one file and cannot join across files: it rejects them.

Every form may carry ``domain``: a finer topic inside ``task`` (an MMLU subject, say), a
training-time target of the domain classifier (`training/domains.py`), never a feature. Without
it, ``meta.subject`` stands in (MMLU exports and the bundled RouteLLM data name the subject so).

A JSON null counts as absent. Other keys (``meta`` apart from that, ``source``, timestamps, ...)
are ignored and never reach features. Blank lines are skipped. Every other problem is a
`DataError` naming the file, the line and the reason; with ``skip_invalid`` the line is skipped
instead and the skip is reported, never dropped silently. Rows from the service's decision log in privacy mode (only
``prompt_sha256``) or without feedback (``"success": null``) are rejected the same way.
"""

from __future__ import annotations

import gzip
import json
import math
import sys
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from features.text import Prompt, PromptError, normalize
from models.decision_rows import KINDS, JoinReport, join_rows
from models.errors import DataError
from training.records import Outcome, Record

__all__ = ["FORMS", "LoadReport", "iter_records", "load_records", "parse_line"]

FORMS = ("outcomes", "single", "label")

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_FORM_KEYS = ("outcomes", "model", "label")
_FORM_OF_KEY = {"outcomes": "outcomes", "model": "single", "label": "label"}

SkipHook = Callable[[str, str], None]


class _Invalid(Exception):
    """One line is unusable; `reason` says why. Turned into a DataError or a skip by the reader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Truncated(Exception):
    """The gzip stream stopped early or is corrupt; `reason` names the last complete line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_FLOAT_MAX = sys.float_info.max
# Integers from here on are refused where they are kept as integers (ids, token counts): JSON
# readers disagree on them (orjson gives a float past 64 bits, the standard library an int).
_BIG_INTEGER = 2**63

# ---------------------------------------------------------------------------------------------
# Validation of one JSON object (pure)


def _number(value: Any, name: str, *, upper: float | None = None) -> float:
    # The common case in two comparisons (logs carry millions of numbers); NaN, infinities,
    # bools, huge ints and anything out of range take the checks below.
    kind = type(value)
    if (kind is float or kind is int) and 0 <= value <= (_FLOAT_MAX if upper is None else upper):
        return float(value)
    # bool is an int subclass, but `true` as a cost or quality is a bug in the writer.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{name}: must be a number, got {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise _Invalid(f"{name}: is too large") from None
    if not math.isfinite(number):
        raise _Invalid(f"{name}: must be a finite number, got {value}")
    if number < 0 or (upper is not None and number > upper):
        bound = f"between 0 and {upper:g}" if upper is not None else "non-negative"
        raise _Invalid(f"{name}: must be {bound}")
    return number


def _optional_number(obj: dict[str, Any], key: str) -> float | None:
    value = obj.get(key)
    return None if value is None else _number(value, key)


def _optional_tokens(obj: dict[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    number = _number(value, key)
    if number >= _BIG_INTEGER:
        raise _Invalid(f"{key}: must be below 2^63")
    if isinstance(value, int):
        return value
    if not number.is_integer():
        raise _Invalid(f"{key}: must be a whole number of tokens")
    return int(number)


def _json_type(value: Any) -> str:
    names = {bool: "boolean", str: "string", list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _name(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"{name}: must be a non-empty string")
    return value


def _optional_string(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise _Invalid(f"{key}: must be a string, got {_json_type(value)}")


def _domain(obj: dict[str, Any]) -> str | None:
    domain = _optional_string(obj, "domain")
    if domain is not None:
        return domain or None
    # Benchmark exports (MMLU's, the bundled RouteLLM data) name the topic in meta.subject.
    meta = obj.get("meta")
    subject = meta.get("subject") if isinstance(meta, dict) else None
    return subject if isinstance(subject, str) and subject else None


def _record_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    # Production logs often number their rows; an integer id is as good as a string one.
    kind = type(value)
    if kind is int and -_BIG_INTEGER < value < _BIG_INTEGER:
        return str(value)
    if kind is int or (kind is float and value.is_integer() and abs(value) >= _BIG_INTEGER):
        # a JSON reader may have kept it only to float precision
        raise _Invalid("id: an integer id must be below 2^63 in magnitude; write it as a string")
    return _optional_string(obj, "id")


def _prompt(obj: dict[str, Any]) -> Prompt:
    prompt, messages = obj.get("prompt"), obj.get("messages")
    if prompt is None and messages is None and obj.get("prompt_sha256") is not None:
        raise _Invalid(
            "prompt: the row has only 'prompt_sha256' (decision log in privacy mode); "
            "training needs the prompt text"
        )
    try:
        return normalize(prompt=prompt, messages=messages)
    except PromptError as e:
        raise _Invalid(str(e)) from None


def _responses(obj: dict[str, Any], quality: float | None) -> tuple[tuple[str, float | None], ...]:
    value = obj.get("response")
    if value is None:
        return ()
    if not isinstance(value, str):
        raise _Invalid(f"response: must be a string (the answer text), got {_json_type(value)}")
    return ((value, quality),)


def _outcome(obj: dict[str, Any], quality: float | None) -> Outcome:
    """One model's outcome; errors name the field within the outcome (callers prefix it)."""
    return Outcome(
        quality=quality,
        cost_usd=_optional_number(obj, "cost_usd"),
        latency_ms=_optional_number(obj, "latency_ms"),
        input_tokens=_optional_tokens(obj, "input_tokens"),
        output_tokens=_optional_tokens(obj, "output_tokens"),
        responses=_responses(obj, quality),
    )


def _outcomes(value: Any) -> dict[str, Outcome]:
    if not isinstance(value, dict) or not value:
        raise _Invalid("outcomes: must be a non-empty object mapping model names to outcomes")
    outcomes: dict[str, Outcome] = {}
    for model, raw in value.items():
        if not model.strip():
            raise _Invalid("outcomes: model names must be non-empty strings")
        try:
            if not isinstance(raw, dict):
                raise _Invalid(f": must be an object, got {_json_type(raw)}")
            if "quality" not in raw:
                raise _Invalid(".quality: is required (null marks an unlabelled model)")
            quality = raw["quality"]
            if quality is not None:
                quality = _number(quality, ".quality", upper=1.0)
            outcomes[model] = _outcome(raw, quality)
        except _Invalid as e:
            # the model's name goes into the message only when there is one to write
            sep = "" if e.reason.startswith((":", ".")) else "."
            raise _Invalid(f"outcomes[{model!r}]{sep}{e.reason}") from None
    return outcomes


def _single_quality(obj: dict[str, Any]) -> float:
    if obj.get("quality") is not None:
        return _number(obj["quality"], "quality", upper=1.0)
    if "success" not in obj:
        raise _Invalid("quality: a single-call row needs a 'quality' (0..1) or 'success' label")
    success = obj.get("success")
    if success is None:
        raise _Invalid(
            "success: is null (no feedback arrived for this call), so the row has no quality "
            "label and cannot be used for training"
        )
    if not isinstance(success, bool):
        raise _Invalid(f"success: must be true or false, got {_json_type(success)}")
    return 1.0 if success else 0.0


def _parse(obj: Any, source: str) -> tuple[str, Record]:
    if not isinstance(obj, dict):
        raise _Invalid(f"a line must be a JSON object, got {_json_type(obj)}")
    present = [k for k in _FORM_KEYS if obj.get(k) is not None]
    prompt = _prompt(obj)
    if not present:
        raise _Invalid("needs one of 'outcomes' (several models), 'model' (one call) or 'label'")
    if len(present) > 1:
        raise _Invalid(f"has {' and '.join(repr(k) for k in present)}: give only one of them")
    form = _FORM_OF_KEY[present[0]]
    record = Record(
        prompt=prompt,
        id=_record_id(obj),
        task=_optional_string(obj, "task"),
        task_type=_optional_string(obj, "task_type"),
        source=source,
        domain=_domain(obj),
    )
    if form == "outcomes":
        record.outcomes = _outcomes(obj["outcomes"])
    elif form == "single":
        model = _name(obj["model"], "model")
        record.outcomes = {model: _outcome(obj, _single_quality(obj))}
    else:
        record.label = _name(obj["label"], "label")
    return form, record


def parse_line(obj: Any, *, source: str) -> tuple[str, Record]:
    """Validate one decoded JSON line and build its `Record`.

    Returns ``(form, record)`` with form one of `FORMS`; a ``single`` row gives a record with
    one outcome (merging is the loader's job). Raises ``DataError(source, None, reason)``.

    >>> form, rec = parse_line({"prompt": "hi", "label": "m"}, source="x.jsonl:1")
    >>> form, rec.label, rec.prompt.text
    ('label', 'm', 'hi')
    """
    try:
        return _parse(obj, source)
    except _Invalid as e:
        raise DataError(source, None, e.reason) from None


# ---------------------------------------------------------------------------------------------
# Reading one file (I/O)


def _open(path: Path, display: str) -> tuple[IO[bytes], IO[bytes]]:
    """(stream to read lines from, underlying file); gzip is detected by its magic bytes."""
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(display, None, "no such file") from None
    except IsADirectoryError:
        raise DataError(display, None, "is a directory, not a file") from None
    except OSError as e:
        raise DataError(display, None, f"cannot be read: {e.strerror or e}") from None
    magic = raw.read(2)
    raw.seek(0)
    if magic == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if path.suffix == ".gz" and magic:
        raw.close()
        raise DataError(display, None, "has a .gz suffix but is not gzip-compressed")
    return raw, raw


def _lines(
    path: Path, display: str, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[int, bytes]]:
    """Numbered raw lines; a broken gzip stream ends the iteration with `_Truncated`.

    `on_bytes(n)` is told every few thousand lines how many more bytes of the file (compressed,
    for gzip) were read: what a progress bar over the file's size needs.
    """
    stream, raw = _open(path, display)
    number = 0
    told = 0
    try:
        with raw, stream:
            try:
                for number, line in enumerate(stream, start=1):
                    yield number, line
                    if on_bytes is not None and not number % 4096:
                        position = raw.tell()
                        on_bytes(position - told)
                        told = position
                if on_bytes is not None:
                    on_bytes(raw.tell() - told)
            except EOFError:
                raise _Truncated(
                    f"gzip stream is truncated: it ends after line {number}, the last complete line"
                ) from None
            except (gzip.BadGzipFile, zlib.error) as e:
                raise _Truncated(
                    f"gzip stream is corrupt after line {number}, the last complete line ({e})"
                ) from None
    except OSError as e:  # a read error after opening; not a gzip problem
        raise DataError(display, number + 1, f"cannot be read: {e.strerror or e}") from None


def _decode(line: bytes, number: int) -> Any:
    # Reasons carry no positions, so that `skipped_by_reason` groups like with like.
    if number == 1 and line.startswith(_BOM):
        line = line[len(_BOM) :]
    # orjson reads a typical line in a fifth of the time. What it refuses (NaN and Infinity
    # literals, lone surrogates, invalid UTF-8) the standard library decides below, so those
    # lines get its values and its messages. The one value they read differently, an integer
    # past 64 bits (orjson: a float), is refused either way where it matters (`_record_id`,
    # `_optional_tokens`).
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid(f"not valid UTF-8: {e.reason}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Invalid(f"not valid JSON: {e.msg}") from None
    except RecursionError:
        raise _Invalid("not valid JSON: nested too deeply") from None


@dataclass
class _FileStats:
    lines_read: int = 0
    on_bytes: Callable[[int], None] | None = None


_Where = tuple[str, int]  # (file, line)
_Held = list[tuple[_Where, dict[str, Any]]]


def _parsed(
    path: str | Path,
    skip: SkipHook | None,
    stats: _FileStats,
    held: _Held | None = None,
) -> Iterator[tuple[str, Record]]:
    """(form, record) for each usable line; `skip` is None to raise on the first bad line.

    Decision-log rows go to `held`, for a join once every file is read (None: rejected)."""
    display = str(path)
    # closing() so that raising mid-file closes the file now, not when the generator is collected.
    with closing(_lines(Path(path), display, stats.on_bytes)) as lines:
        yield from _checked(lines, display, skip, stats, held)


def _checked(
    lines: Iterator[tuple[int, bytes]],
    display: str,
    skip: SkipHook | None,
    stats: _FileStats,
    held: _Held | None = None,
) -> Iterator[tuple[str, Record]]:
    try:
        for number, line in lines:
            stats.lines_read += 1
            if not line.strip():
                continue
            try:
                obj = _decode(line, number)
                if isinstance(obj, dict) and obj.get("kind") in KINDS:
                    if held is None:
                        raise _Invalid(
                            'a decision-log row ("kind") must be joined with its outcome '
                            "across files: read it with load_records (train without --streaming)"
                        )
                    held.append(((display, number), obj))
                    continue
                yield _parse(obj, f"{display}:{number}")
            except _Invalid as e:
                if skip is None:
                    raise DataError(display, number, e.reason) from None
                skip(f"{display}:{number}", e.reason)
    except _Truncated as e:
        if skip is None:
            raise DataError(display, None, e.reason) from None
        skip(display, e.reason)


def iter_records(
    path: str | Path,
    *,
    skip_invalid: bool = False,
    on_skip: SkipHook | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[Record]:
    """Stream the records of one file, for data larger than memory.

    Unlike `load_records`, single-call rows are not merged: each yields a one-outcome record.

    Parameters
    ----------
    path : a JSONL file, gzip'd or not.
    skip_invalid : skip bad lines (and a truncated gzip tail) instead of raising `DataError`.
    on_skip : called as ``on_skip("file:line", reason)`` for each skip; required with
        ``skip_invalid`` so that nothing is dropped unseen.
    on_bytes : told how many more bytes of the file were read, now and then (progress bars).
    """
    # Not a generator itself, so that a bad argument fails at the call, not at the first next().
    if skip_invalid and on_skip is None:
        raise ValueError("skip_invalid=True needs on_skip to report what is skipped")
    parsed = _parsed(path, on_skip if skip_invalid else None, _FileStats(on_bytes=on_bytes))
    return (record for _form, record in parsed)


# ---------------------------------------------------------------------------------------------
# Loading and merging


@dataclass
class LoadReport:
    """What `load_records` read: the records, how many lines, and every line it skipped."""

    records: list[Record] = field(default_factory=list)
    lines_read: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        """Number of skipped lines per reason, most frequent first."""
        counts: dict[str, int] = {}
        for _where, reason in self.skipped:
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _mean_tokens(values: list[int | None]) -> int | None:
    mean = _mean([None if v is None else float(v) for v in values])
    return None if mean is None else round(mean)


def _merge_outcomes(calls: list[Outcome]) -> Outcome:
    if len(calls) == 1:
        return calls[0]
    return Outcome(
        quality=_mean([o.quality for o in calls]),
        cost_usd=_mean([o.cost_usd for o in calls]),
        latency_ms=_mean([o.latency_ms for o in calls]),
        input_tokens=_mean_tokens([o.input_tokens for o in calls]),
        output_tokens=_mean_tokens([o.output_tokens for o in calls]),
        responses=tuple(pair for o in calls for pair in o.responses),
    )


def _joined(held: _Held, skip: SkipHook | None) -> Iterator[tuple[str, Record]]:
    """The decision-log rows joined by request id, parsed; problems named at their line."""
    report = JoinReport()
    for (display, number), row in join_rows(held, report):
        try:
            yield _parse(row, f"{display}:{number}")
        except _Invalid as e:
            if skip is None:
                raise DataError(display, number, e.reason) from None
            skip(f"{display}:{number}", e.reason)
    for (display, number), rid in report.orphans:
        reason = "an outcome row whose decision row is in none of the files read"
        if skip is None:
            raise DataError(display, number, f"{reason} (request id {rid[:64]!r})")
        skip(f"{display}:{number}", reason)


def load_records(
    paths: str | Path | Sequence[str | Path],
    *,
    skip_invalid: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> LoadReport:
    """Read one or more labelled-log files into memory, merging single-call rows per prompt.

    Parameters
    ----------
    paths : a file or a sequence of files (JSONL, gzip'd or not), read in order.
    skip_invalid : if False, raise `DataError(path, line, reason)` at the first bad line or a
        truncated gzip. If True, skip each bad line and list it in `LoadReport.skipped`; a
        truncated gzip keeps the lines before the break and is listed as a skip too.
    on_bytes : told how many more bytes of the files were read, now and then (progress bars).

    Returns
    -------
    LoadReport
        ``lines_read`` counts every line read, blank and skipped ones included.

    Raises
    ------
    DataError
        A bad line (unless skipped), or a file that is missing, unreadable or a ``.gz`` that
        is not gzip, whatever `skip_invalid` says.
    """
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("load_records needs at least one path")
    report = LoadReport()
    stats = _FileStats(on_bytes=on_bytes)
    skip = (lambda where, reason: report.skipped.append((where, reason))) if skip_invalid else None
    slots: list[Record | None] = []  # None marks a merged record's place, filled in at the end
    merged: dict[Prompt, tuple[int, Record, dict[str, list[Outcome]]]] = {}
    held: _Held = []

    def add(form: str, record: Record) -> None:
        if form != "single":
            slots.append(record)
            return
        ((model, outcome),) = record.outcomes.items()
        if record.prompt not in merged:
            merged[record.prompt] = (len(slots), record, {})
            slots.append(None)
        merged[record.prompt][2].setdefault(model, []).append(outcome)

    for path in paths:
        for form, record in _parsed(path, skip, stats, held):
            add(form, record)
    for form, record in _joined(held, skip):
        add(form, record)
    for index, first, calls in merged.values():
        first.outcomes = {model: _merge_outcomes(outs) for model, outs in calls.items()}
        slots[index] = first
    report.records = [r for r in slots if r is not None]
    report.lines_read = stats.lines_read
    return report
