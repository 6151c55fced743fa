"""The OpenAI-compatible gateway: routed chat completions with fallbacks and automatic feedback.

    upstreams.py     per catalog model: URL, upstream model name, API key, timeout; the pooled
                     HTTP client the app's lifespan opens and closes
    completions.py   the attempt loop: fallbacks, retries, Retry-After, streaming, outcomes,
                     and escalation to a stronger model when an answer fails a check
    escalation.py    the answer checks (length, empty, refusal, JSON, tool arguments, the
                     learned verifier), the per-request policy, the buffered stream

The HTTP endpoints are in `serving.routes.openai`.
"""

from serving.gateway.completions import (
    CLIENT_ERRORS,
    MAX_TOKENS,
    PROVIDER_ERRORS,
    ChatPlan,
    Gateway,
    GatewayReply,
    Sleep,
)
from serving.gateway.upstreams import Upstream, Upstreams, resolve_upstreams

__all__ = [
    "CLIENT_ERRORS",
    "MAX_TOKENS",
    "PROVIDER_ERRORS",
    "ChatPlan",
    "Gateway",
    "GatewayReply",
    "Sleep",
    "Upstream",
    "Upstreams",
    "resolve_upstreams",
]
