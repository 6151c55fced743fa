"""Client API keys: who may call ``/route``, ``/feedback`` and ``/v1/*``.

Optional, like LiteLLM's virtual keys. With none configured the service is open (for a trusted
network); with any, each of those requests must carry one, in ``X-API-Key`` or
``Authorization: Bearer``, or it is refused with 401 before its body is read. A key has a name
— the `Caller` — which the routing decision carries, so that feedback on it is accepted only
from the same caller.

Keys come from the environment only, never the config file (which is meant to be committed):

    client_keys:                       # in the config: a name per environment variable
      - {name: team-a, key_env: TEAM_A_KEY}
    PROMPTROUTE_CLIENT_KEYS="team-b=…,team-c=…"   # or all in one variable (`client_keys_env`)

Presented keys are hashed and compared with every configured key's hash in constant time (no
early exit, no length leak); neither a key nor its hash is ever logged or repr'd. The admin key
is separate: it does not open these endpoints, and a client key may not equal it.

`ClientKeys.authenticate(headers)` is a plain function of the request headers, so a FastAPI
dependency and a bare ASGI handler call it alike; `ClientAuth` is the ASGI middleware that calls
it for the guarded paths and leaves the `Caller` in ``scope["state"]["caller"]``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import ConfigError
from serving.errors import ApiError

__all__ = [
    "MIN_KEY_CHARS",
    "Caller",
    "ClientAuth",
    "ClientKeys",
    "Headers",
    "caller_of",
    "guarded",
    "presented_key",
    "unauthorized",
]

MIN_KEY_CHARS = 16  # shorter keys are guessable; refused at start-up

# Starlette's `Headers` (a case-insensitive mapping) or the ASGI scope's raw header pairs.
Headers = Mapping[str, str] | Iterable[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: the name of the client key it presented."""

    name: str


def presented_key(headers: Headers) -> str | None:
    """The key in ``X-API-Key``, else in ``Authorization: Bearer``; None when neither."""
    key = _header(headers, "x-api-key")
    if key:
        return key.strip()
    scheme, _, token = (_header(headers, "authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _header(headers: Headers, name: str) -> str | None:
    if isinstance(headers, Mapping):
        return headers.get(name)
    raw = name.encode("latin-1")
    for key, value in headers:
        if key.lower() == raw:
            return value.decode("latin-1")
    return None


def unauthorized() -> ApiError:
    """The 401 for a missing or wrong client key (the same for both: no hint which)."""
    return ApiError(
        401,
        "unauthorized",
        "a valid client API key is required (header X-API-Key or Authorization: Bearer)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


class ClientKeys:
    """The configured client keys, held as hashes; `authenticate` checks a request's.

    >>> keys = ClientKeys({"team-a": "a-key-of-sixteen-chars"})
    >>> keys.authenticate({"x-api-key": "a-key-of-sixteen-chars"})
    Caller(name='team-a')
    >>> ClientKeys({}).authenticate({}) is None  # no keys configured: open
    True
    """

    def __init__(self, keys: Mapping[str, str]) -> None:
        # Stripped like a presented key is: a newline at the end of a secret file is no part of it.
        self._digests = tuple((name, _digest(key.strip())) for name, key in keys.items())

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._digests]

    def __repr__(self) -> str:  # names only: a key must not reach a log through a repr
        return f"ClientKeys(names={self.names!r})"

    def authenticate(self, headers: Headers) -> Caller | None:
        """The caller whose key `headers` carry; None when no keys are configured.

        Raises
        ------
        ApiError
            401 ``unauthorized`` when keys are configured and none, or a wrong one, was sent.
        """
        if not self._digests:
            return None
        presented = presented_key(headers)
        if presented is None:
            raise unauthorized()
        digest = _digest(presented)
        found: str | None = None
        for name, expected in self._digests:  # every key, every time: no early exit
            if hmac.compare_digest(digest, expected):
                found = name
        if found is None:
            raise unauthorized()
        return Caller(found)

    @classmethod
    def from_config(
        cls,
        entries: Iterable[tuple[str, str]],
        list_env: str,
        environ: Mapping[str, str],
        *,
        admin_key: str | None = None,
    ) -> ClientKeys:
        """Read the keys: `entries` are (name, environment variable) pairs from the config,
        and `list_env` names a variable holding ``name=key,name=key``.

        Raises
        ------
        ConfigError
            A variable unset, a key shorter than MIN_KEY_CHARS, a name or key given twice, a
            key equal to the admin key, or an unreadable list (the field says which).
        """
        keys: dict[str, str] = {}
        where: dict[str, str] = {}

        def add(name: str, key: str, field: str) -> None:
            if name in keys:
                raise ConfigError(field, f"client key name {name!r} is given twice")
            if len(key) < MIN_KEY_CHARS:
                raise ConfigError(field, f"the key for {name!r} is shorter than {MIN_KEY_CHARS}")
            if admin_key is not None and hmac.compare_digest(_digest(key), _digest(admin_key)):
                raise ConfigError(field, f"the key for {name!r} is the admin key; use another")
            for other, existing in keys.items():
                if hmac.compare_digest(_digest(key), _digest(existing)):
                    raise ConfigError(field, f"{name!r} has the same key as {other!r}")
            keys[name] = key
            where[name] = field

        for i, (name, variable) in enumerate(entries):
            key = environ.get(variable)
            if not key:
                raise ConfigError(
                    f"client_keys[{i}].key_env", f"environment variable {variable} is not set"
                )
            add(name, key, f"client_keys[{i}].key_env")
        for name, key in _parse_list(environ.get(list_env, ""), list_env):
            add(name, key, list_env)
        return cls(keys)


def _parse_list(value: str, variable: str) -> list[tuple[str, str]]:
    out = []
    for i, item in enumerate(part.strip() for part in value.split(",")):
        if not item:
            continue
        name, eq, key = item.partition("=")
        if not eq or not name.strip() or not key.strip():
            # Never quote the item: it holds a key.
            raise ConfigError(variable, f"entry {i + 1} is not name=key")
        out.append((name.strip(), key.strip()))
    return out


def caller_of(scope: Mapping[str, Any]) -> Caller | None:
    """The caller `ClientAuth` authenticated for this request (None: no keys configured, or
    not a guarded path). A handler that bypasses FastAPI's dependencies reads it here."""
    state = scope.get("state") or {}
    return state.get("caller")


def guarded(path: str) -> bool:
    """Whether `path` needs a client key (when keys are configured)."""
    return path in ("/route", "/feedback") or path.startswith("/v1/") or path == "/v1"


class ClientAuth:
    """ASGI middleware: authenticate guarded paths before anything reads the body.

    `keys` returns the running service's `ClientKeys` (None before start-up: the routes answer
    503 then). A refusal is a 401 JSON body — OpenAI's error shape under ``/v1``.
    """

    def __init__(self, app: Callable, keys: Callable[[], ClientKeys | None]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        keys = self.keys()
        if keys is not None and keys.enabled:
            try:
                caller = keys.authenticate(scope["headers"])
            except ApiError as exc:
                await _refuse(scope, send, exc)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)


async def _refuse(scope: dict, send: Callable, exc: ApiError) -> None:
    if scope["path"].startswith("/v1"):
        error = {"message": exc.message, "type": "authentication_error", "param": None}
        body = {"error": {**error, "code": exc.code}}
    else:
        body = {"error": {"code": exc.code, "message": exc.message}}
    payload = json.dumps(body).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
        (b"www-authenticate", b"Bearer"),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
