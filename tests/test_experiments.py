"""A/B experiments: sticky hashing, shares, filters, and the statistics in the summary."""

from __future__ import annotations

import hashlib
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

import serving.experiments as experiments_module
from serving.config import ExperimentConfig
from serving.experiments import Assignment, Experiments

USERS = [f"user-{i}" for i in range(20_000)]


def _experiment(name="exp", weights=(1, 1), share=1.0, task_types=None, enabled=True, **treatment):
    variants = [{"name": f"v{i}", "weight": w} for i, w in enumerate(weights)]
    variants[1].update(treatment)
    return ExperimentConfig(
        name=name,
        variants=variants,
        traffic_share=share,
        task_types=task_types,
        enabled=enabled,
    )


def _hash_unit(key: str) -> float:
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16) / 16**15


def _record(experiments, variant, successes, failures, name="exp"):
    for ok in [True] * successes + [False] * failures:
        experiments.record_outcome(name, variant, success=ok, latency_ms=None, quality=None)


def _row(experiments, variant, name="exp"):
    return next(v for v in experiments.summary(name)["variants"] if v["name"] == variant)


def test_all_is_exact():
    assert sorted(experiments_module.__all__) == [
        "Assignment",
        "Experiments",
        "LocalTallies",
        "Tallies",
        "VariantTally",
        "Welford",
    ]


def test_assignment_follows_the_documented_hash():
    experiments = Experiments([_experiment(weights=(1, 3))])
    for user in USERS[:500]:
        u = _hash_unit(f"exp\0{user}")
        expected = "v0" if u < 0.25 else "v1"
        assert experiments.assign(user_id=user, task_type=None).variant == expected


def test_assignment_is_deterministic_and_sticky_across_instances():
    configs = [_experiment(weights=(1, 1, 2), share=0.5)]
    first, second = Experiments(configs), Experiments(configs)
    for user in USERS[:1000]:
        a = first.assign(user_id=user, task_type=None)
        assert a == first.assign(user_id=user, task_type=None)
        assert a == second.assign(user_id=user, task_type=None)


def test_assignment_carries_the_variant_treatment():
    experiments = Experiments([_experiment(weights=(1, 1e9), knob=2.5)])
    assert experiments.assign(user_id="u", task_type=None) == Assignment(
        experiment="exp", variant="v1", model=None, knob=2.5, artifact=None
    )


