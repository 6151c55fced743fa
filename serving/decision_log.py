"""The service's decisions, joined with their feedback, appended as JSON lines for retraining.

Each row is one line in the single-call production format that `promptroute train` reads. A line
is either wholly in the file or not at all: it is serialised completely before anything is
written, written with one `os.write` to an O_APPEND descriptor, and the file is rotated *before*
a write that would push it past `max_bytes`, so no line is split across files. A line cut short
by a crash is removed when the log is next opened.

One process writes one path (with several workers, `per_process` gives each its own file,
named `process_path`); readers use `read_log_lines`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from models.decision_rows import join_rows
from models.errors import DataError

__all__ = [
    "DecisionLog",
    "DecisionLogSettings",
    "process_path",
    "read_joined_rows",
    "read_log_lines",
]

_log = logging.getLogger("promptroute.decision_log")

# Rows can carry prompts, so the file is private to the service's user by default.
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
_TAIL_CHUNK = 64 * 1024


@dataclass(frozen=True)
class DecisionLogSettings:
    """Where and how decisions are logged; a bad value raises ValueError naming the field."""

    path: str
    max_bytes: int = 100 * 2**20
    backup_count: int = 5
    store_prompt: bool = True
    fsync: bool = False
    per_process: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.path, os.PathLike):
            object.__setattr__(self, "path", os.fspath(self.path))
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"path: must be a non-empty path, got {self.path!r}")
        for name in ("max_bytes", "backup_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
        for name in ("store_prompt", "fsync", "per_process"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name}: must be true or false, got {value!r}")


class DecisionLog:
    """An append-only, size-rotated JSON-lines file of decision rows. Thread-safe.

    Parameters
    ----------
    settings : DecisionLogSettings
    clock : callable returning unix seconds
        Fills "ts" in rows that have none.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "decisions.jsonl")
    >>> with DecisionLog(DecisionLogSettings(path=path)) as log:
    ...     log.append({"id": "r1", "prompt": "hi", "model": "a", "success": True, "ts": 0})
    >>> list(read_log_lines(path))
    [{'id': 'r1', 'prompt': 'hi', 'model': 'a', 'success': True, 'ts': 0}]
    """

    def __init__(self, settings: DecisionLogSettings, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._lines = 0
        self.path = process_path(settings.path) if settings.per_process else settings.path
        parent = os.path.dirname(self.path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        _drop_partial_last_line(self.path)
        self._fd: int | None = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        self._size = os.fstat(self._fd).st_size

    @property
    def lines_written(self) -> int:
        """Rows appended by this instance (across rotations)."""
        return self._lines

    def append(self, row: Mapping[str, Any]) -> None:
        """Write `row` as one line. A row that is not valid JSON (NaN, a set…) raises ValueError.

        With `store_prompt` off, "prompt"/"messages" are replaced by "prompt_sha256" first, so
        the text never reaches the disk.
        """
        if not isinstance(row, Mapping):
            raise ValueError(f"row: must be a mapping, got {type(row).__name__}")
        out = dict(row) if self.settings.store_prompt else _redact(row)
        if "ts" not in out:
            out["ts"] = round(self._clock(), 3)
        try:
            text = json.dumps(out, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            data = (text + "\n").encode("utf-8")
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"row: cannot be written as a JSON line: {e}") from e
        limit = self.settings.max_bytes
        with self._lock:
            if self._fd is None:
                raise ValueError("decision log is closed")
            # A line longer than max_bytes still goes whole into a fresh file.
            if self._size and self._size + len(data) > limit:
                self._rotate()
            self._write(data)
            self._lines += 1

    def close(self) -> None:
        """Close the file; further appends raise ValueError. Safe to call twice.

        A per-process file that got no line is removed (a process that only checked the
        config, or a worker that served nothing, leaves no empty file behind)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
                if self.settings.per_process and self._size == 0 and self._lines == 0:
                    with contextlib.suppress(OSError):
                        os.remove(self.path)

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            # os.write on an unbuffered fd needs no flush; a regular file takes the whole line in
            # one call, the loop only matters if the kernel ever returns a short count.
            while view:
                view = view[os.write(self._fd, view) :]
            if self.settings.fsync:
                os.fsync(self._fd)
        except OSError:
            # Disk full or similar mid-line: cut the fragment so the next line starts clean.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                _log.exception("could not remove a partial line from %s", self.path)
            raise
        self._size += len(data)

    def _rotate(self) -> None:
        assert self._fd is not None
        path, n = self.path, self.settings.backup_count
        os.close(self._fd)
        self._fd = None
        # os.replace onto path.N overwrites it: the oldest backup is dropped.
        for i in range(n - 1, 0, -1):
            if os.path.exists(f"{path}.{i}"):
                os.replace(f"{path}.{i}", f"{path}.{i + 1}")
        if os.path.exists(path):
            os.replace(path, f"{path}.1")
        self._fd = os.open(path, _OPEN_FLAGS, _FILE_MODE)
        self._size = 0


