from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from models.errors import DataError
from serving import decision_log
from serving.decision_log import DecisionLog, DecisionLogSettings, read_log_lines

PROMPT = "Summarise the secret merger memo for ACME\u2028Corp, line two\nand three"


def row(i: int, **extra) -> dict:
    return {
        "id": f"r{i}",
        "prompt": f"prompt number {i}",
        "model": "small",
        "success": True,
        "ts": 1_700_000_000 + i,
        "router_version": "v1",
        **extra,
    }


def all_bytes(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()))


def test_public_api() -> None:
    assert sorted(decision_log.__all__) == [
        "DecisionLog",
        "DecisionLogSettings",
        "process_path",
        "read_joined_rows",
        "read_log_lines",
    ]


def test_rows_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"  # the folder is created
    rows = [
        {
            "id": "r1",
            "prompt": PROMPT,
            "model": "big",
            "success": True,
            "quality": 0.9,
            "cost_usd": 0.0012,
            "latency_ms": 812.5,
            "input_tokens": 120,
            "output_tokens": 64,
            "task_type": "summarise",
            "ts": 1700000000.25,
            "router_version": "2024-06-01",
            "experiment": {"name": "thr", "variant": "b"},
        },
        {
            "id": "r2",
            "messages": [{"role": "user", "content": "héllo ✓"}],
            "model": "small",
            "success": None,
            "ts": 1700000001,
            "router_version": "2024-06-01",
            "error_type": "timeout",
        },
    ]
    with DecisionLog(DecisionLogSettings(path=str(path))) as log:
        for r in rows:
            log.append(r)
        assert log.lines_written == 2
    assert list(read_log_lines(path)) == rows
    raw = path.read_bytes()
    assert raw.count(b"\n") == 2  # the newline and U+2028 inside the prompt stay escaped/inline
    assert "héllo ✓".encode() in raw  # ensure_ascii=False


def test_ts_is_filled_from_the_clock_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path)), clock=lambda: 1234.56789) as log:
        log.append({"id": "a", "prompt": "p", "model": "m", "success": False})
        log.append({"id": "b", "prompt": "p", "model": "m", "success": False, "ts": 7})
    assert [r["ts"] for r in read_log_lines(path)] == [1234.568, 7]


def test_settings_accept_a_path_object(tmp_path: Path) -> None:
    s = DecisionLogSettings(path=tmp_path / "d.jsonl")  # type: ignore[arg-type]
    assert s.path == str(tmp_path / "d.jsonl")


def test_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    DecisionLog(DecisionLogSettings(path=str(path))).close()
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def test_without_store_prompt_the_text_never_reaches_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": PROMPT},
    ]
    settings = DecisionLogSettings(path=str(path), store_prompt=False, max_bytes=300)
    with DecisionLog(settings) as log:
        log.append(row(1, prompt=PROMPT))
        log.append(row(2, prompt=PROMPT))
        log.append({k: v for k, v in row(3).items() if k != "prompt"} | {"messages": messages})
    raw = all_bytes(tmp_path)
    assert len(list(tmp_path.iterdir())) > 1  # rotation did not leak it either
    for needle in ("secret merger", "ACME", "You are terse", "line two"):
        assert needle.encode() not in raw
    got = list(read_log_lines(path))
    want_prompt = hashlib.sha256(PROMPT.encode()).hexdigest()
    canonical = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    want_messages = hashlib.sha256(canonical.encode()).hexdigest()
    assert [r["prompt_sha256"] for r in got] == [want_prompt, want_prompt, want_messages]
    assert all("prompt" not in r and "messages" not in r for r in got)
    # the hash takes the prompt's place; everything else is kept
    assert list(got[0]) == ["id", "prompt_sha256", "model", "success", "ts", "router_version"]