@pytest.mark.parametrize(
    "weights",
    [
        pytest.param((1, 1), id="even"),
        pytest.param((1, 2, 1), id="uneven"),
        pytest.param((0.05, 0.95), id="small-arm"),
        pytest.param((3, 3, 3, 1), id="four"),
    ],
)
def test_shares_are_close_to_the_weights(weights):
    experiments = Experiments([_experiment(weights=weights)])
    counts = dict.fromkeys((f"v{i}" for i in range(len(weights))), 0)
    for user in USERS:
        counts[experiments.assign(user_id=user, task_type=None).variant] += 1
    n, total = len(USERS), sum(weights)
    for i, weight in enumerate(weights):
        p = weight / total
        # 4 binomial standard deviations: a false failure is a ~6e-5 event per arm.
        assert abs(counts[f"v{i}"] - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_traffic_share_admits_exactly_the_users_below_it_on_a_second_hash():
    experiments = Experiments([_experiment(share=0.3)])
    admitted = {u for u in USERS if experiments.assign(user_id=u, task_type=None) is not None}
    assert admitted == {u for u in USERS if _hash_unit(f"exp\0{u}\0traffic") < 0.3}
    n, p = len(USERS), 0.3
    assert abs(len(admitted) - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_the_traffic_hash_is_independent_of_the_variant_hash():
    # Were they the same hash, a 50% share would admit only the first half-weight variant.
    experiments = Experiments([_experiment(share=0.5)])
    variants = [experiments.assign(user_id=u, task_type=None) for u in USERS]
    counts = [sum(1 for a in variants if a is not None and a.variant == v) for v in ("v0", "v1")]
    n = sum(counts)
    assert abs(counts[0] - n / 2) <= 4 * math.sqrt(n / 4)


def test_users_left_out_by_traffic_share_fall_through_to_the_next_experiment():
    experiments = Experiments([_experiment("small", share=0.1), _experiment("all")])
    seen = {experiments.assign(user_id=u, task_type=None).experiment for u in USERS[:2000]}
    assert seen == {"small", "all"}
    for user in USERS[:2000]:
        in_small = _hash_unit(f"small\0{user}\0traffic") < 0.1
        expected = "small" if in_small else "all"
        assert experiments.assign(user_id=user, task_type=None).experiment == expected


@pytest.mark.parametrize(
    ("task_type", "expected"),
    [
        pytest.param("code", "code-only", id="filtered-in"),
        pytest.param("math", "code-only", id="second-listed-type"),
        pytest.param("chat", "everything", id="filtered-out-falls-through"),
        pytest.param(None, "everything", id="unknown-type-falls-through"),
    ],
)
def test_task_type_filters(task_type, expected):
    experiments = Experiments(
        [_experiment("code-only", task_types=["code", "math"]), _experiment("everything")]
    )
    assert experiments.assign(user_id="u1", task_type=task_type).experiment == expected


def test_a_filter_that_admits_nothing_gives_none():
    experiments = Experiments([_experiment(task_types=["code"])])
    assert experiments.assign(user_id="u1", task_type="chat") is None


def test_disabled_experiments_assign_no_one_but_still_summarise():
    experiments = Experiments([_experiment("off", enabled=False), _experiment("on")])
    assert {experiments.assign(user_id=u, task_type=None).experiment for u in USERS[:200]} == {"on"}
    assert experiments.names() == ["off", "on"]
    assert experiments.summary("off")["enabled"] is False


@pytest.mark.parametrize("user_id", [pytest.param(None, id="none"), pytest.param("", id="empty")])
def test_no_user_no_assignment(user_id):
    assert Experiments([_experiment()]).assign(user_id=user_id, task_type=None) is None


def test_no_experiments():
    experiments = Experiments([])
    assert experiments.assign(user_id="u", task_type=None) is None
    assert experiments.names() == []
    assert experiments.summaries() == []


def test_duplicate_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        Experiments([_experiment(), _experiment()])


def test_summary_of_a_fresh_experiment_is_exact():
    experiments = Experiments([_experiment(task_types=["code"], share=0.5, model="m")])
    empty = {
        "assigned": 0,
        "feedback": 0,
        "success_rate": None,
        "success_rate_ci95": None,
        "mean_latency_ms": None,
        "mean_latency_ms_ci95": None,
        "mean_quality": None,
        "mean_quality_ci95": None,
        "mean_cost_usd": None,
        "mean_cost_usd_ci95": None,
        "escalated": 0,
        "p_value_vs_control": None,
    }
    assert experiments.summary("exp") == {
        "name": "exp",
        "enabled": True,
        "traffic_share": 0.5,
        "task_types": ["code"],
        "variants": [
            {"name": "v0", "weight": 1.0, "model": None, "knob": None, "artifact": None, **empty},
            {"name": "v1", "weight": 1.0, "model": "m", "knob": None, "artifact": None, **empty},
        ],
    }
    assert experiments.summaries() == [experiments.summary("exp")]


def test_unknown_names_raise_key_error():
    experiments = Experiments([_experiment()])
    with pytest.raises(KeyError):
        experiments.summary("nope")
    with pytest.raises(KeyError, match="unknown experiment 'nope'; known: exp"):
        experiments.record_outcome("nope", "v0", success=True, latency_ms=None, quality=None)
    with pytest.raises(KeyError, match="unknown variant 'v9' of 'exp'; known: v0, v1"):
        experiments.record_outcome("exp", "v9", success=True, latency_ms=None, quality=None)
    with pytest.raises(KeyError, match="unknown variant"):
        experiments.record_assignment(Assignment("exp", "v9", None, None, None))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"latency_ms": -1.0, "quality": None}, "latency_ms", id="negative-latency"),
        pytest.param({"latency_ms": math.nan, "quality": None}, "latency_ms", id="nan-latency"),
        pytest.param({"latency_ms": None, "quality": math.inf}, "quality", id="inf-quality"),
    ],
)
def test_non_finite_outcomes_are_rejected(kwargs, message):
    experiments = Experiments([_experiment()])
    with pytest.raises(ValueError, match=message):
        experiments.record_outcome("exp", "v0", success=True, **kwargs)
    assert _row(experiments, "v0")["feedback"] == 0


