"""The learning loop's config file: upstreams to call, how to label, when to retrain.

One YAML file, validated once (unknown keys are errors, each message names its field)::

    upstreams:                 # the service config's schema (serving/config.py UpstreamConfig)
      gpt-4-1106-preview: {base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
    label:
      models: [gpt-4-1106-preview, mistral-7b-chat]
      concurrency: 4           # calls in flight at once
      budget_usd: 5.0          # stop starting new prompts before spending more than this
      retries: 2               # per call, on 429 / 5xx / timeouts / connection errors
      max_tokens: 512
      grader:                  # one of:
        kind: judge            #   a judge model through an upstream
        model: gpt-4-1106-preview
        template: "... {prompt} ... {answers} ... {labels} ... {scale} ..."
        scale: 10
      # kind: reference, match: exact | regex | numeric, field: reference, tolerance: 1e-6
      # kind: callable, target: "package.module:function"   (prompt, answer, row) -> 0..1
    retrain:
      holdout_share: 0.2
      margin: 0.005
      min_outcomes: 30         # outcomes a new model needs before the loop routes to it
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from models.errors import ConfigError
from models.yamlfile import read_yaml_mapping
from training.loop import LoopOptions

__all__ = [
    "CallableGraderConfig",
    "DEFAULT_JUDGE_TEMPLATE",
    "JudgeGraderConfig",
    "LabelConfig",
    "LoopConfig",
    "ReferenceGraderConfig",
    "RetrainConfig",
    "load_loop_config",
]

DEFAULT_JUDGE_TEMPLATE = (
    "You are grading answers to a user's request. Rate each answer from 0 to {scale} for "
    "correctness and helpfulness.\n\n[Request]\n{prompt}\n\n[Answers]\n{answers}\n\n"
    "Reply with exactly one line per answer, in the form '<label>: <score>', for the labels "
    "{labels}, and nothing else."
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JudgeGraderConfig(_Section):
    kind: Literal["judge"]
    model: str = Field(min_length=1)
    template: str = DEFAULT_JUDGE_TEMPLATE
    scale: float = Field(10.0, gt=0)

    @field_validator("template")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        for name in ("{prompt}", "{answers}"):
            if name not in value:
                raise ValueError(f"must contain the placeholder {name}")
        try:
            value.format(prompt="", answers="", labels="", scale="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"only {{prompt}}, {{answers}}, {{labels}} and {{scale}} may be used ({e})"
            ) from None
        return value


class ReferenceGraderConfig(_Section):
    kind: Literal["reference"]
    match: Literal["exact", "regex", "numeric"]
    field: str = Field("reference", min_length=1)  # the input row's key holding the reference
    tolerance: float = Field(1e-6, ge=0)  # numeric: |answer − reference| allowed
    case_sensitive: bool = False  # exact


class CallableGraderConfig(_Section):
    kind: Literal["callable"]
    target: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


GraderConfig = Annotated[
    JudgeGraderConfig | ReferenceGraderConfig | CallableGraderConfig, Field(discriminator="kind")
]


class LabelConfig(_Section):
    models: list[str] = Field(min_length=1)
    grader: GraderConfig
    concurrency: int = Field(4, ge=1, le=256)
    budget_usd: float = Field(gt=0)
    retries: int = Field(2, ge=0, le=10)
    max_tokens: int = Field(512, ge=1)
    backoff_seconds: float = Field(0.5, ge=0)


class RetrainConfig(_Section):
    holdout_share: float = LoopOptions.holdout_share
    margin: float = LoopOptions.margin
    min_outcomes: int = LoopOptions.min_outcomes

    def to_options(self, **overrides: Any) -> LoopOptions:
        """`LoopOptions` from this section, with the command line's non-None values on top."""
        values = self.model_dump()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return LoopOptions(**values)


class LoopConfig(_Section):
    upstreams: dict[str, dict[str, Any]] = Field(default_factory=dict)
    label: LabelConfig | None = None
    retrain: RetrainConfig = RetrainConfig()


def load_loop_config(path: str | Path | None) -> LoopConfig:
    """Read and validate the loop config; None gives the defaults (no upstreams, no label).

    Raises ConfigError naming the first bad field (``label.grader.match`` ...).
    """
    if path is None:
        return LoopConfig()
    raw = read_yaml_mapping(Path(path), "config")
    try:
        return LoopConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        # A discriminated union puts the kind in the location: label.grader.judge.model.
        raise ConfigError(where or "config", err["msg"], source=str(path)) from None
