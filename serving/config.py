"""The service's one validated configuration object, read from YAML once at start-up.

Every section is a strict pydantic model (`extra="forbid"`, no type coercion, finite floats), so
a typo or a quoted number is an error that names its field instead of a silently ignored key.
`load_settings` turns every failure — unreadable file, bad YAML, invalid value — into one
`ConfigError` whose `field` is a dotted path such as ``rules[0].match.prompt_regex``.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import Self

from models.errors import ConfigError
from models.yamlfile import read_yaml_mapping

if TYPE_CHECKING:
    from serving.breakers import BreakerSettings
    from serving.decision_log import DecisionLogSettings
    from serving.pending import PendingSettings
    from serving.stats import StatsSettings

__all__ = [
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

Priority = Literal["quality", "balanced", "cost", "speed"]
LogFormat = Literal["text", "json"]
_NonEmpty = Annotated[str, Field(min_length=1)]
_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"


class _Section(BaseModel):
    # strict: YAML already yields typed values, so "8000" or `true` for a number is a mistake.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _invalid(loc: str | tuple[int | str, ...], message: str, value: Any) -> ValidationError:
    """A validation error located at `loc` inside the model being validated.

    A model validator can only report at the model's own location; raising a ValidationError
    from it lets pydantic prefix that location, so cross-field errors still name one field.
    """
    error = PydanticCustomError("config_value", message)
    where = (loc,) if isinstance(loc, str) else loc
    return ValidationError.from_exception_data(
        "config", [InitErrorDetails(type=error, loc=where, input=value)]
    )


def _check_unique(items: Iterable[Any], field: str, what: str) -> None:
    first: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.name in first:
            message = f"duplicate {what} name {item.name!r} (also {field}[{first[item.name]}])"
            raise _invalid((field, i, "name"), message, item.name)
        first[item.name] = i


class LimitsConfig(_Section):
    """Request size limits, checked before any parsing work is done, and read deadlines.

    A request's head must arrive within `header_timeout_seconds` of the connection opening (or
    of the previous response on it), and its body within `body_timeout_seconds` of the head;
    otherwise 408 and the connection is closed (`serving.read_deadlines`).
    """

    max_body_bytes: int = Field(1_000_000, gt=0)
    max_prompt_chars: int = Field(400_000, gt=0)
    max_messages: int = Field(1_000, gt=0)
    max_metadata_depth: int = Field(8, gt=0, le=64)
    max_metadata_bytes: int = Field(16_384, gt=0)
    header_timeout_seconds: float = Field(10.0, gt=0)
    body_timeout_seconds: float = Field(30.0, gt=0)


class BreakersConfig(_Section):
    """Per-model circuit breakers; mirrors `serving.breakers.BreakerSettings`."""

    window_size: int = Field(20, gt=0)
    window_seconds: float = Field(60.0, gt=0)
    min_calls: int = Field(5, gt=0)
    error_rate_threshold: float = Field(0.5, gt=0, le=1)
    consecutive_failures: int = Field(5, gt=0)
    cooldown_seconds: float = Field(10.0, gt=0)
    cooldown_multiplier: float = Field(2.0, ge=1)
    max_cooldown_seconds: float = Field(300.0, gt=0)
    half_open_max_probes: int = Field(1, gt=0)
    half_open_successes: int = Field(2, gt=0)
    probe_timeout_seconds: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.max_cooldown_seconds < self.cooldown_seconds:
            raise _invalid(
                "max_cooldown_seconds",
                f"must be >= cooldown_seconds ({self.cooldown_seconds})",
                self.max_cooldown_seconds,
            )
        # With fewer slots than min_calls the error-rate rule could never trip.
        if self.min_calls > self.window_size:
            raise _invalid(
                "min_calls", f"must be <= window_size ({self.window_size})", self.min_calls
            )
        return self

    def to_settings(self) -> BreakerSettings:
        """The `BreakerSettings` dataclass the breakers module runs on."""
        from serving.breakers import BreakerSettings

        return BreakerSettings(**self.model_dump())


class StatsConfig(_Section):
    """Rolling per-model outcome statistics (latency feeds the "speed" priority)."""

    window_size: int = Field(200, gt=0)
    window_seconds: float = Field(300.0, gt=0)
    latency_percentile: float = Field(50.0, gt=0, le=100)

    def to_settings(self) -> StatsSettings:
        """The `StatsSettings` dataclass; the percentile is read by the router, not the store."""
        from serving.stats import StatsSettings

        return StatsSettings(window_size=self.window_size, window_seconds=self.window_seconds)


class PendingConfig(_Section):
    """Decisions kept in memory while their feedback may still arrive."""

    max_items: int = Field(100_000, gt=0)
    max_age_seconds: float = Field(3600.0, gt=0)
    max_bytes: int = Field(64 * 2**20, gt=0)

    def to_settings(self) -> PendingSettings:
        """The `PendingSettings` dataclass."""
        from serving.pending import PendingSettings

        return PendingSettings(**self.model_dump())


class DecisionLogConfig(_Section):
    """The rotating JSONL log of routing decisions; `path: null` disables it."""

    path: _NonEmpty | None = None
    max_bytes: int = Field(100 * 2**20, gt=0)
    backup_count: int = Field(5, gt=0, le=1000)
    store_prompt: bool = True
    fsync: bool = False
    per_process: bool = False  # one file per process: <stem>.<host>-<pid><suffix>; forced on
    # by `serve --workers N` with N > 1, so that every file has exactly one writer

    def to_settings(self) -> DecisionLogSettings | None:
        """The `DecisionLogSettings` dataclass, or None when the log is disabled."""
        if self.path is None:
            return None
        from serving.decision_log import DecisionLogSettings

        return DecisionLogSettings(**self.model_dump())


class StateConfig(_Section):
    """Where live state (breakers, statistics, pending decisions, experiment tallies) is kept.

    ``memory``: in this process (the default; one process, no extra service). ``redis``: in the
    Redis at `url`, shared by every worker and replica that names the same `url` and `prefix`.
    Reads on the request path come from a local snapshot refreshed every `refresh_seconds`
    (a breaker opened by one replica is seen by all within `refresh_seconds` plus one round
    trip); a Redis call that takes longer than `timeout_seconds` counts as a fault, and the
    service goes on from local state until Redis answers again (retried every
    `retry_seconds`).
    """

    backend: Literal["memory", "redis"] = "memory"
    url: _NonEmpty | None = None
    prefix: Annotated[str, Field(pattern=_NAME_PATTERN, max_length=64)] = "promptroute"
    timeout_seconds: float = Field(0.1, gt=0, le=10)
    connect_timeout_seconds: float = Field(0.25, gt=0, le=10)
    refresh_seconds: float = Field(0.1, gt=0, le=10)
    retry_seconds: float = Field(1.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme not in ("redis", "rediss", "unix"):
                raise PydanticCustomError(
                    "url",
                    "must be a redis://, rediss:// or unix:// URL, got {value}",
                    {"value": repr(value[:80])},
                )
        return value

    @model_validator(mode="after")
    def _url_for_redis(self) -> Self:
        if self.backend == "redis" and self.url is None:
            raise _invalid("url", "is required with backend: redis", None)
        return self


class PrioritiesConfig(_Section):
    """The cost knob λ each priority maps to; "speed" ranks by latency instead of a knob.

    `balanced: null` means the artifact's own default knob (chosen by cross-validation at training
    time). "speed" takes the models whose utility at the balanced knob is within
    `speed_tolerance` of the best and picks the one with the lowest observed latency.
    """

    quality: float = Field(0.0, ge=0)
    balanced: float | None = Field(None, ge=0)
    cost: float = Field(4.0, ge=0)
    speed_tolerance: float = Field(0.05, ge=0)


def _metadata_value(value: Any) -> str | list[str]:
    # One plain check instead of a union, so a wrong value yields one error, not one per member.
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise PydanticCustomError(
        "metadata_value",
        "must be a string or a non-empty list of strings, got {value}",
        {"value": repr(value)},
    )


_MetadataValue = Annotated[str | list[str], PlainValidator(_metadata_value)]
_Names = Annotated[list[_NonEmpty], Field(min_length=1)]


class RuleMatch(_Section):
    """Conditions of a static rule; all given conditions must hold."""

    task_types: _Names | None = None
    metadata: Annotated[dict[str, _MetadataValue], Field(min_length=1)] | None = None
    min_input_tokens: int | None = Field(None, ge=0)
    max_input_tokens: int | None = Field(None, ge=0)
    prompt_regex: _NonEmpty | None = None

    @field_validator("prompt_regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise PydanticCustomError(
                    "regex", "invalid regular expression: {error}", {"error": str(exc)}
                ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise PydanticCustomError(
                "empty_match",
                "needs at least one condition: " + ", ".join(type(self).model_fields),
            )
        lo, hi = self.min_input_tokens, self.max_input_tokens
        if lo is not None and hi is not None and lo > hi:
            raise _invalid("max_input_tokens", f"must be >= min_input_tokens ({lo})", hi)
        return self


class RuleConfig(_Section):
    """A static rule: when `match` holds, route to `model` or restrict to `candidates`."""

    name: _NonEmpty
    match: RuleMatch
    model: _NonEmpty | None = None
    candidates: _Names | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.model is None) == (self.candidates is None):
            raise _invalid("model", "set exactly one of 'model' or 'candidates'", self.model)
        if self.candidates is not None and len(set(self.candidates)) != len(self.candidates):
            raise _invalid("candidates", "must not repeat a model", self.candidates)
        return self


class VariantConfig(_Section):
    """One arm of an experiment; with none of model/knob/artifact it is the normal router."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    weight: float = Field(gt=0)
    model: _NonEmpty | None = None
    knob: float | None = Field(None, ge=0)
    artifact: _NonEmpty | None = None

    @model_validator(mode="after")
    def _one_treatment(self) -> Self:
        given = [f for f in ("model", "knob", "artifact") if getattr(self, f) is not None]
        if len(given) > 1:
            message = f"set at most one of 'model', 'knob' or 'artifact' (got {', '.join(given)})"
            raise _invalid(given[1], message, getattr(self, given[1]))
        return self


