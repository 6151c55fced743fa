"""The log loader on corrupted files: a clear error with file and line, or a counted skip.

`tests/test_logs.py` covers each kind of bad line alone and a gzip cut in half. This adds files
where several corruptions meet (plain and gzip, with the gzip also cut short), gzip damaged at
the header or trailer, and a property: whatever bytes are flipped, cut, inserted or deleted in
a valid file, loading either works, raises a `DataError` naming the file (and the line, for a
line problem), or — with ``skip_invalid`` — accounts for every line it read.
"""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.errors import DataError
from training.logs import iter_records, load_records


def _line(i: int) -> bytes:
    return json.dumps({"prompt": f"prompt number {i}", "label": f"model-{i % 3}"}).encode()


# One file with every kind of damage the issue names: (line, the reason it is refused or None).
MIXED = [
    (_line(1), None),
    (b"{not json at all", "not valid JSON"),
    (_line(3), None),
    (json.dumps({"label": "m"}).encode(), "prompt: one of 'prompt' or 'messages' is required"),
    (json.dumps({"prompt": "p"}).encode(), "needs one of 'outcomes'"),
    (b"", None),  # blank: skipped silently, but counted as read
    (_line(7), None),
    (
        json.dumps({"prompt": "p", "model": "m", "quality": 7}).encode(),
        "quality: must be between 0 and 1",
    ),
    (
        json.dumps({"prompt": "p", "outcomes": {"m": {"quality": 7}}}).encode(),
        "outcomes['m'].quality: must be between 0 and 1",
    ),
    (
        json.dumps({"prompt": "p", "model": "m", "quality": "high"}).encode(),
        "quality: must be a number, got string",
    ),
    (json.dumps({"prompt": ["p"], "label": "m"}).encode(), "prompt: must be a string"),
    (
        json.dumps({"prompt": "p", "model": "m", "success": "yes"}).encode(),
        "success: must be true or false",
    ),
    (b"\x00\x00\x00", "not valid JSON"),
    (b'{"prompt": "caf\xe9", "label": "m"}', "not valid UTF-8"),
    (_line(15), None),
    (b'{"prompt": "the last line, cut sh', "not valid JSON"),  # no newline after it
]


def _mixed_bytes() -> bytes:
    return b"\n".join(line for line, _ in MIXED)  # the last line has no newline: cut by a crash


def _bad_lines() -> list[tuple[int, str]]:
    return [(n, reason) for n, (_, reason) in enumerate(MIXED, 1) if reason is not None]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_file_with_every_kind_of_damage_stops_at_the_first_bad_line(tmp_path, gz):
    data = _mixed_bytes()
    path = tmp_path / ("logs.jsonl.gz" if gz else "logs.jsonl")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    with pytest.raises(DataError) as info:
        load_records(path)
    first, reason = _bad_lines()[0]
    assert (info.value.path, info.value.line) == (str(path), first)
    assert str(info.value).startswith(f"{path}:{first}: {reason}")


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_file_with_every_kind_of_damage_is_skipped_line_by_line(tmp_path, gz):
    data = _mixed_bytes()
    path = tmp_path / ("logs.jsonl.gz" if gz else "logs.jsonl")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    report = load_records(path, skip_invalid=True)
    bad = _bad_lines()
    assert report.lines_read == len(MIXED)
    assert [r.prompt.text for r in report.records] == [f"prompt number {n}" for n in (1, 3, 7, 15)]
    assert [where for where, _ in report.skipped] == [f"{path}:{n}" for n, _ in bad]
    for (_, why), (_, reason) in zip(report.skipped, bad, strict=True):
        assert why.startswith(reason)
    assert sum(report.skipped_by_reason().values()) == len(bad)
    streamed: list[tuple[str, str]] = []
    records = list(iter_records(path, skip_invalid=True, on_skip=lambda *s: streamed.append(s)))
    assert (len(records), streamed) == (4, report.skipped)


