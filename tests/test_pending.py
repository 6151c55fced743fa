from __future__ import annotations

import logging
import threading
from collections import Counter

import pytest
from fakes import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from serving import pending
from serving.pending import PendingDecisions, PendingSettings


def make(**overrides):
    clock = FakeClock()
    evicted: list[tuple[str, object, str]] = []
    p = PendingDecisions(
        PendingSettings(**overrides),
        clock=clock,
        on_evict=lambda rid, value, why: evicted.append((rid, value, why)),
    )
    return p, clock, evicted


def test_public_api() -> None:
    assert sorted(pending.__all__) == ["EvictHook", "PendingDecisions", "PendingSettings"]


def test_pop_returns_the_value_once() -> None:
    p, _, evicted = make()
    p.put("r1", {"model": "a"})
    p.put("r2", "b")
    assert len(p) == 2
    assert p.pop("r1") == {"model": "a"}
    assert p.pop("r1") is None
    assert p.pop("unknown") is None
    assert len(p) == 1
    assert evicted == []


def test_capacity_evicts_the_oldest() -> None:
    p, clock, evicted = make(max_items=3)
    for i in range(5):
        p.put(f"r{i}", i)
        clock.advance(1.0)
    assert len(p) == 3
    assert evicted == [("r0", 0, "capacity"), ("r1", 1, "capacity")]
    assert p.pop("r0") is None
    assert [p.pop(f"r{i}") for i in (2, 3, 4)] == [2, 3, 4]


def test_putting_the_same_id_again_replaces_and_evicts_the_old_value() -> None:
    p, clock, evicted = make(max_items=2, max_age_seconds=10.0)
    p.put("r1", "old")
    clock.advance(5.0)
    p.put("r2", "x")
    p.put("r1", "new")  # now the newest
    assert evicted == [("r1", "old", "replaced")]
    p.put("r3", "y")  # capacity pushes out r2, not r1
    assert evicted[-1] == ("r2", "x", "capacity")
    clock.advance(9.0)  # the replacement has its own age
    assert p.pop("r1") == "new"


def test_pop_of_an_expired_decision_evicts_it() -> None:
    p, clock, evicted = make(max_age_seconds=60.0)
    p.put("r1", "a")
    clock.advance(59.9)
    p.put("r2", "b")
    assert p.pop("r2") == "b"
    clock.advance(0.1)  # r1 is exactly max_age old
    assert p.pop("r1") is None
    assert evicted == [("r1", "a", "expired")]
    assert len(p) == 0


def test_expire_evicts_only_old_decisions() -> None:
    p, clock, evicted = make(max_age_seconds=60.0)
    p.put("r1", 1)
    clock.advance(30.0)
    p.put("r2", 2)
    clock.advance(29.0)
    assert p.expire() == 0
    clock.advance(1.0)
    assert p.expire() == 1
    assert evicted == [("r1", 1, "expired")]
    assert p.expire() == 0
    clock.advance(30.0)
    assert p.expire() == 1
    assert evicted == [("r1", 1, "expired"), ("r2", 2, "expired")]
    assert len(p) == 0


def test_put_expires_old_decisions_on_the_way() -> None:
    p, clock, evicted = make(max_age_seconds=60.0)
    p.put("r1", 1)
    clock.advance(60.0)
    p.put("r2", 2)
    assert evicted == [("r1", 1, "expired")]
    assert len(p) == 1


def test_drain_evicts_everything_with_shutdown() -> None:
    p, _, evicted = make()
    for i in range(3):
        p.put(f"r{i}", i)
    assert p.drain() == 3
    assert evicted == [("r0", 0, "shutdown"), ("r1", 1, "shutdown"), ("r2", 2, "shutdown")]
    assert len(p) == 0
    assert p.drain() == 0
    assert len(evicted) == 3


def test_works_without_a_callback() -> None:
    clock = FakeClock()
    p = PendingDecisions(PendingSettings(max_items=1, max_age_seconds=5.0), clock=clock)
    p.put("a", 1)
    p.put("b", 2)
    clock.advance(5.0)
    assert p.pop("b") is None
    assert p.drain() == 0


def test_callback_runs_outside_the_lock_and_may_use_the_store() -> None:
    clock = FakeClock()
    seen: list[tuple[str, int]] = []
    holder: dict[str, PendingDecisions] = {}

    def on_evict(rid: str, value: object, why: str) -> None:
        seen.append((rid, len(holder["p"])))  # would deadlock if called under the lock

    p = PendingDecisions(PendingSettings(max_items=1), clock=clock, on_evict=on_evict)
    holder["p"] = p
    p.put("a", 1)
    p.put("b", 2)
    assert seen == [("a", 1)]