def test_assignments_and_feedback_are_counted_per_variant():
    experiments = Experiments([_experiment()])
    served = [experiments.assign(user_id=u, task_type=None) for u in USERS[:100]]
    for a in served:
        experiments.record_assignment(a)
    _record(experiments, "v1", 3, 1)
    rows = experiments.summary("exp")["variants"]
    assert [r["assigned"] for r in rows] == [
        sum(a.variant == v for a in served) for v in ("v0", "v1")
    ]
    assert [r["feedback"] for r in rows] == [0, 4]
    assert rows[1]["success_rate"] == 0.75


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        pytest.param(8, 10, 0.4901624715366418, 0.9433178485456248, id="8-of-10"),
        pytest.param(0, 10, 0.0, 0.2775327998628892, id="0-of-10"),
        pytest.param(10, 10, 0.7224672001371107, 1.0, id="10-of-10"),
        pytest.param(45, 100, 0.3561453797951198, 0.5475539700255787, id="45-of-100"),
        pytest.param(1, 1, 0.20654931437723745, 1.0, id="1-of-1"),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, low, high):
    experiments = Experiments([_experiment()])
    _record(experiments, "v0", successes, n - successes)
    row = _row(experiments, "v0")
    assert row["success_rate"] == successes / n
    assert row["success_rate_ci95"] == pytest.approx([low, high], abs=1e-12)


@pytest.mark.parametrize(
    ("control", "variant", "p_value"),
    [
        pytest.param((50, 100), (65, 100), 0.03190525523659653, id="50-vs-65-of-100"),
        pytest.param((30, 40), (20, 40), 0.020921335337794014, id="30-vs-20-of-40"),
        pytest.param((5, 10), (5, 10), 1.0, id="identical"),
        pytest.param((10, 10), (20, 20), None, id="both-all-success"),
        pytest.param((0, 10), (0, 5), None, id="both-all-failure"),
        pytest.param((0, 0), (5, 10), None, id="no-control-feedback"),
        pytest.param((5, 10), (0, 0), None, id="no-variant-feedback"),
    ],
)
def test_z_test_p_values_match_hand_computed_values(control, variant, p_value):
    experiments = Experiments([_experiment()])
    _record(experiments, "v0", control[0], control[1] - control[0])
    _record(experiments, "v1", variant[0], variant[1] - variant[0])
    rows = experiments.summary("exp")["variants"]
    assert rows[0]["p_value_vs_control"] is None
    if p_value is None:
        assert rows[1]["p_value_vs_control"] is None
    else:
        assert rows[1]["p_value_vs_control"] == pytest.approx(p_value, abs=1e-12)


def test_p_values_compare_every_variant_with_the_first():
    experiments = Experiments([_experiment(weights=(1, 1, 1))])
    _record(experiments, "v0", 50, 50)
    _record(experiments, "v1", 65, 35)
    _record(experiments, "v2", 30, 10)
    p_values = [r["p_value_vs_control"] for r in experiments.summary("exp")["variants"]]
    assert p_values == [
        None,
        pytest.approx(0.03190525523659653, abs=1e-12),
        pytest.approx(0.0069275179772265065, abs=1e-12),
    ]


