"""The learned router as a cheap in-process call: features → linear heads → knob policy.

A trained router is a handful of numpy arrays. Scoring one prompt is one feature extraction,
one dense mat-vec and a gather over the hashed n-gram rows; no estimator objects run at request
time, so a decision costs tens of microseconds (see bench/).

Two heads can be present, and the artifact names which one routes by default:

- ``quality``: per-model predicted quality q̂_m(x) = sigmoid(w_m·x + b_m), Platt-calibrated on
  out-of-fold predictions (the calibration is folded into the weights at training time);
- ``classifier``: P(m is the best model | x) = softmax(w·x + b) with a fitted temperature,
  renormalised over the candidates a request allows.

The decision knob λ (``cost weight``) trades quality against cost without retraining: the router
picks argmax_m score_m − λ · ĉ_m(x) / c_ref, where ĉ_m(x) is the estimated cost of this request
on model m and c_ref is the typical cost of the most expensive model on the training prompts.
λ = 0 routes on quality alone; larger λ routes cheaper.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import sparse
from scipy.special import expit

from features.extractor import PromptFeaturizer
from features.text import Prompt
from models.catalog import estimate_tokens
from models.errors import UnknownModelError

__all__ = ["HeadKind", "LinearHead", "Router", "Scored", "STRATEGIES"]

HeadKind = Literal["sigmoid", "softmax"]
STRATEGIES = ("quality", "classifier")
_HEAD_KIND: dict[str, HeadKind] = {"quality": "sigmoid", "classifier": "softmax"}


@dataclass
class LinearHead:
    """w·x + b for every model at once, split into the dense and the hashed block.

    dense_w: (n_dense, K) float64; hashed_w: (n_hash, K) float32 (the big block, kept compact);
    bias: (K,). `kind` says how logits become scores.
    """

    kind: HeadKind
    dense_w: np.ndarray
    hashed_w: np.ndarray
    bias: np.ndarray

    @classmethod
    def from_coef(
        cls, kind: HeadKind, coef: np.ndarray, bias: np.ndarray, n_dense: int
    ) -> LinearHead:
        """From an sklearn-style (K, n_features) coefficient matrix."""
        coef = np.asarray(coef, dtype=np.float64)
        return cls(
            kind=kind,
            dense_w=np.ascontiguousarray(coef[:, :n_dense].T),
            hashed_w=np.ascontiguousarray(coef[:, n_dense:].T, dtype=np.float32),
            bias=np.asarray(bias, dtype=np.float64).copy(),
        )

    def logits_one(
        self, dense: np.ndarray, idx: np.ndarray, vals: np.ndarray, n_dense: int
    ) -> np.ndarray:
        z = dense @ self.dense_w + self.bias
        if idx.size:
            # `take` gathers the rows in one pass; fancy indexing costs about twice as much, and
            # the gather from this megabytes-large block is most of a head's time.
            z += vals @ self.hashed_w.take(idx - n_dense, axis=0)
        return z

    def logits_batch(self, X: sparse.csr_matrix, n_dense: int) -> np.ndarray:
        dense = X[:, :n_dense].toarray()
        z = dense @ self.dense_w + self.bias
        z += np.asarray(X[:, n_dense:] @ self.hashed_w, dtype=np.float64)
        return z

    def to_payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dense_w": self.dense_w,
            "hashed_w": self.hashed_w,
            "bias": self.bias,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> LinearHead:
        if data["kind"] not in ("sigmoid", "softmax"):
            raise ValueError(f"head kind {data['kind']!r}; known: sigmoid, softmax")
        return cls(
            kind=data["kind"],
            dense_w=np.asarray(data["dense_w"], dtype=np.float64),
            hashed_w=np.asarray(data["hashed_w"], dtype=np.float32),
            bias=np.asarray(data["bias"], dtype=np.float64),
        )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return expit(z)  # one overflow-free ufunc: a quarter of the time of tanh arithmetic


def _softmax(z: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = np.array(z, dtype=np.float64, copy=True)
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    z -= np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


@dataclass(frozen=True)
class Scored:
    """What the router knows about one request, before any policy is applied.

    `score` is predicted quality (quality head) or P(best) (classifier head) per model, in
    `Router.models` order; `cost_usd` the estimated cost of this request per model.
    """

    score: np.ndarray
    cost_usd: np.ndarray
    input_tokens: int
    strategy: str
    features: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)


@dataclass
class Router:
    """A trained router. Saved and loaded as `to_payload()` / `from_payload()` by models/artifact.py."""

    models: tuple[str, ...]
    featurizer: PromptFeaturizer
    heads: dict[str, LinearHead]
    input_price: np.ndarray  # USD per input token, per model
    output_price: np.ndarray  # USD per output token, per model
    output_tokens: np.ndarray  # expected output tokens per model (learned, or catalog typical)
    cost_ref: float
    default_strategy: str = "quality"
    default_knob: float = 0.0
    version: str = ""

    def __post_init__(self) -> None:
        if self.default_strategy not in self.heads:
            raise ValueError(f"default_strategy {self.default_strategy!r} has no head")
        self.index = {m: i for i, m in enumerate(self.models)}
        self.n_dense = int(self.featurizer.n_dense_)

    # ----------------------------------------------------------------- persistence
    def to_payload(self) -> dict[str, Any]:
        """The router as numpy arrays and plain values: what an artifact stores (no objects)."""
        return {
            "models": list(self.models),
            "featurizer_params": self.featurizer.get_params(),
            "heads": {name: head.to_payload() for name, head in self.heads.items()},
            "input_price": self.input_price,
            "output_price": self.output_price,
            "output_tokens": self.output_tokens,
            "cost_ref": float(self.cost_ref),
            "default_strategy": self.default_strategy,
            "default_knob": float(self.default_knob),
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any], *, version: str = "") -> Router:
        """Rebuild a router from `to_payload()`'s tree, as decoded from JSON + npz.

        JSON has no tuples, so list-valued featurizer parameters (``char_ngrams``) come back as
        tuples, keeping ``get_params()`` identical to the saved router's.
        """
        params = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data["featurizer_params"].items()
        }
        return cls(
            models=tuple(str(m) for m in data["models"]),
            featurizer=PromptFeaturizer(**params).fit([]),
            heads={k: LinearHead.from_payload(v) for k, v in data["heads"].items()},
            input_price=np.asarray(data["input_price"], dtype=np.float64),
            output_price=np.asarray(data["output_price"], dtype=np.float64),
            output_tokens=np.asarray(data["output_tokens"], dtype=np.float64),
            cost_ref=float(data["cost_ref"]),
            default_strategy=str(data["default_strategy"]),
            default_knob=float(data["default_knob"]),
            version=version,
        )

    # ----------------------------------------------------------------- hot path
    def score(
        self,
        prompt: Prompt,
        *,
        task_type: str | None = None,
        expected_output_tokens: int | None = None,
        strategy: str | None = None,
        mask: np.ndarray | None = None,
    ) -> Scored:
        """Score every model for one request. `mask` restricts a softmax head's normalisation."""
        strategy = strategy or self.default_strategy
        head = self.heads.get(strategy)
        if head is None:
            raise ValueError(f"strategy: unknown {strategy!r}; available: {sorted(self.heads)}")
        feats = self.featurizer.transform_one(prompt, task_type)
        z = head.logits_one(*feats, self.n_dense)
        score = _sigmoid(z) if head.kind == "sigmoid" else _softmax(z, mask)
        in_tok = estimate_tokens(len(prompt.text))
        return Scored(
            score, self.estimate_cost(in_tok, expected_output_tokens), in_tok, strategy, feats
        )

    def estimate_cost(
        self, input_tokens: int, expected_output_tokens: int | None = None
    ) -> np.ndarray:
        out = (
            self.output_tokens if expected_output_tokens is None else float(expected_output_tokens)
        )
        return self.input_price * input_tokens + self.output_price * out

    def utility(self, score: np.ndarray, cost_usd: np.ndarray, knob: float) -> np.ndarray:
        """score − λ · cost / c_ref: the quantity the policy maximises."""
        if knob == 0.0:
            return score
        # A knob near float's limit overflows to -inf for every costed model: rank() then
        # orders them by cost alone, which is what such a knob asks for.
        with np.errstate(over="ignore"):
            return score - knob * (cost_usd / self.cost_ref)

    def rank(
        self, scored: Scored, knob: float | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Model indices, best first, restricted to `mask` (a boolean vector) when given."""
        knob = self.default_knob if knob is None else knob
        u = self.utility(scored.score, scored.cost_usd, knob)
        # Ties (equal utility) go to the cheaper model: lexsort's last key is the primary one.
        order = np.lexsort((scored.cost_usd, -u))
        if mask is not None:
            order = order[mask[order]]
        return order

    # ----------------------------------------------------------------- helpers
    def mask_for(self, candidates: Sequence[str] | None) -> np.ndarray:
        """Boolean mask over `models` for a candidate list (None = all)."""
        if candidates is None:
            return np.ones(len(self.models), dtype=bool)
        if not candidates:
            raise ValueError("candidates: must name at least one model")
        mask = np.zeros(len(self.models), dtype=bool)
        for name in candidates:
            i = self.index.get(name)
            if i is None:
                raise UnknownModelError(name, self.models, field="candidates")
            mask[i] = True
        return mask

    def score_batch(
        self,
        prompts: Sequence[Prompt],
        *,
        task_types: Sequence[str | None] | None = None,
        strategy: str | None = None,
        masks: np.ndarray | None = None,
        X: sparse.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, estimated costs), each (n, K), for many prompts at once (evaluation)."""
        strategy = strategy or self.default_strategy
        head = self.heads[strategy]
        if X is None:
            X = self.featurizer.transform(prompts, task_types=task_types)
        z = head.logits_batch(X, self.n_dense)
        score = _sigmoid(z) if head.kind == "sigmoid" else _softmax(z, masks)
        in_tok = np.array([estimate_tokens(len(p.text)) for p in prompts], dtype=np.float64)
        cost = in_tok[:, None] * self.input_price + self.output_price * self.output_tokens
        return score, cost

    def explain(
        self, scored: Scored, chosen: int, against: int | None = None, top: int = 8
    ) -> list[dict[str, Any]]:
        """The dense features that pushed `chosen` up (relative to `against`, when given)."""
        head = self.heads[scored.strategy]
        dense, idx, vals = scored.features
        w = head.dense_w[:, chosen] - (head.dense_w[:, against] if against is not None else 0.0)
        contrib = dense * w
        names = self.featurizer.get_feature_names_out()[: self.n_dense]
        order = np.argsort(-np.abs(contrib))[:top]
        out = [
            {
                "feature": str(names[i]),
                "value": round(float(dense[i]), 4),
                "contribution": round(float(contrib[i]), 4),
            }
            for i in order
            if contrib[i] != 0.0
        ]
        if idx.size:
            hw = head.hashed_w[idx - self.n_dense]
            hc = hw[:, chosen] - (hw[:, against] if against is not None else 0.0)
            out.append(
                {
                    "feature": "hashed n-grams (total)",
                    "value": int(idx.size),
                    "contribution": round(float(vals @ hc), 4),
                }
            )
        return out