def test_a_failing_callback_does_not_stop_the_other_evictions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[str] = []

    def on_evict(rid: str, value: object, why: str) -> None:
        seen.append(rid)
        if rid == "r0":
            raise RuntimeError("boom")

    p = PendingDecisions(PendingSettings(), clock=FakeClock(), on_evict=on_evict)
    for i in range(3):
        p.put(f"r{i}", i)
    with caplog.at_level(logging.ERROR, logger="promptroute.pending"):
        assert p.drain() == 3
    assert seen == ["r0", "r1", "r2"]
    assert [r.getMessage() for r in caplog.records] == ["on_evict failed for request r0 (shutdown)"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("max_items", 0, id="items-zero"),
        pytest.param("max_items", 10.0, id="items-float"),
        pytest.param("max_items", False, id="items-bool"),
        pytest.param("max_age_seconds", 0, id="age-zero"),
        pytest.param("max_age_seconds", float("inf"), id="age-inf"),
        pytest.param("max_age_seconds", None, id="age-none"),
    ],
)
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        PendingSettings(**{field: value})


_ops = st.one_of(
    st.tuples(st.just("put"), st.integers(0, 9)),
    st.tuples(st.just("pop"), st.integers(0, 9)),
    st.tuples(st.just("advance"), st.floats(0.0, 40.0)),
    st.just(("expire", 0)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_ops, max_size=60), max_items=st.integers(1, 5))
def test_every_value_leaves_exactly_once(ops, max_items: int) -> None:
    p, clock, evicted = make(max_items=max_items, max_age_seconds=60.0)
    popped: list[object] = []
    serial = 0
    for op, arg in ops:
        if op == "put":
            serial += 1
            p.put(f"r{arg}", serial)  # every value is unique
        elif op == "pop":
            value = p.pop(f"r{arg}")
            if value is not None:
                popped.append(value)
        elif op == "advance":
            clock.advance(arg)
        else:
            p.expire()
        assert len(p) <= max_items
    p.drain()
    left = Counter(popped) + Counter(v for _, v, _ in evicted)
    assert left == Counter(range(1, serial + 1))
    assert len(p) == 0


def test_concurrent_puts_and_pops_lose_nothing() -> None:
    evicted: list[object] = []
    lock = threading.Lock()

    def on_evict(rid: str, value: object, why: str) -> None:
        with lock:
            evicted.append(value)

    p = PendingDecisions(PendingSettings(max_items=50), on_evict=on_evict)
    popped: list[list[object]] = [[] for _ in range(4)]

    def worker(k: int) -> None:
        for i in range(2000):
            rid = f"{k}-{i}"
            p.put(rid, rid)
            if i % 2:
                value = p.pop(rid)
                if value is not None:
                    popped[k].append(value)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.drain()
    everything = [v for vs in popped for v in vs] + evicted
    assert len(everything) == 8000
    assert len(set(everything)) == 8000


@settings(max_examples=150, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 6), st.integers(1, 400)),
            st.tuples(st.just("get"), st.integers(0, 6), st.just(0)),
            st.tuples(st.just("pop"), st.integers(0, 6), st.just(0)),
            st.tuples(st.just("advance"), st.integers(0, 40), st.just(0)),
        ),
        max_size=60,
    ),
    max_bytes=st.integers(1, 1000),
)
def test_the_byte_bound_holds_and_the_count_is_exact(ops, max_bytes: int) -> None:
    clock = FakeClock()
    sizes: dict[object, int] = {}
    p = PendingDecisions(
        PendingSettings(max_bytes=max_bytes, max_age_seconds=60.0),
        clock=clock,
        sizeof=lambda value: sizes[value],
    )
    serial = 0
    held: dict[str, object] = {}
    for op, rid, size in ops:
        if op == "put":
            serial += 1
            sizes[serial] = size
            p.put(f"r{rid}", serial)
        elif op == "get":
            value = p.get(f"r{rid}")
            assert value is None or p.get(f"r{rid}") == value  # get leaves it in place
        elif op == "pop":
            p.pop(f"r{rid}")
        else:
            clock.advance(rid)
        held = {k: v for k, (_, v, _) in p._items.items()}
        # The newest decision always stays, even alone over the bound.
        assert p.bytes == sum(sizes[v] for v in held.values())
        assert p.bytes <= max_bytes or len(held) == 1
