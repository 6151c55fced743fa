"""Targets derived from labelled records: quality and cost matrices, and the best model per prompt.

The label of a multi-outcome record is its *best model*: the cheapest among the models whose
quality is within `tolerance` of the best quality on that prompt. Cost is the recorded
`cost_usd` where present, otherwise tokens × catalog price (tokens estimated from text when the
record has none: the prompt for input, the logged `response` for output) — the same rule the service uses for its estimates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.catalog import Catalog, estimate_tokens
from training.records import Outcome, Record

__all__ = ["Targets", "best_model_index", "best_model_indices", "build_targets", "outcome_cost"]


def outcome_cost(outcome: Outcome, model: str, record: Record, catalog: Catalog) -> float:
    """The cost in USD of one call: recorded when known, else estimated from tokens × price."""
    if outcome.cost_usd is not None:
        return float(outcome.cost_usd)
    spec = catalog[model]
    inp = outcome.input_tokens
    if inp is None:
        inp = estimate_tokens(len(record.prompt.text))
    out = outcome.output_tokens
    if out is None and outcome.response is not None:
        out = estimate_tokens(len(outcome.response))
    if out is None:
        out = catalog.typical_output_tokens
    return spec.cost_usd(inp, out)


@dataclass(frozen=True)
class Targets:
    """Dense views of a list of records over a fixed model order.

    quality, cost: (n_records, n_models) with NaN where a model has no labelled outcome.
    label: index of the best model per record, -1 where there is none (fewer than two
    labelled models and no direct label).
    output_tokens: (n_records, n_models) output tokens where known or derivable, else NaN.
    """

    models: tuple[str, ...]
    quality: np.ndarray
    cost: np.ndarray
    label: np.ndarray
    output_tokens: np.ndarray

    @property
    def labelled(self) -> np.ndarray:
        return ~np.isnan(self.quality)


def best_model_index(quality: np.ndarray, cost: np.ndarray, tolerance: float = 0.0) -> int:
    """Index of the cheapest model whose quality is within `tolerance` of the best (NaNs ignored).

    >>> best_model_index(np.array([0.9, 0.85, np.nan]), np.array([3.0, 1.0, 0.1]), 0.1)
    1
    """
    return int(best_model_indices(quality[None, :], cost[None, :], tolerance)[0])


def best_model_indices(quality: np.ndarray, cost: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """`best_model_index` of every row of (n, K) arrays at once; -1 for a row without quality."""
    ok = ~np.isnan(quality)
    if quality.shape[1] == 0:
        return np.full(quality.shape[0], -1, dtype=np.int64)
    best = np.where(ok, quality, -np.inf).max(axis=1, keepdims=True)
    # A small epsilon so that equal floats written with different rounding still tie.
    near = ok & (quality >= best - tolerance - 1e-12)
    cheapest = np.argmin(np.where(near, cost, np.inf), axis=1)
    return np.where(ok.any(axis=1), cheapest, -1)


def build_targets(
    records: Sequence[Record], models: Sequence[str], catalog: Catalog, *, tolerance: float = 0.0
) -> Targets:
    """Quality, cost, output-token and label arrays for `records` over `models`."""
    index = {m: i for i, m in enumerate(models)}
    n, k = len(records), len(models)
    quality = np.full((n, k), np.nan)
    cost = np.full((n, k), np.nan)
    out_tokens = np.full((n, k), np.nan)
    label = np.full(n, -1, dtype=np.int64)
    inp_price, out_price = catalog.prices(models)
    for r, rec in enumerate(records):
        for model, outcome in rec.outcomes.items():
            j = index.get(model)
            if j is None or outcome.quality is None:
                continue
            quality[r, j] = outcome.quality
            cost[r, j] = outcome_cost(outcome, model, rec, catalog)
            out_tokens[r, j] = _output_tokens(outcome, rec, inp_price[j], out_price[j])
        if rec.label is not None and rec.label in index:
            label[r] = index[rec.label]
    # The other records with two or more labelled models, all rows at once (a per-row call
    # was a second of a 100k-record log).
    rows = np.flatnonzero((label < 0) & ((~np.isnan(quality)).sum(axis=1) >= 2))
    if rows.size:
        label[rows] = best_model_indices(quality[rows], cost[rows], tolerance)
    return Targets(tuple(models), quality, cost, label, out_tokens)


def _output_tokens(outcome: Outcome, rec: Record, inp_price: float, out_price: float) -> float:
    """Recorded output tokens, or those implied by a recorded cost and the catalog prices."""
    if outcome.output_tokens is not None:
        return float(outcome.output_tokens)
    if outcome.cost_usd is None and outcome.response is not None:
        return float(estimate_tokens(len(outcome.response)))
    if outcome.cost_usd is None or out_price <= 0:
        return float("nan")
    inp = outcome.input_tokens
    if inp is None:
        inp = estimate_tokens(len(rec.prompt.text))
    implied = (outcome.cost_usd - inp * inp_price) / out_price
    return max(implied, 0.0)
