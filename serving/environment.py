"""PROMPTROUTE_* environment variables for the settings people set per deployment.

    PROMPTROUTE_CONFIG       the YAML config file            (--config)
    PROMPTROUTE_ARTIFACT     the artifact folder to serve    (--model; the config's `artifact`)
    PROMPTROUTE_CATALOG      a catalog YAML                  (the config's `catalog`)
    PROMPTROUTE_HOST, PROMPTROUTE_PORT, PROMPTROUTE_WORKERS
    PROMPTROUTE_LOG_FORMAT   text | json
    PROMPTROUTE_ACCESS_LOG   true | false (uvicorn's line for every HTTP request)
    PROMPTROUTE_ADMIN_KEY    the admin API key (read by name: the config's `admin_api_key_env`)

Precedence: command-line flags, then these variables, then the config file, then defaults.
Upstream API keys are read from the variables each upstream names (`api_key_env`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.errors import ConfigError
from serving.config import LogFormat

__all__ = ["EnvSettings", "read_environment"]


class EnvSettings(BaseSettings):
    """The variables above; unset ones are None and leave the config file's value alone."""

    model_config = SettingsConfigDict(env_prefix="PROMPTROUTE_", extra="ignore")

    config: str | None = Field(None, min_length=1)
    artifact: str | None = Field(None, min_length=1)
    catalog: str | None = Field(None, min_length=1)
    host: str | None = Field(None, min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    workers: int | None = Field(None, ge=1, le=64)
    log_format: LogFormat | None = None
    access_log: bool | None = None

    def overrides(self) -> dict[str, Any]:
        """The set variables as top-level config keys (everything but `config`)."""
        return {
            key: value
            for key, value in self.model_dump(exclude={"config"}).items()
            if value is not None
        }


def read_environment() -> EnvSettings:
    """Read PROMPTROUTE_* from the process environment; ConfigError naming the variable."""
    try:
        return EnvSettings()
    except ValidationError as exc:
        error = exc.errors()[0]
        name = "PROMPTROUTE_" + str(error["loc"][0]).upper() if error["loc"] else "PROMPTROUTE_*"
        raise ConfigError(name, f"{error['msg']} (got {error.get('input')!r})") from None
