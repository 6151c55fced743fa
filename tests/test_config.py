"""The service config: defaults, every validation error naming its field, YAML errors, overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import serving.config as config_module
from models.errors import ConfigError
from serving.config import (
    BreakersConfig,
    DecisionLogConfig,
    PendingConfig,
    Settings,
    StatsConfig,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]
ROUTING_EXAMPLE = ROOT / "serving" / "examples" / "routing.yaml"
CATALOG = ROOT / "models" / "catalog.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _rule(match: str = "{task_types: [code]}", target: str = "model: m", name: str = "r") -> str:
    return f"rules: [{{name: {name}, match: {match}, {target}}}]"


def _experiment(variants: str = "[{name: a, weight: 1}, {name: b, weight: 1}]", **extra) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in extra.items())
    return f"experiments: [{{name: e, variants: {variants}{', ' + fields if fields else ''}}}]"


def test_all_is_exact():
    assert sorted(config_module.__all__) == [
        "BreakersConfig",
        "ClientKeyConfig",
        "DecisionLogConfig",
        "ESCALATION_CHECKS",
        "EscalationConfig",
        "ExperimentConfig",
        "ExplorationConfig",
        "GatewayConfig",
        "LimitsConfig",
        "LogFormat",
        "PendingConfig",
        "PrioritiesConfig",
        "Priority",
        "RuleConfig",
        "RuleMatch",
        "Settings",
        "StateConfig",
        "StatsConfig",
        "UpstreamConfig",
        "VariantConfig",
        "load_settings",
    ]
    assert all(hasattr(config_module, name) for name in config_module.__all__)


@pytest.mark.parametrize(
    ("attribute", "expected"),
    [
        pytest.param("artifact", None, id="artifact"),
        pytest.param("catalog", None, id="catalog"),
        pytest.param("host", "127.0.0.1", id="host"),
        pytest.param("port", 8000, id="port"),
        pytest.param("default_priority", "balanced", id="priority"),
        pytest.param("degraded_mode", False, id="degraded"),
        pytest.param("admin_api_key_env", "PROMPTROUTE_ADMIN_KEY", id="admin-key-env"),
        pytest.param("log_prompts", False, id="log-prompts"),
        pytest.param("limits.max_body_bytes", 1_000_000, id="max-body"),
        pytest.param("limits.max_prompt_chars", 400_000, id="max-prompt"),
        pytest.param("limits.max_messages", 1_000, id="max-messages"),
        pytest.param("limits.max_metadata_depth", 8, id="metadata-depth"),
        pytest.param("limits.max_metadata_bytes", 16_384, id="metadata-bytes"),
        pytest.param("breakers.window_size", 20, id="breaker-window"),
        pytest.param("breakers.error_rate_threshold", 0.5, id="breaker-threshold"),
        pytest.param("breakers.max_cooldown_seconds", 300.0, id="breaker-max-cooldown"),
        pytest.param("breakers.probe_timeout_seconds", 30.0, id="breaker-probe-timeout"),
        pytest.param("stats.window_size", 200, id="stats-window"),
        pytest.param("stats.latency_percentile", 50.0, id="stats-percentile"),
        pytest.param("pending.max_items", 100_000, id="pending-items"),
        pytest.param("pending.max_age_seconds", 3600.0, id="pending-age"),
        pytest.param("decision_log.path", None, id="log-path"),
        pytest.param("decision_log.max_bytes", 100 * 2**20, id="log-bytes"),
        pytest.param("decision_log.backup_count", 5, id="log-backups"),
        pytest.param("decision_log.store_prompt", True, id="log-store-prompt"),
        pytest.param("decision_log.fsync", False, id="log-fsync"),
        pytest.param("priorities.quality", 0.0, id="knob-quality"),
        pytest.param("priorities.balanced", None, id="knob-balanced"),
        pytest.param("priorities.cost", 4.0, id="knob-cost"),
        pytest.param("rules", [], id="rules"),
        pytest.param("experiments", [], id="experiments"),
    ],
)
def test_defaults(attribute, expected):
    value = load_settings()
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


def test_no_file_and_empty_file_give_the_same_defaults(tmp_path):
    assert load_settings() == Settings()
    assert load_settings(_write(tmp_path, "# only a comment\n")) == Settings()


BAD_CONFIGS = [
    pytest.param("port: 0", "port", "greater than or equal to 1", id="port-zero"),
    pytest.param("port: 65536", "port", "less than or equal to 65535", id="port-high"),
    pytest.param('port: "8000"', "port", "valid integer", id="port-quoted"),
    pytest.param("host: ''", "host", "at least 1 character", id="host-empty"),
    pytest.param("default_priority: fast", "default_priority", "'speed'", id="priority"),
    pytest.param('degraded_mode: "yes"', "degraded_mode", "valid boolean", id="bool-quoted"),
    pytest.param("brekers: {}", "brekers", "expected one of: artifact, catalog", id="typo-top"),
    pytest.param("limits: {max_body_bytes: 0}", "limits.max_body_bytes", "greater than 0", id="b0"),
    pytest.param(
        "limits: {max_bodybytes: 1}",
        "limits.max_bodybytes",
        "expected one of: max_body_bytes, max_prompt_chars",
        id="typo-nested",
    ),
    pytest.param(
        "breakers: {error_rate_threshold: 1.5}",
        "breakers.error_rate_threshold",
        "less than or equal to 1",
        id="threshold-high",
    ),
    pytest.param(
        "breakers: {error_rate_threshold: 0}",
        "breakers.error_rate_threshold",
        "greater than 0",
        id="threshold-zero",
    ),
    pytest.param(
        "breakers: {cooldown_multiplier: 0.5}",
        "breakers.cooldown_multiplier",
        "greater than or equal to 1",
        id="multiplier",
    ),
    pytest.param(
        "breakers: {cooldown_seconds: 20, max_cooldown_seconds: 10}",
        "breakers.max_cooldown_seconds",
        "must be >= cooldown_seconds (20.0)",
        id="max-cooldown",
    ),
    pytest.param(
        "breakers: {min_calls: 30}", "breakers.min_calls", "<= window_size (20)", id="min-calls"
    ),
    pytest.param(
        "breakers: {window_seconds: .inf}", "breakers.window_seconds", "finite", id="infinite"
    ),
    pytest.param(
        "breakers: {window_size: 2.5}", "breakers.window_size", "valid integer", id="float-int"
    ),
    pytest.param(
        "stats: {latency_percentile: 0}", "stats.latency_percentile", "greater than 0", id="p0"
    ),
    pytest.param(
        "stats: {latency_percentile: 101}", "stats.latency_percentile", "less than", id="p101"
    ),
    pytest.param("pending: {max_items: 0}", "pending.max_items", "greater than 0", id="pending"),
    pytest.param("decision_log: {path: ''}", "decision_log.path", "at least 1", id="log-path"),
    pytest.param(
        "decision_log: {backup_count: 0}",
        "decision_log.backup_count",
        "greater than 0",
        id="log-backups",
    ),
    pytest.param("priorities: {cost: -1}", "priorities.cost", "greater than or equal", id="knob"),
    pytest.param("priorities: {speed: 1}", "priorities.speed", "expected one of", id="speed"),
    pytest.param(
        _rule(match="{prompt_regex: '(abc'}"),
        "rules[0].match.prompt_regex",
        "invalid regular expression: missing ), unterminated subpattern",
        id="rule-regex",
    ),
    pytest.param(
        _rule(match="{prompt_regex: ''}"),
        "rules[0].match.prompt_regex",
        "at least 1 character",
        id="rule-regex-empty",
    ),
    pytest.param(
        _rule(match="{}"), "rules[0].match", "needs at least one condition", id="rule-no-condition"
    ),
    pytest.param("rules: [{name: r, model: m}]", "rules[0].match", "Field required", id="no-match"),
    pytest.param(
        _rule(match="{min_input_tokens: 10, max_input_tokens: 5}"),
        "rules[0].match.max_input_tokens",
        "must be >= min_input_tokens (10)",
        id="rule-token-bounds",
    ),
    pytest.param(
        _rule(match="{min_input_tokens: -1}"),
        "rules[0].match.min_input_tokens",
        "greater than or equal to 0",
        id="rule-negative-tokens",
    ),
    pytest.param(
        _rule(match="{metadata: {tier: 1}}"),
        "rules[0].match.metadata.tier",
        "must be a string or a non-empty list of strings, got 1",
        id="rule-metadata-int",
    ),
    pytest.param(
        _rule(match="{metadata: {tier: []}}"),
        "rules[0].match.metadata.tier",
        "non-empty list of strings, got []",
        id="rule-metadata-empty-list",
    ),
    pytest.param(
        _rule(match="{metadata: {1: a}}"),
        "rules[0].match.metadata[1]",
        "invalid key 1",
        id="rule-metadata-key",
    ),
    pytest.param(
        _rule(match="{metadata: {}}"), "rules[0].match.metadata", "at least 1", id="rule-md-empty"
    ),
    pytest.param(
        _rule(match="{task_types: []}"),
        "rules[0].match.task_types",
        "at least 1 item",
        id="rule-task-types-empty",
    ),
    pytest.param(
        _rule(target="name2: x"), "rules[0].name2", "expected one of: name, match", id="rule-typo"
    ),
    pytest.param(
        "rules: [{name: r, match: {task_types: [code]}}]",
        "rules[0].model",
        "set exactly one of 'model' or 'candidates'",
        id="rule-no-target",
    ),
    pytest.param(
        _rule(target="model: m, candidates: [a]"),
        "rules[0].model",
        "set exactly one of 'model' or 'candidates'",
        id="rule-two-targets",
    ),
    pytest.param(
        _rule(target="candidates: []"), "rules[0].candidates", "at least 1", id="rule-cands-empty"
    ),
    pytest.param(
        _rule(target="candidates: [a, b, a]"),
        "rules[0].candidates",
        "must not repeat a model",
        id="rule-cands-repeat",
    ),
    pytest.param(
        "rules: [{name: a, match: {task_types: [x]}, model: m},"
        " {name: a, match: {task_types: [y]}, model: m}]",
        "rules[1].name",
        "duplicate rule name 'a' (also rules[0])",
        id="rule-duplicate",
    ),
    pytest.param(
        "experiments: [{name: 'a b', variants: [{name: a, weight: 1}, {name: b, weight: 1}]}]",
        "experiments[0].name",
        "should match pattern",
        id="exp-name",
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1}]"),
        "experiments[0].variants",
        "at least 2 items",
        id="exp-one-variant",
    ),
    pytest.param(
        "experiments: [{name: e}]", "experiments[0].variants", "Field required", id="exp-variants"
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1}, {name: b, weight: 0}]"),
        "experiments[0].variants[1].weight",
        "greater than 0",
        id="exp-weight",
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1}, {name: b}]"),
        "experiments[0].variants[1].weight",
        "Field required",
        id="exp-weight-missing",
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1, model: m, knob: 2}, {name: b, weight: 1}]"),
        "experiments[0].variants[0].knob",
        "set at most one of 'model', 'knob' or 'artifact' (got model, knob)",
        id="exp-two-treatments",
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1}, {name: b, weight: 1, knob: -1}]"),
        "experiments[0].variants[1].knob",
        "greater than or equal to 0",
        id="exp-knob",
    ),
    pytest.param(
        _experiment(variants="[{name: a, weight: 1}, {name: a, weight: 1}]"),
        "experiments[0].variants[1].name",
        "duplicate variant name 'a' (also variants[0])",
        id="exp-variant-duplicate",
    ),
    pytest.param(
        _experiment(traffic_share=0), "experiments[0].traffic_share", "greater than 0", id="share0"
    ),
    pytest.param(
        _experiment(traffic_share=1.5),
        "experiments[0].traffic_share",
        "less than or equal to 1",
        id="share-high",
    ),
    pytest.param(
        _experiment(task_types="[]"), "experiments[0].task_types", "at least 1", id="exp-tasks"
    ),
    pytest.param(
        _experiment(enabled="'no'"), "experiments[0].enabled", "valid boolean", id="exp-enabled"
    ),
    pytest.param(
        "experiments: [{name: e, variants: [{name: a, weight: 1}, {name: b, weight: 1}]},"
        " {name: e, variants: [{name: a, weight: 1}, {name: b, weight: 1}]}]",
        "experiments[1].name",
        "duplicate experiment name 'e' (also experiments[0])",
        id="exp-duplicate",
    ),
]


@pytest.mark.parametrize(("text", "field", "reason"), BAD_CONFIGS)
def test_every_validation_error_names_its_field(tmp_path, text, field, reason):
    path = _write(tmp_path, text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    error = info.value
    assert (error.field, error.source) == (field, str(path))
    assert reason in error.reason
    assert str(error) == f"{path}: {field}: {error.reason}"


def test_several_errors_are_all_listed_and_the_first_is_the_field(tmp_path):
    path = _write(tmp_path, "port: 0\nlimits: {max_messages: 0}\nbogus: 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    error = info.value
    assert error.field == "port"
    assert error.reason == "Input should be greater than or equal to 1"
    assert str(error).startswith(f"{path}: 3 problems: port: Input should be greater")
    assert "; limits.max_messages: Input should be greater than 0; bogus: unknown field" in str(
        error
    )


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("port: 8000\nlimits:\n\tmax_body_bytes: 1\n", "line 3, column 1", id="tab"),
        pytest.param("port: 8000\nhost: [a, b\nrules: []\n", "line 3, column 6", id="flow"),
        pytest.param("port: 8000\nhost: x\n  port: 1\n", "line 3, column 7", id="indent"),
        pytest.param("port: 8000\nport: 9000\n", "line 2, column 1", id="duplicate-key"),
        pytest.param(
            "limits:\n  max_messages: 1\n  max_messages: 2\n", "line 3, column 3", id="dup-nested"
        ),
    ],
)
def test_bad_yaml_names_the_file_line_and_column(tmp_path, text, where):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert (info.value.field, info.value.source) == ("config", str(path))
    assert info.value.reason.startswith(f"invalid YAML at {where}: ")
    assert str(info.value).startswith(f"{path}: config: invalid YAML at {where}")


def test_duplicate_keys_are_errors_but_merge_keys_may_be_overridden(tmp_path):
    with pytest.raises(ConfigError, match="found duplicate key 'port'"):
        load_settings(_write(tmp_path, "port: 8000\nport: 9000\n"))
    text = "limits: {<<: {max_messages: 5, max_body_bytes: 7}, max_messages: 6}\n"
    limits = load_settings(_write(tmp_path, text)).limits
    assert (limits.max_messages, limits.max_body_bytes) == (6, 7)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        pytest.param("- port: 1\n", "list", id="list"),
        pytest.param("8000\n", "int", id="scalar"),
        pytest.param("just text\n", "str", id="text"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path, text, kind):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert (info.value.field, info.value.reason) == (
        "config",
        f"top level must be a mapping, got {kind}",
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert (info.value.field, info.value.reason) == ("config", f"no such file: {path}")


def test_unreadable_path(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path)
    assert info.value.field == "config"
    assert info.value.reason.startswith(f"cannot read {tmp_path}: ")


def test_overrides_replace_file_values_and_paths_become_strings(tmp_path):
    path = _write(tmp_path, "port: 9000\nhost: 0.0.0.0\nartifact: a\n")
    loaded = load_settings(path, port=9001, artifact=tmp_path / "model")
    assert (loaded.port, loaded.host, loaded.artifact) == (9001, "0.0.0.0", str(tmp_path / "model"))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"bogus": 1}, "bogus", id="unknown"),
        pytest.param({"port": "9000"}, "port", id="wrong-type"),
        pytest.param({"limits": {"max_messages": 0}}, "limits.max_messages", id="nested"),
    ],
)
def test_bad_overrides_are_config_errors(tmp_path, overrides, field):
    path = _write(tmp_path, "port: 9000\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, **overrides)
    assert (info.value.field, info.value.source) == (field, str(path))


def test_settings_are_frozen():
    with pytest.raises(ValueError, match="frozen"):
        load_settings().port = 1


@settings(max_examples=60, deadline=None)
@given(port=st.integers(min_value=-(2**20), max_value=2**20))
def test_port_range(port):
    if 1 <= port <= 65535:
        assert load_settings(port=port).port == port
    else:
        with pytest.raises(ConfigError) as info:
            load_settings(port=port)
        assert info.value.field == "port"


MODELS_CONFIG = """
rules:
  - {name: pin, match: {task_types: [code]}, model: alpha}
  - {name: narrow, match: {task_types: [chat]}, candidates: [alpha, beta]}
