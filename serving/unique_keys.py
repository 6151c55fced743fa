"""A JSON body whose object repeats a key is ambiguous: 400 naming the key, before any handler.

``{"max_cost_usd": -1, "max_cost_usd": 1}`` parses (the last one wins) in Python, in pydantic
and in most servers, so a check done by one layer on the first value and a use by another of
the last could disagree. `UniqueKeys` reads the body of the JSON endpoints it guards, refuses one
with a repeated key, and hands the same bytes on otherwise. A body that is not JSON at all is
left to the endpoint's own 400.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from serving.redact import quote

__all__ = ["UniqueKeys", "first_duplicate_key"]


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def first_duplicate_key(body: bytes) -> str | None:
    """The first key found repeated inside one object of `body`; None if none (or not JSON).

    >>> first_duplicate_key(b'{"a": 1, "b": {"c": 1, "c": 2}}')
    'c'
    >>> first_duplicate_key(b'{"a": 1}') is None
    True
    """
    try:
        json.loads(body, object_pairs_hook=_pairs)
    except _Duplicate as exc:
        return exc.key
    except (ValueError, RecursionError):
        return None
    return None


class UniqueKeys:
    """ASGI middleware: refuse a JSON body with a repeated key on the paths `guarded` accepts."""

    def __init__(self, app: Callable, guarded: Callable[[str], bool]) -> None:
        self.app = app
        self.guarded = guarded

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        if not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        key = first_duplicate_key(body) if body else None
        if key is not None:
            await _refuse(scope, send, key)
            return
        replayed = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([replayed], receive), send)


def _replay(messages: list[dict], receive: Callable) -> Callable:
    async def replay() -> dict:
        if messages:
            return messages.pop(0)
        return await receive()

    return replay


async def _refuse(scope: dict, send: Callable, key: str) -> None:
    message = f"{quote(key)}: the key appears more than once in one object; send it once"
    if scope["path"].startswith("/v1"):
        error = {"message": message, "type": "invalid_request_error", "param": key}
        body = {"error": {**error, "code": "duplicate_key"}}
    else:
        body = {"error": {"code": "duplicate_key", "message": message, "field": key}}
    payload = json.dumps(body).encode("utf-8")
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode("ascii")),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
