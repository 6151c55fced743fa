"""Text safe to show a caller: credentials redacted, caller values quoted short and escaped.

    redact(text, known)   every known secret, and anything shaped like a credential
                          (``sk-…`` keys, bearer tokens, ``"api_key": "…"`` pairs, AWS, GitHub,
                          Google, Slack tokens, JWTs), replaced by ``[redacted]``
    quote(value)          a caller's value for an error message: at most `limit` characters,
                          escaped like a Python literal, ``…`` when cut

Upstream error bodies pass through `redact` before the gateway relays them: a provider that
echoes the request's Authorization header (or a misconfigured proxy that prints its own key)
must not hand a credential to the caller.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["REDACTED", "quote", "redact", "redact_bytes", "redact_json"]

REDACTED = "[redacted]"

_PATTERNS = re.compile(
    "|".join(
        [
            r"\bsk-[A-Za-z0-9_\-]{8,}",  # OpenAI, Anthropic (sk-ant-…), many OpenAI-compatible APIs
            r"\b(?i:bearer)\s+[A-Za-z0-9_\-.~+/=]{8,}",
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
            r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub tokens
            r"\bAIza[0-9A-Za-z_\-]{30,}",  # Google API keys
            r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack tokens
            r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",  # JWTs
        ]
    )
)
# A value named like a secret: "api_key": "…", x-api-key=…, password: …, "access_token": "…"
# (the name must end in the word: "max_tokens": 4096 is not one).
_NAMED = re.compile(
    r"""(?ix)
    (?P<name>["']?[a-z0-9_\-]*(?:api[_\-]?key|secret|token|password|passwd|authorization)
        ["']?\s*[:=]\s*)
    (?P<quote>["']?)
    (?!\d+\b)
    (?P<value>[^"'\s,;}{]{4,})
    """
)


def redact(text: str, known: Iterable[str] = ()) -> str:
    """`text` with every `known` secret and anything shaped like a credential replaced.

    >>> redact('{"error": "bad key sk-abcdefghijkl1234"}')
    '{"error": "bad key [redacted]"}'
    >>> redact('{"api_key": "hunter2hunter2"}')
    '{"api_key": "[redacted]"}'
    >>> redact("the key was s3cr3t-value", known=["s3cr3t-value"])
    'the key was [redacted]'
    """
    for secret in known:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS.sub(REDACTED, text)
    return _NAMED.sub(_keep_name, text)


def _keep_name(match: re.Match[str]) -> str:
    return f"{match.group('name')}{match.group('quote')}{REDACTED}"


def redact_bytes(body: bytes, known: Iterable[str] = ()) -> bytes:
    """`redact` for a relayed body (undecodable bytes become U+FFFD: the body is text anyway)."""
    return redact(body.decode("utf-8", errors="replace"), known).encode("utf-8")


def redact_json(value: Any, known: Iterable[str] = ()) -> Any:
    """`value` (parsed JSON) with `redact` applied to every string in it, keys included.

    >>> redact_json({"error": {"message": "key sk-abcdefghijkl1234 revoked", "code": 401}})
    {'error': {'message': 'key [redacted] revoked', 'code': 401}}
    """
    known = tuple(known)
    if isinstance(value, str):
        return redact(value, known)
    if isinstance(value, list):
        return [redact_json(item, known) for item in value]
    if isinstance(value, dict):
        return {redact(k, known): redact_json(v, known) for k, v in value.items()}
    return value


def quote(value: object, limit: int = 40) -> str:
    """A caller's value, safe in an error message: short, escaped, marked when cut.

    >>> quote("gpt-4")
    "'gpt-4'"
    >>> quote("x" * 100, limit=5)
    "'xxxxx'… (100 characters)"
    >>> quote("a\\u202eb\\n")
    "'a\\\\u202eb\\\\n'"
    """
    text = value if isinstance(value, str) else str(value)
    shown = repr(text[:limit])
    if len(text) > limit:
        return f"{shown}… ({len(text)} characters)"
    return shown
