"""Request bodies as JSON: decoded exactly as FastAPI decodes them, with repeated keys refused.

`{"max_cost_usd": -1, "max_cost_usd": 1}` is valid JSON to Python's parser (the last value wins)
but ambiguous: another parser, a proxy or a log reader may take the first. The service refuses it
with 400 ``duplicate_key`` naming the key, on every endpoint that reads a JSON body.

The check costs one Python call per JSON object in the body (`object_pairs_hook`), nothing per
character: the same C scanner as ``json.loads`` reads the text, so everything else it accepts or
refuses, and the exceptions it raises, stay exactly those of ``json.loads``. Locating the repeated
key (its path, for the error's ``field``) takes a second parse, on the error path only.
"""

from __future__ import annotations

import email.message
import functools
import json
from typing import Any

__all__ = ["MISSING", "DuplicateKeyError", "declares_json", "decode_body", "loads"]

MISSING: Any = object()
"""`decode_body` of an empty body: FastAPI validates nothing, and reports the body as missing."""

_MAX_SHOWN = 64  # longest key an error message quotes in full (error bodies never echo much)


class DuplicateKeyError(ValueError):
    """A JSON object in the body has the same key twice; `field` is its path, ``metadata.team``."""

    def __init__(self, field: str) -> None:
        super().__init__(f"{field}: the key appears more than once in the same JSON object")
        self.field = field
        self.message = str(self)


class _Repeated(Exception):
    """Raised inside the parser's hook; `loads` turns it into a `DuplicateKeyError`."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Repeated
    return d


_DECODER = json.JSONDecoder(object_pairs_hook=_unique)


def loads(body: bytes) -> Any:
    """``json.loads(body)``, except that a repeated key in an object raises `DuplicateKeyError`.

    Raises
    ------
    json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError
        exactly as ``json.loads(body)`` does
    DuplicateKeyError
        when the text parses but an object has a key twice
    """
    # json.loads(bytes) is this decode followed by the default decoder; spelt out so that the
    # hook's decoder is built once, not on every call. A body opening with "{" and no NUL byte
    # after it is UTF-8 to json.detect_encoding: no need to ask it.
    utf8 = body[:1] == b"{" and body[1:2] != b"\x00"
    text = body.decode("utf-8" if utf8 else json.detect_encoding(body), "surrogatepass")
    try:
        return _DECODER.decode(text)
    except _Repeated:
        raise DuplicateKeyError(_locate(text)) from None


class _Pairs(list):  # type: ignore[type-arg]
    """An object's (key, value) pairs, as parsed, repeats kept."""


def _locate(text: str) -> str:
    """The path of the first repeated key in `text` (which is known to parse)."""
    root = json.loads(text, object_pairs_hook=_Pairs)
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Pairs):
            seen: set[str] = set()
            for key, _ in value:
                if key in seen:
                    return _join(path, key)
                seen.add(key)
            stack.extend((v, _join(path, k)) for k, v in reversed(value))
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in reversed(list(enumerate(value))))
    raise AssertionError("_locate: no repeated key")  # only called after the hook found one


def _join(path: str, key: str) -> str:
    # The caller's own key goes into the error body: shown only short and printable.
    shown = key if len(key) <= _MAX_SHOWN else key[: _MAX_SHOWN - 1] + "…"
    if not shown.isprintable() or not shown:
        shown = ascii(shown)
    return f"{path}.{shown}" if path else shown


@functools.lru_cache(maxsize=64)
def declares_json(content_type: str) -> bool:
    """Whether FastAPI reads a body with this Content-Type as JSON (``application/*json``)."""
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def decode_body(body: bytes, content_type: str | None) -> Any:
    """What FastAPI hands to a JSON body's validation, for the same bytes and Content-Type.

    `MISSING` for an empty body; the bytes themselves when the Content-Type is absent (FastAPI's
    strict content type) or not JSON, which validation then refuses; else the parsed JSON.

    Raises
    ------
    as `loads`
    """
    if not body:
        return MISSING
    if content_type is None or not declares_json(content_type):
        return body
    return loads(body)
