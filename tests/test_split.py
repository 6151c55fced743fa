"""The sha256-of-prompt train/test split."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import Prompt, normalize
from training.logs import load_records
from training.records import Outcome, Record
from training.split import SPLIT_SIDES, is_test, split_key, split_records

DATA = Path(__file__).resolve().parents[1] / "data"


def _record(text: str) -> Record:
    return Record(prompt=normalize(text), outcomes={"m": Outcome(quality=1.0)})


@pytest.mark.parametrize(
    ("text", "bucket"),
    [
        # sha256(...)[:8] = 52cb6b5e -> 1389063006 % 100 = 6
        pytest.param("What is 2+2?", 6, id="what-is-2+2"),
        # 9f86d081 -> 2676412545 % 100 = 45
        pytest.param("test", 45, id="test"),
        # 315f5bdb -> 828333019 % 100 = 19: the last test bucket
        pytest.param("Hello, world!", 19, id="hello-world"),
        # 4a99557e -> 1251562878 % 100 = 78; the text is hashed as UTF-8
        pytest.param("é", 78, id="non-ascii"),
    ],
)
def test_known_hashes(text: str, bucket: int) -> None:
    assert is_test(text) is (bucket < 20)
    assert is_test(text, test_percent=bucket) is False
    assert is_test(text, test_percent=bucket + 1) is True


@settings(max_examples=200, deadline=None)
@given(text=st.text(), percent=st.integers(0, 100))
def test_is_test_matches_the_documented_rule(text: str, percent: int) -> None:
    h = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)
    assert is_test(text, test_percent=percent) is (h % 100 < percent)
    assert is_test(text, test_percent=0) is False
    assert is_test(text, test_percent=100) is True


@pytest.mark.parametrize(
    "percent",
    [
        pytest.param(-1, id="negative"),
        pytest.param(101, id="over-100"),
        pytest.param(20.0, id="float"),
        pytest.param(True, id="bool"),
    ],
)
def test_bad_test_percent(percent: object) -> None:
    with pytest.raises(ValueError, match="test_percent"):
        is_test("x", test_percent=percent)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="test_percent"):
        split_records([], "train", test_percent=percent)  # type: ignore[arg-type]


def test_split_key() -> None:
    record = _record("the prompt")
    assert split_key(record) == "the prompt"
    assert split_key(record.prompt) == "the prompt"
    assert split_key("the prompt") == "the prompt"
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert split_key(Record(prompt=normalize(messages=messages))) == "Be brief.\n\nHi"
    with pytest.raises(TypeError, match="Record, Prompt or str"):
        split_key(42)  # type: ignore[arg-type]


def test_split_records_partitions_in_order() -> None:
    texts = ["What is 2+2?", "test", "Hello, world!", "é", "c", "d"]
    records = [_record(t) for t in texts]
    assert [r.prompt.text for r in split_records(records, "test")] == [
        "What is 2+2?",
        "Hello, world!",
        "c",
    ]
    assert [r.prompt.text for r in split_records(records, "train")] == ["test", "é", "d"]
    assert split_records(records, "all") == records
    assert split_records(iter(records), "all") == records
    # Prompts and strings split the same way as the records that hold them.
    assert split_records([r.prompt for r in records], "test") == [
        Prompt("What is 2+2?", "What is 2+2?"),
        Prompt("Hello, world!", "Hello, world!"),
        Prompt("c", "c"),
    ]
    assert split_records(texts, "train", test_percent=19) == ["test", "Hello, world!", "é", "d"]


def test_unknown_side_names_the_valid_ones() -> None:
    assert SPLIT_SIDES == ("train", "test", "all")
    with pytest.raises(ValueError, match=r"unknown split side 'dev'; valid: train, test, all"):
        split_records([], "dev")


@pytest.fixture(scope="module")
def routellm() -> list[Record]:
    return load_records(DATA / "routellm.jsonl.gz").records


def test_routellm_test_share_is_about_a_fifth(routellm: list[Record]) -> None:
    test = split_records(routellm, "test")
    train = split_records(routellm, "train")
    assert (len(train), len(test)) == (12457, 2984)
    assert 0.18 < len(test) / len(routellm) < 0.22


def test_identical_prompts_land_on_the_same_side(routellm: list[Record]) -> None:
    test_ids = {r.id for r in split_records(routellm, "test")}
    groups = _group(routellm)
    repeated = [records for records in groups.values() if len(records) > 1]
    assert len(groups) == 15336
    assert len(repeated) > 50  # MMLU repeats questions under different ids
    assert any(records[0].id in test_ids for records in repeated)
    for records in repeated:
        assert len({r.id in test_ids for r in records}) == 1, records[0].id


def _group(records: list[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        groups[record.prompt.text].append(record)
    return groups


def test_routerbench_holds_only_the_train_side() -> None:
    records = load_records(DATA / "routerbench.jsonl.gz").records
    assert split_records(records, "test") == []
    assert len(split_records(records, "train")) == 2537
