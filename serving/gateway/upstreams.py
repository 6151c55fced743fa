"""Where each catalog model's chat completions go, and the one pooled HTTP client that calls them.

`resolve_upstreams` turns the config's `upstreams` section into ready-to-call `Upstream`s, reading
each API key from its environment variable once, at start-up (a missing variable is a
`ConfigError` naming the field, so the service never starts with an upstream it cannot call).
`Upstreams` pairs that table with one `httpx.AsyncClient`: connections to a provider are pooled
and reused across requests; the app's lifespan opens it and closes it on shutdown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from models.errors import ConfigError
from serving.config import Settings, UpstreamConfig

__all__ = ["Upstream", "Upstreams", "resolve_upstreams"]

_PATH = "/chat/completions"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One catalog model's OpenAI-compatible endpoint, resolved and ready to call.

    `base_url` identifies the provider account: calls to the same one share its rate limits.
    `timeout` bounds each connect and read; `deadline` the whole attempt until the reply (a
    stream's first event); `stream_idle` and `stream_max` a started stream (see
    `serving.config.UpstreamConfig`). `secret` is the API key, for redacting echoes of it.
    """

    model: str
    upstream_model: str
    base_url: str
    url: str
    headers: Mapping[str, str]
    timeout: httpx.Timeout
    deadline: float
    stream_idle: float
    stream_max: float
    secret: str | None = None

    def __repr__(self) -> str:  # the headers hold the API key: never print them
        return f"Upstream(model={self.model!r}, upstream_model={self.upstream_model!r}, url={self.url!r})"


def resolve_upstreams(settings: Settings, environ: Mapping[str, str]) -> dict[str, Upstream]:
    """The configured upstreams by catalog model name.

    Raises
    ------
    ConfigError
        ``upstreams.<model>.api_key_env`` when the named environment variable is unset or empty.

    >>> from serving.config import load_settings
    >>> s = load_settings(upstreams={"gpt-4": {"base_url": "http://127.0.0.1:9/v1/"}})
    >>> resolve_upstreams(s, {})["gpt-4"].url
    'http://127.0.0.1:9/v1/chat/completions'
    """
    return {name: _resolve(name, config, environ) for name, config in settings.upstreams.items()}


def _resolve(name: str, config: UpstreamConfig, environ: Mapping[str, str]) -> Upstream:
    headers: dict[str, str] = {}
    key: str | None = None
    if config.api_key_env is not None:
        key = environ.get(config.api_key_env)
        if not key:
            raise ConfigError(
                f"upstreams.{name}.api_key_env",
                f"environment variable {config.api_key_env} is not set",
            )
        headers["authorization"] = f"Bearer {key}"
    base = config.base_url.rstrip("/")
    return Upstream(
        model=name,
        upstream_model=config.model or name,
        base_url=base,
        url=base + _PATH,
        headers=headers,
        timeout=httpx.Timeout(config.timeout_seconds),
        deadline=config.timeout_seconds,
        stream_idle=config.stream_idle_seconds,
        stream_max=config.stream_max_seconds,
        secret=key,
    )


class Upstreams:
    """The resolved upstreams and the pooled client that calls them; `aclose()` on shutdown."""

    def __init__(self, table: Mapping[str, Upstream], client: httpx.AsyncClient) -> None:
        self.table = dict(table)
        self.client = client
        # Every configured API key, longest first (so that no key's prefix is redacted alone).
        keys = {u.secret for u in self.table.values() if u.secret}
        self.secrets = tuple(sorted(keys, key=len, reverse=True))

    @classmethod
    def open(
        cls,
        settings: Settings,
        environ: Mapping[str, str],
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> Upstreams:
        """Resolve the config (ConfigError on a missing key) and open the client.

        `transport` replaces the network (``httpx.MockTransport`` in tests).
        """
        table = resolve_upstreams(settings, environ)
        # No client-wide timeout: each request carries its upstream's. Redirects are not
        # followed: a POST that an API redirects is a misconfigured base_url, not a detour.
        client = httpx.AsyncClient(transport=transport, timeout=None, follow_redirects=False)
        return cls(table, client)

    def get(self, model: str) -> Upstream | None:
        return self.table.get(model)

    def __contains__(self, model: object) -> bool:
        return model in self.table

    async def aclose(self) -> None:
        await self.client.aclose()