def test_message_hash_ignores_key_order(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path), store_prompt=False)) as log:
        log.append({"id": "a", "messages": [{"role": "user", "content": "x"}]})
        log.append({"id": "b", "messages": [{"content": "x", "role": "user"}]})
    a, b = read_log_lines(path)
    assert a["prompt_sha256"] == b["prompt_sha256"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param({"prompt": "p", "messages": []}, "both 'prompt' and 'messages'", id="both"),
        pytest.param({"prompt": 12}, "prompt: must be a string", id="prompt-not-str"),
        pytest.param({"messages": [float("nan")]}, "messages: cannot be written", id="nan-msg"),
    ],
)
def test_redaction_rejects_ambiguous_rows(tmp_path: Path, bad: dict, message: str) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path), store_prompt=False)) as log:
        with pytest.raises(ValueError, match=message):
            log.append({"id": "x", **bad})
        assert log.lines_written == 0
    assert path.read_bytes() == b""


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param({1, 2}, id="set"),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_unwritable_values_raise_and_write_nothing(tmp_path: Path, value: object) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path))) as log:
        log.append(row(1))
        with pytest.raises(ValueError, match="^row: cannot be written as a JSON line"):
            log.append(row(2, quality=value))
        log.append(row(3))
        assert log.lines_written == 2
    assert [r["id"] for r in read_log_lines(path)] == ["r1", "r3"]


def test_rotation_keeps_every_line_once_and_never_splits_one(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    max_bytes = 500
    with DecisionLog(
        DecisionLogSettings(path=str(path), max_bytes=max_bytes, backup_count=100)
    ) as log:
        for i in range(300):
            log.append(row(i, note="x" * (i % 37)))  # varied lengths
        assert log.lines_written == 300
    files = sorted(tmp_path.iterdir())
    assert len(files) > 20
    for f in files:
        data = f.read_bytes()
        assert 0 < len(data) <= max_bytes
        assert data.endswith(b"\n")
        for line in data.splitlines():
            json.loads(line)  # each line is whole
    assert [r["id"] for r in read_log_lines(path)] == [f"r{i}" for i in range(300)]


def test_rotation_drops_the_oldest_beyond_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path), max_bytes=400, backup_count=3)) as log:
        for i in range(200):
            log.append(row(i))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d.jsonl",
        "d.jsonl.1",
        "d.jsonl.2",
        "d.jsonl.3",
    ]
    ids = [int(r["id"][1:]) for r in read_log_lines(path)]
    assert ids == list(range(ids[0], 200))  # the newest lines, contiguous, in order
    assert ids[0] > 0


def test_a_line_longer_than_max_bytes_gets_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    with DecisionLog(DecisionLogSettings(path=str(path), max_bytes=200, backup_count=5)) as log:
        log.append(row(1))
        log.append(row(2, note="y" * 1000))
        log.append(row(3))
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    assert sorted(sizes) == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    assert sizes["d.jsonl.1"] > 1000
    assert [r["id"] for r in read_log_lines(path)] == ["r1", "r2", "r3"]


def test_reopening_continues_the_size_count(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    settings = DecisionLogSettings(path=str(path), max_bytes=400, backup_count=10)
    with DecisionLog(settings) as log:
        log.append(row(1))
    with DecisionLog(settings) as log:
        for i in range(2, 8):
            log.append(row(i))
        assert log.lines_written == 6
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    assert [r["id"] for r in read_log_lines(path)] == [f"r{i}" for i in range(1, 8)]


def test_concurrent_appends_produce_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    settings = DecisionLogSettings(path=str(path), max_bytes=8192, backup_count=1000)
    threads_n, per_thread = 8, 250
    with DecisionLog(settings) as log:

        def worker(k: int) -> None:
            for i in range(per_thread):
                log.append({"id": f"{k}-{i}", "prompt": "p" * (i % 50), "model": str(k)})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert log.lines_written == threads_n * per_thread
    rows = list(read_log_lines(path))
    assert len(rows) == threads_n * per_thread
    assert len({r["id"] for r in rows}) == threads_n * per_thread
    for k in range(threads_n):  # each thread's rows keep their order
        mine = [int(r["id"].split("-")[1]) for r in rows if r["model"] == str(k)]
        assert mine == list(range(per_thread))
    assert all(p.read_bytes().endswith(b"\n") for p in tmp_path.iterdir())


def test_a_line_cut_by_a_crash_leaves_earlier_lines_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.jsonl"
    settings = DecisionLogSettings(path=str(path))
    with DecisionLog(settings) as log:
        for i in range(3):
            log.append(row(i))
    whole = path.read_bytes()
    with open(path, "ab") as f:  # the crash: half a line, no newline
        f.write(json.dumps(row(3)).encode()[:25])
    assert [r["id"] for r in read_log_lines(path)] == ["r0", "r1", "r2"]
    with caplog.at_level(logging.WARNING, logger="promptroute.decision_log"):
        log = DecisionLog(settings)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: removed 25 bytes of a line cut short by a crash"
    ]
    assert path.read_bytes() == whole
    with log:
        log.append(row(4))
    assert [r["id"] for r in read_log_lines(path)] == ["r0", "r1", "r2", "r4"]


