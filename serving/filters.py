"""The hard filters of the decision pipeline, as pure functions over per-model numpy arrays.

Each filter answers "which models can take this request?" with a boolean vector in the
router's model order; the arrays it reads (context windows, vision flags, estimated costs,
latencies) are built once when a model is loaded, so a filter is one vectorised comparison.
`describe_*` say, for one removed model, why — only called for models actually removed.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "cost_ok",
    "context_ok",
    "describe_context",
    "describe_cost",
    "describe_latency",
    "describe_vision",
    "latency_ok",
    "needed_tokens",
    "vision_ok",
]


def vision_ok(vision: np.ndarray, images: int) -> np.ndarray:
    """Models that can read the request: all of them without images, else those with vision.

    >>> vision_ok(np.array([True, False]), images=1).tolist()
    [True, False]
    """
    if images <= 0:
        return np.ones(vision.shape, dtype=bool)
    return vision.copy()


def needed_tokens(input_tokens: int, output_tokens: np.ndarray | float) -> np.ndarray | float:
    """Tokens a context must hold: the prompt plus the expected answer (per model, or one)."""
    return input_tokens + output_tokens


def context_ok(context_window: np.ndarray, needed: np.ndarray | float) -> np.ndarray:
    """Models whose context window holds `needed` tokens (per model, or one number for all).

    >>> context_ok(np.array([4096.0, 8192.0]), np.array([5000.0, 5000.0])).tolist()
    [False, True]
    """
    return context_window >= needed


def cost_ok(cost_usd: np.ndarray, max_cost_usd: float | None) -> np.ndarray:
    """Models whose estimated cost of this request is at most `max_cost_usd` (None: all).

    >>> cost_ok(np.array([0.01, 0.002]), 0.005).tolist()
    [False, True]
    """
    if max_cost_usd is None:
        return np.ones(cost_usd.shape, dtype=bool)
    return cost_usd <= max_cost_usd


def latency_ok(latency_ms: np.ndarray, max_latency_ms: float | None) -> np.ndarray:
    """Models whose latency (observed, or the catalog's until observed) is within the limit.

    >>> latency_ok(np.array([2500.0, 800.0]), 1000.0).tolist()
    [False, True]
    """
    if max_latency_ms is None:
        return np.ones(latency_ms.shape, dtype=bool)
    return latency_ms <= max_latency_ms


def describe_vision(images: int) -> str:
    return f"the request has {images} image(s) and the model has no vision capability"


def describe_context(input_tokens: int, output_tokens: float, window: float) -> str:
    need = input_tokens + output_tokens
    return (
        f"needs {need:,.0f} tokens ({input_tokens:,} input + {output_tokens:,.0f} expected "
        f"output); context window is {window:,.0f}"
    )


def describe_cost(cost_usd: float, max_cost_usd: float) -> str:
    return f"estimated cost ${cost_usd:.6g} exceeds max_cost_usd ${max_cost_usd:.6g}"


def describe_latency(latency_ms: float, max_latency_ms: float, percentile: float | None) -> str:
    """`percentile` is the observed percentile used, or None for the catalog's estimate."""
    source = f"observed p{percentile:g}" if percentile is not None else "catalog (none observed)"
    return f"{source} latency {latency_ms:,.0f} ms exceeds max_latency_ms {max_latency_ms:,.0f}"