class ExperimentConfig(_Section):
    """A config-defined A/B experiment; the first variant is the control for p-values."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN)]
    task_types: _Names | None = None
    traffic_share: float = Field(1.0, gt=0, le=1)
    variants: list[VariantConfig] = Field(min_length=2)
    enabled: bool = True

    @model_validator(mode="after")
    def _unique_variants(self) -> Self:
        _check_unique(self.variants, "variants", "variant")
        return self


class UpstreamConfig(_Section):
    """Where the gateway sends one catalog model's chat completions (OpenAI wire format).

    `base_url` is the API root, as for the OpenAI client (``https://api.openai.com/v1``);
    ``/chat/completions`` is appended. Deadlines, each ending the attempt as a ``timeout``:

    timeout_seconds        the whole attempt until the reply is in hand: connecting, sending,
                           the full body — for a stream, its first event. An upstream that
                           dribbles one byte at a time cannot stretch it.
    stream_idle_seconds    once a stream has started: the longest wait for its next event
    stream_max_seconds     once a stream has started: its whole length
    """

    base_url: _NonEmpty
    model: _NonEmpty | None = None  # the upstream's name for the model; default: the catalog's
    api_key_env: _NonEmpty | None = None  # the variable holding the bearer token; null: none
    timeout_seconds: float = Field(60.0, gt=0)
    stream_idle_seconds: float = Field(30.0, gt=0)
    stream_max_seconds: float = Field(600.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PydanticCustomError(
                "url", "must be an http:// or https:// URL, got {value}", {"value": repr(value)}
            )
        return value


class ClientKeyConfig(_Section):
    """One client API key: its name (who the caller is) and the variable that holds it."""

    name: Annotated[str, Field(pattern=_NAME_PATTERN, max_length=100)]
    key_env: _NonEmpty


# The answer checks of the gateway's escalation, cheapest first (serving/gateway/escalation.py).
ESCALATION_CHECKS = ("length", "empty", "refusal", "json", "tool_args", "verifier")
_Check = Literal["length", "empty", "refusal", "json", "tool_args", "verifier"]


class EscalationConfig(_Section):
    """Verify and escalate: check the answer, call a stronger model when a check fails.

    `enabled` turns it on for every /v1 request (a request's ``promptroute.escalate`` overrides
    it either way); `threshold` overrides each verifier's trained threshold.
    """

    enabled: bool = False
    checks: list[_Check] = Field(default_factory=lambda: list(ESCALATION_CHECKS), min_length=1)
    threshold: float | None = Field(None, gt=0, lt=1)
    max_escalations: int = Field(1, ge=1, le=3)


class ExplorationConfig(_Section):
    """Route a small random share of decisions to another eligible model, so that the decision
    log learns how the models the router does not pick would have done.

    An explored decision picks uniformly among the other models that passed every filter, have
    a closed circuit and survive the rules; rule pins, experiments and degraded answers are never
    explored. Every decision row then carries the propensity of its model (1 − share for the
    router's own pick, share / k for each of the k alternatives), which off-policy evaluation
    and `promptroute retrain` need. `seed` makes the draws reproducible (tests).

    Catalog models without learned scores are among the alternatives when eligible: that is
    how a model you want to try gathers outcomes until `promptroute retrain` learns it.
    """

    share: float = Field(0.0, ge=0.0, le=0.5)
    seed: int | None = None


class GatewayConfig(_Section):
    """The OpenAI-compatible gateway: how many models one request may try, and waits."""

    max_attempts: int = Field(3, gt=0)
    max_retry_after_seconds: float = Field(5.0, ge=0)
    escalation: EscalationConfig = Field(default_factory=EscalationConfig)


class Settings(_Section):
    """Everything the service reads at start-up; build it with `load_settings`."""

    artifact: _NonEmpty | None = None
    catalog: _NonEmpty | None = None
    # Where POST /admin/reload may load artifacts from (a name or a path inside it); default:
    # the directory holding `artifact`.
    artifacts_dir: _NonEmpty | None = None
    host: _NonEmpty = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=64)
    default_priority: Priority = "balanced"
    degraded_mode: bool = False
    admin_api_key_env: _NonEmpty = "PROMPTROUTE_ADMIN_KEY"
    # Client keys for /route, /feedback, /v1/*: none configured (here or in the variable) = open.
    client_keys: list[ClientKeyConfig] = Field(default_factory=list)
    client_keys_env: _NonEmpty = "PROMPTROUTE_CLIENT_KEYS"
    log_prompts: bool = False
    log_format: LogFormat = "text"
    access_log: bool = False
    gateway_access_log: bool = True
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    breakers: BreakersConfig = Field(default_factory=BreakersConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    pending: PendingConfig = Field(default_factory=PendingConfig)
    decision_log: DecisionLogConfig = Field(default_factory=DecisionLogConfig)
    priorities: PrioritiesConfig = Field(default_factory=PrioritiesConfig)
    rules: list[RuleConfig] = Field(default_factory=list)
    experiments: list[ExperimentConfig] = Field(default_factory=list)
    upstreams: dict[_NonEmpty, UpstreamConfig] = Field(default_factory=dict)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        _check_unique(self.rules, "rules", "rule")
        _check_unique(self.client_keys, "client_keys", "client key")
        _check_unique(self.experiments, "experiments", "experiment")
        return self

    def check_models(self, known: Iterable[str]) -> None:
        """Check that every model a rule, experiment variant or upstream names is in `known`.

        Raises
        ------
        ConfigError
            For the first unknown model, with `field` such as ``rules[0].model`` and the
            known models listed in the message.
        """
        names = set(known)
        for field, model in self._named_models():
            if model not in names:
                shown = ", ".join(sorted(names)) or "(none)"
                raise ConfigError(field, f"unknown model {model!r}; known: {shown}")

    def _named_models(self) -> Iterable[tuple[str, str]]:
        for i, rule in enumerate(self.rules):
            if rule.model is not None:
                yield f"rules[{i}].model", rule.model
            for j, candidate in enumerate(rule.candidates or ()):
                yield f"rules[{i}].candidates[{j}]", candidate
        for i, experiment in enumerate(self.experiments):
            for j, variant in enumerate(experiment.variants):
                if variant.model is not None:
                    yield f"experiments[{i}].variants[{j}].model", variant.model
        for name in self.upstreams:
            yield f"upstreams.{name}", name


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read, merge and validate the service configuration.

    Parameters
    ----------
    path
        A YAML file; None means all defaults.
    **overrides
        Top-level keys that replace the file's (e.g. ``port=9000`` from the command line).
        Path-like values are converted to strings.

    Raises
    ------
    ConfigError
        With `field` naming the first problem (``config`` for file and YAML problems) and the
        message listing every problem pydantic found.

    >>> load_settings(port=9000).port
    9000
    """
    source = str(path) if path is not None else None
    raw = read_yaml_mapping(Path(path), "config") if path is not None else {}
    raw.update({k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in overrides.items()})
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, source) from None


def _render_loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for an invalid mapping key; _reason says so
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "config"


def _fields_at(loc: tuple[int | str, ...]) -> list[str]:
    """Field names allowed in the model at `loc` (the parent of an unexpected key)."""
    model: type[BaseModel] = Settings
    mapping_key = False  # the part after a dict-typed field is one of its keys, like an index
    for part in loc:
        if isinstance(part, int) or mapping_key:
            mapping_key = False
            continue
        info = model.model_fields.get(part)
        inner = _model_in(info.annotation) if info is not None else None
        if inner is None:
            return []
        model = inner
        mapping_key = get_origin(info.annotation) is dict
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _reason(error: Any) -> str:
    if error["loc"] and error["loc"][-1] == "[key]":
        return f"invalid key {error['input']!r}: {error['msg']}"
    if error["type"] == "extra_forbidden":
        allowed = _fields_at(tuple(error["loc"][:-1]))
        if allowed:
            return f"unknown field (expected one of: {', '.join(allowed)})"
    return str(error["msg"])


def _config_error(exc: ValidationError, source: str | None) -> ConfigError:
    problems = [(_render_loc(tuple(e["loc"])), _reason(e)) for e in exc.errors()]
    field, reason = problems[0]
    error = ConfigError(field, reason, source=source)
    if len(problems) > 1:
        # `reason` stays the first problem; the message lists all of them.
        listed = "; ".join(f"{f}: {r}" for f, r in problems)
        where = f"{source}: " if source else ""
        error.args = (f"{where}{len(problems)} problems: {listed}",)
    return error