def test_a_damaged_gzip_cut_short_reports_its_bad_lines_and_the_cut(tmp_path):
    good = b"\n".join(_line(i) for i in range(3000)) + b"\n"
    lines = good.split(b"\n")
    lines[10] = b'{"prompt": "p", "model": "m", "quality": 7}'
    lines[20] = b"{broken"
    packed = gzip.compress(b"\n".join(lines), compresslevel=1, mtime=0)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(packed[: len(packed) * 2 // 3])
    report = load_records(path, skip_invalid=True)
    assert report.skipped[:2] == [
        (f"{path}:11", "quality: must be between 0 and 1"),
        (f"{path}:21", "not valid JSON: Expecting property name enclosed in double quotes"),
    ]
    ((where, why),) = report.skipped[2:]
    complete = report.lines_read
    assert (where, why) == (
        str(path),
        f"gzip stream is truncated: it ends after line {complete}, the last complete line",
    )
    assert len(report.records) == complete - 2
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.line, info.value.reason) == (11, "quality: must be between 0 and 1")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(
            b"\x1f\x8b" + b"junk" * 20, "gzip stream is corrupt after line 0", id="header"
        ),
        pytest.param(
            b"\x1f\x8b", "gzip stream is truncated: it ends after line 0", id="magic-only"
        ),
        pytest.param(
            gzip.compress(_line(1) + b"\n", mtime=0) + b"trailing junk",
            "gzip stream is corrupt after line 1",
            id="trailing-junk",
        ),
    ],
)
def test_damaged_gzip_framing_is_an_error_or_a_counted_skip(tmp_path, data, reason):
    path = tmp_path / "logs.jsonl.gz"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        load_records(path)
    assert (info.value.path, info.value.line) == (str(path), None)
    assert info.value.reason.startswith(reason)
    report = load_records(path, skip_invalid=True)
    assert [(w, r[: len(reason)]) for w, r in report.skipped] == [(str(path), reason)]


# ---------------------------------------------------------------------------------------------
# Any corruption


N_LINES = 40
_VALID = b"".join(_line(i) + b"\n" for i in range(N_LINES))

_EDIT = st.tuples(
    st.sampled_from(["flip", "cut", "insert", "delete"]),
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=255),
)


def _corrupt(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, where, byte in edits:
        if not out:
            break
        i = where % len(out)
        if op == "flip":
            out[i] ^= byte or 0x01
        elif op == "cut":
            del out[i:]
        elif op == "insert":
            out.insert(i, byte)
        else:
            del out[i]
    return bytes(out)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(edits=st.lists(_EDIT, min_size=1, max_size=4), gz=st.booleans())
def test_any_corruption_is_an_error_naming_the_place_or_a_counted_skip(tmp_path, edits, gz):
    data = _corrupt(gzip.compress(_VALID, mtime=0) if gz else _VALID, edits)
    path = tmp_path / ("logs.jsonl.gz" if gz else "logs.jsonl")
    path.write_bytes(data)
    plain = None if gz else data.split(b"\n")
    if plain is not None and plain[-1] == b"":
        plain.pop()  # a final newline ends the last line; it does not start another
    # Without skipping: records, or one DataError that names this file and, for a bad line,
    # the line.
    try:
        load_records(path)
    except DataError as exc:
        assert exc.path == str(path) and exc.reason
        assert exc.line is None or exc.line >= 1
        if plain is not None:
            assert exc.line is not None and exc.line <= len(plain)
            assert str(exc).startswith(f"{path}:{exc.line}: ")
    # Skipping: every line read is a record, a blank line or a skip with its line number;
    # only the gzip framing (or a .gz that is no longer gzip) is reported without a line.
    try:
        report = load_records(path, skip_invalid=True)
    except DataError as exc:
        assert gz and exc.reason == "has a .gz suffix but is not gzip-compressed"
        return
    line_skips = [w for w, _ in report.skipped if w != str(path)]
    assert len(line_skips) == len(set(line_skips))
    numbers = [int(w.rsplit(":", 1)[1]) for w in line_skips]
    assert all(
        w == f"{path}:{n}" and 1 <= n <= report.lines_read
        for w, n in zip(line_skips, numbers, strict=True)
    )
    if plain is None:
        assert len(report.skipped) - len(line_skips) <= 1  # at most one gzip framing problem
        return
    blank = sum(1 for line in plain if not line.strip())
    assert report.lines_read == len(plain)
    assert len(report.records) + len(line_skips) + blank == len(plain)
    assert len(line_skips) == len(report.skipped)  # plain text has no framing to break
