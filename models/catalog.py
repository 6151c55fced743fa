"""The LLM catalog: prices, expected latency, context window and capabilities per model.

One YAML file (`models/catalog.yaml` by default) is read and validated once; everything that
needs a price or a context window — label derivation, cost estimates, the service's filters —
asks the resulting `Catalog`. Validation errors name the model and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from models.errors import ConfigError, UnknownModelError
from models.paths import catalog_path
from models.yamlfile import read_yaml_mapping

__all__ = [
    "CHARS_PER_TOKEN",
    "Catalog",
    "ModelSpec",
    "estimate_tokens",
    "load_catalog",
]

# The data sources estimate tokens as ceil(chars / 4); using the same rule keeps estimated
# costs comparable with the recorded ones.
CHARS_PER_TOKEN = 4

Capability = Literal["vision", "tools", "json"]


def estimate_tokens(chars: int) -> int:
    """Tokens for `chars` characters of text: ceil(chars / 4), the rule the bundled data uses."""
    return -(-chars // CHARS_PER_TOKEN)


class ModelSpec(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    provider: str = ""
    input_price_per_1m: float = Field(ge=0)
    output_price_per_1m: float = Field(ge=0)
    latency_ms: float = Field(gt=0)
    context_window: int = Field(gt=0)
    capabilities: tuple[Capability, ...] = ()

    @field_validator("input_price_per_1m", "output_price_per_1m", "latency_ms")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def cost_usd(self, input_tokens: float, output_tokens: float) -> float:
        return (
            input_tokens * self.input_price_per_1m + output_tokens * self.output_price_per_1m
        ) / 1e6


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    typical_output_tokens: int = Field(default=300, gt=0)
    models: list[ModelSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Catalog:
    """The validated catalog, with lookups and price vectors built once."""

    models: tuple[ModelSpec, ...]
    typical_output_tokens: int = 300
    source: str | None = field(default=None, compare=False)  # the file it was read from

    def __post_init__(self) -> None:
        by_name: dict[str, ModelSpec] = {}
        for spec in self.models:
            if spec.name in by_name:
                raise ConfigError(f"models[{spec.name}].name", "duplicate model name")
            by_name[spec.name] = spec
        object.__setattr__(self, "_by_name", by_name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> ModelSpec:
        try:
            return self._by_name[name]  # type: ignore[attr-defined]
        except KeyError:
            raise UnknownModelError(name, self.names) from None

    def get(self, name: str) -> ModelSpec | None:
        return self._by_name.get(name)  # type: ignore[attr-defined]

    def require(self, names: Iterable[str], *, field: str = "model") -> None:
        """Raise UnknownModelError for the first name the catalog does not have."""
        for name in names:
            if name not in self:
                raise UnknownModelError(name, self.names, field=field)

    def missing_message(self, names: Iterable[str], *, where: str = "the logs") -> str:
        """ "N model(s) in `where` are not in the catalog FILE: 'a', 'b'; add them ..." — every
        unknown name at once, and the file to edit."""
        missing = sorted({n for n in names if n not in self})
        file = self.source or "the catalog"
        return (
            f"{len(missing)} model(s) in {where} are not in the catalog {file}: "
            f"{', '.join(repr(m) for m in missing)}; add them to {file} with their prices "
            "(or pass --catalog FILE)"
        )

    def prices(self, order: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Input and output prices in USD per token, as arrays in `order`."""
        specs = [self[m] for m in order]
        inp = np.array([s.input_price_per_1m for s in specs], dtype=np.float64) / 1e6
        out = np.array([s.output_price_per_1m for s in specs], dtype=np.float64) / 1e6
        return inp, out

    def to_dict(self, *, only: Iterable[str] | None = None) -> dict[str, Any]:
        """A plain snapshot (stored in artifact manifests); `only` keeps just those models (in
        catalog order), e.g. the ones an artifact knows."""
        keep = set(self.names if only is None else only)
        return {
            "version": 1,
            "typical_output_tokens": self.typical_output_tokens,
            "models": [m.model_dump(mode="json") for m in self.models if m.name in keep],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> Catalog:
        try:
            parsed = _CatalogFile.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, data, source) from None
        try:
            return cls(
                models=tuple(parsed.models),
                typical_output_tokens=parsed.typical_output_tokens,
                source=source,
            )
        except ConfigError as exc:
            raise ConfigError(exc.field, exc.reason, source=source) from None


def _config_error(exc: ValidationError, data: Any, source: str | None) -> ConfigError:
    """Turn pydantic's first error into a ConfigError whose field names the model."""
    err = exc.errors()[0]
    loc = list(err["loc"])
    field = ".".join(str(p) for p in loc)
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        name = None
        models = data.get("models") if isinstance(data, Mapping) else None
        if (
            isinstance(models, list)
            and loc[1] < len(models)
            and isinstance(models[loc[1]], Mapping)
        ):
            name = models[loc[1]].get("name")
        label = name if isinstance(name, str) and name else str(loc[1])
        field = f"models[{label}]" + "".join(f".{p}" for p in loc[2:])
    reason = err["msg"]
    if len(exc.errors()) > 1:
        reason += f" (and {len(exc.errors()) - 1} more error(s))"
    return ConfigError(field, reason, source=source)


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog YAML file (the bundled one when `path` is None)."""
    p = Path(path) if path is not None else catalog_path()
    data = read_yaml_mapping(p, "catalog")
    return Catalog.from_dict(data, source=str(p))