def test_a_long_fragment_without_any_newline_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decision_log, "_TAIL_CHUNK", 7)  # make the backwards scan take steps
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "r0"}\n' + b'{"id": "half' * 10)
    DecisionLog(DecisionLogSettings(path=str(path))).close()
    assert path.read_bytes() == b'{"id": "r0"}\n'
    path.write_bytes(b'{"id": "nothing whole"')
    DecisionLog(DecisionLogSettings(path=str(path))).close()
    assert path.read_bytes() == b""


def test_a_failed_write_leaves_no_fragment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(DecisionLogSettings(path=str(path)))
    log.append(row(1))
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:10]))  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(decision_log.os, "write", short_then_full)
    with pytest.raises(OSError, match="No space left"):
        log.append(row(2))
    monkeypatch.setattr(decision_log.os, "write", real_write)
    log.append(row(3))
    log.close()
    assert log.lines_written == 2
    assert [r["id"] for r in read_log_lines(path)] == ["r1", "r3"]


def test_fsync_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    monkeypatch.setattr(decision_log.os, "fsync", lambda fd: synced.append(fd))
    with DecisionLog(DecisionLogSettings(path=str(tmp_path / "a"), fsync=False)) as log:
        log.append(row(1))
    assert synced == []
    with DecisionLog(DecisionLogSettings(path=str(tmp_path / "b"), fsync=True)) as log:
        log.append(row(1))
        log.append(row(2))
    assert len(synced) == 2


def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = DecisionLog(DecisionLogSettings(path=str(tmp_path / "d.jsonl")))
    log.close()
    log.close()
    with pytest.raises(ValueError, match="decision log is closed"):
        log.append(row(1))


def test_read_reports_a_bad_line_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"id": "a"}\n\n{"id": \n{"id": "c"}\n')
    it = read_log_lines(path)
    assert next(it) == {"id": "a"}
    with pytest.raises(DataError) as e:
        next(it)
    assert (e.value.path, e.value.line) == (str(path), 3)
    path.write_bytes(b"[1, 2]\n")
    with pytest.raises(DataError, match=r":1: not a JSON object"):
        list(read_log_lines(path))


def test_read_of_a_missing_log(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no decision log here"):
        list(read_log_lines(tmp_path / "nope.jsonl"))
    (tmp_path / "only.jsonl.1").write_bytes(b'{"id": "old"}\n')
    assert list(read_log_lines(tmp_path / "only.jsonl")) == [{"id": "old"}]


def test_read_orders_backups_numerically(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    for n in range(1, 12):
        (tmp_path / f"d.jsonl.{n}").write_bytes(json.dumps({"n": n}).encode() + b"\n")
    (tmp_path / "d.jsonl.bak").write_bytes(b"not ours\n")
    path.write_bytes(b'{"n": 0}\n')
    assert [r["n"] for r in read_log_lines(path)] == list(range(11, -1, -1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("path", "", id="path-empty"),
        pytest.param("path", None, id="path-none"),
        pytest.param("max_bytes", 0, id="max-bytes-zero"),
        pytest.param("max_bytes", 1.5, id="max-bytes-float"),
        pytest.param("backup_count", 0, id="backups-zero"),
        pytest.param("store_prompt", "no", id="store-prompt-string"),
        pytest.param("fsync", 1, id="fsync-int"),
    ],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    kwargs = {"path": "d.jsonl", field: value}
    with pytest.raises(ValueError, match=f"^{field}: "):
        DecisionLogSettings(**kwargs)  # type: ignore[arg-type]