def test_latency_and_quality_means_with_normal_intervals():
    experiments = Experiments([_experiment()])
    for latency, quality in [(10, 0.5), (20, None), (30, 1.0), (40, None)]:
        experiments.record_outcome("exp", "v0", success=True, latency_ms=latency, quality=quality)
    experiments.record_outcome("exp", "v0", success=False, latency_ms=None, quality=None)
    row = _row(experiments, "v0")
    assert row["feedback"] == 5
    assert row["mean_latency_ms"] == 25.0
    assert row["mean_latency_ms_ci95"] == pytest.approx([12.3484868811834, 37.6515131188166])
    assert row["mean_quality"] == 0.75
    half = 1.959963984540054 * math.sqrt(0.125 / 2)  # sample variance of [0.5, 1.0] is 0.125
    assert row["mean_quality_ci95"] == pytest.approx([0.75 - half, 0.75 + half])


def test_a_single_observation_has_a_mean_but_no_interval():
    experiments = Experiments([_experiment()])
    experiments.record_outcome("exp", "v0", success=True, latency_ms=12.5, quality=0.0)
    row = _row(experiments, "v0")
    assert (row["mean_latency_ms"], row["mean_latency_ms_ci95"]) == (12.5, None)
    assert (row["mean_quality"], row["mean_quality_ci95"]) == (0.0, None)


def test_welford_is_stable_with_a_large_offset():
    # The naive sum-of-squares formula loses every digit here; Welford keeps them.
    experiments = Experiments([_experiment()])
    for latency in (1e9 + 4, 1e9 + 7, 1e9 + 13, 1e9 + 16):
        experiments.record_outcome("exp", "v0", success=True, latency_ms=latency, quality=None)
    row = _row(experiments, "v0")
    half = 1.959963984540054 * math.sqrt(30.0 / 4)  # sample variance of 4, 7, 13, 16 is 30
    assert row["mean_latency_ms"] == 1e9 + 10
    assert row["mean_latency_ms_ci95"] == pytest.approx([1e9 + 10 - half, 1e9 + 10 + half])


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=2, max_size=60)
)
def test_latency_mean_and_interval_agree_with_a_two_pass_computation(values):
    experiments = Experiments([_experiment()])
    for value in values:
        experiments.record_outcome("exp", "v0", success=True, latency_ms=value, quality=None)
    n = len(values)
    mean = math.fsum(values) / n
    half = 1.959963984540054 * math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n)
    row = _row(experiments, "v0")
    assert row["mean_latency_ms"] == pytest.approx(mean, rel=1e-9, abs=1e-6)
    assert row["mean_latency_ms_ci95"] == pytest.approx(
        [mean - half, mean + half], rel=1e-6, abs=1e-6
    )


@settings(max_examples=40, deadline=None)
@given(n=st.integers(min_value=1, max_value=150), data=st.data())
def test_wilson_interval_agrees_with_scipy(n, data):
    successes = data.draw(st.integers(min_value=0, max_value=n))
    experiments = Experiments([_experiment()])
    _record(experiments, "v0", successes, n - successes)
    expected = scipy_stats.binomtest(successes, n).proportion_ci(method="wilson")
    low, high = _row(experiments, "v0")["success_rate_ci95"]
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_concurrent_recording_loses_no_counts():
    experiments = Experiments([_experiment()])
    assignment = Assignment("exp", "v1", None, None, None)

    def work():
        for i in range(500):
            experiments.record_assignment(assignment)
            experiments.record_outcome(
                "exp", "v1", success=i % 2 == 0, latency_ms=float(i), quality=None
            )

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = _row(experiments, "v1")
    assert (row["assigned"], row["feedback"], row["success_rate"]) == (4000, 4000, 0.5)
    assert row["mean_latency_ms"] == pytest.approx(249.5)