experiments:
  - name: e
    variants:
      - {name: c, weight: 1}
      - {name: m, weight: 1, model: beta}
      - {name: k, weight: 1, knob: 1}
"""


def test_check_models_accepts_known_models(tmp_path):
    load_settings(_write(tmp_path, MODELS_CONFIG)).check_models(["alpha", "beta", "gamma"])


@pytest.mark.parametrize(
    ("known", "field", "model"),
    [
        pytest.param(["beta", "gamma"], "rules[0].model", "alpha", id="rule-model"),
        pytest.param(["alpha", "gamma"], "rules[1].candidates[1]", "beta", id="candidate"),
    ],
)
def test_check_models_names_the_field_and_the_known_models(tmp_path, known, field, model):
    settings_ = load_settings(_write(tmp_path, MODELS_CONFIG))
    with pytest.raises(ConfigError) as info:
        settings_.check_models(iter(known))
    assert info.value.field == field
    assert info.value.reason == f"unknown model {model!r}; known: {', '.join(known)}"


def test_check_models_covers_experiment_variants(tmp_path):
    text = MODELS_CONFIG.replace("model: beta}", "model: delta}")
    settings_ = load_settings(_write(tmp_path, text))
    with pytest.raises(ConfigError) as info:
        settings_.check_models(["beta", "alpha"])
    assert info.value.field == "experiments[0].variants[1].model"
    assert info.value.reason == "unknown model 'delta'; known: alpha, beta"


def test_check_models_with_nothing_known(tmp_path):
    with pytest.raises(ConfigError, match=r"known: \(none\)"):
        load_settings(_write(tmp_path, MODELS_CONFIG)).check_models([])


def test_routing_example_loads_and_names_catalog_models():
    loaded = load_settings(ROUTING_EXAMPLE)
    assert len(loaded.rules) == 1 and len(loaded.experiments) == 1 and loaded.upstreams
    catalog = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    loaded.check_models(m["name"] for m in catalog["models"])


def test_breakers_to_settings():
    breakers = pytest.importorskip("serving.breakers")
    config = BreakersConfig(min_calls=3, cooldown_seconds=1.5)
    converted = config.to_settings()
    assert isinstance(converted, breakers.BreakerSettings)
    assert dataclasses.asdict(converted) == config.model_dump()


def test_stats_to_settings_leaves_the_percentile_to_the_router():
    stats = pytest.importorskip("serving.stats")
    converted = StatsConfig(window_size=7, window_seconds=2.5, latency_percentile=90).to_settings()
    assert converted == stats.StatsSettings(window_size=7, window_seconds=2.5)


def test_pending_to_settings():
    pending = pytest.importorskip("serving.pending")
    converted = PendingConfig(max_items=3, max_age_seconds=9.0).to_settings()
    assert converted == pending.PendingSettings(max_items=3, max_age_seconds=9.0)


def test_decision_log_to_settings(tmp_path):
    assert DecisionLogConfig().to_settings() is None
    decision_log = pytest.importorskip("serving.decision_log")
    config = DecisionLogConfig(path=str(tmp_path / "d.jsonl"), backup_count=2, fsync=True)
    converted = config.to_settings()
    assert isinstance(converted, decision_log.DecisionLogSettings)
    assert dataclasses.asdict(converted) == config.model_dump()


_numbers = st.one_of(
    st.sampled_from([0, 0.0, 1, 1.0, 0.5, 2, -1, 1e-9]),
    st.integers(min_value=1, max_value=50),
    st.floats(min_value=0, max_value=400),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(BreakersConfig.model_fields)), _numbers, max_size=3))
def test_every_breakers_config_that_validates_converts(values):
    # Whatever the config accepts must not fail later in the dataclass, without a field name.
    pytest.importorskip("serving.breakers")
    try:
        config = BreakersConfig.model_validate(values)
    except ValueError:
        return
    assert dataclasses.asdict(config.to_settings()) == config.model_dump()