def process_path(path: str) -> str:
    """This process's own file for the log `path`: ``decisions.jsonl`` becomes
    ``decisions.<host>-<pid>.jsonl``, so that each file has one writer (and rotates alone)."""
    folder, name = os.path.split(path)
    stem, dot, suffix = name.partition(".")
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64]
    return os.path.join(folder, f"{stem}.{host or 'host'}-{os.getpid()}{dot}{suffix}")


def _redact(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with its prompt text or messages replaced by their sha256, in the same position,
    and without the answer text (``response``), which is as private as the prompt."""
    if "prompt" in row and "messages" in row:
        raise ValueError("row: has both 'prompt' and 'messages'; give one")
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key == "response":
            continue
        if key == "prompt":
            if not isinstance(value, str):
                raise ValueError(f"prompt: must be a string, got {type(value).__name__}")
            out["prompt_sha256"] = _sha256(value)
        elif key == "messages":
            try:
                canonical = json.dumps(
                    value,
                    ensure_ascii=False,
                    allow_nan=False,
                    sort_keys=True,
                    separators=(",", ":"),
                )
            except (TypeError, ValueError, RecursionError) as e:
                raise ValueError(f"messages: cannot be written as JSON: {e}") from e
            out["prompt_sha256"] = _sha256(canonical)
        else:
            out[key] = value
    return out


def _sha256(text: str) -> str:
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError as e:
        raise ValueError(f"prompt: not encodable as UTF-8: {e}") from e


def _drop_partial_last_line(path: str) -> None:
    """Truncate a line left unfinished by a crash, so new lines are not glued onto it."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return
    with f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        end = size - 1  # the last byte is not a newline; find the last one before it
        keep = 0
        while end > 0:
            start = max(0, end - _TAIL_CHUNK)
            f.seek(start)
            i = f.read(end - start).rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            end = start
        f.truncate(keep)
    _log.warning("%s: removed %d bytes of a line cut short by a crash", path, size - keep)


def _log_files(path: str) -> list[str]:
    """The existing files of the log `path`, oldest first: path.N … path.1, path."""
    folder = os.path.dirname(path) or "."
    base = os.path.basename(path) + "."
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    backups = sorted(
        (int(n[len(base) :]), n)
        for n in names
        if n.startswith(base) and n[len(base) :].isdigit() and n[len(base) :].isascii()
    )
    files = [os.path.join(folder, n) for _, n in reversed(backups)]
    if os.path.exists(path):
        files.append(path)
    return files


def read_log_lines(path: str | os.PathLike[str]) -> Iterator[dict]:
    """Every row of a decision log and its backups, oldest first.

    A last line without its newline (a write in progress or cut by a crash) is skipped; any
    other unreadable line raises DataError with its file and line number.
    """
    path = os.fspath(path)
    files = _log_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no decision log here (nor any rotated backup)")
    for name in files:
        with open(name, "rb") as f:
            # Binary iteration splits on b"\n" only: U+2028 inside a string stays in its line.
            for lineno, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    break
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except ValueError as e:
                    raise DataError(name, lineno, f"not valid JSON: {e}") from e
                if not isinstance(row, dict):
                    raise DataError(name, lineno, "not a JSON object")
                yield row


def read_joined_rows(*paths: str | os.PathLike[str]) -> list[dict]:
    """The training rows of one or more decision logs (with their backups): each decision
    joined with its outcomes by request id, across the files (`models.decision_rows`)."""
    rows = ((os.fspath(p), row) for p in paths for row in read_log_lines(p))
    return [row for _where, row in join_rows(rows)]
