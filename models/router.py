"""The learned router as a cheap in-process call: features → linear heads → knob policy.

A trained router is a handful of numpy arrays. Scoring one prompt is one feature extraction,
one dense mat-vec and a sum over the hashed n-gram rows; no estimator objects run at request
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

import math
import zlib
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
from models.verifier import Verifier

try:  # the head's hashed block in C (features/_compiled.c); optional, see logits_one
    from features._compiled import add_rows as _add_rows
except ImportError:
    _add_rows = None
try:  # a sigmoid head's scores of one row in C; optional, the numpy path computes the same
    from features._compiled import head_scores as _head_scores
except ImportError:
    _head_scores = None
try:  # the order of the models in C; optional, numpy's lexsort gives the same order
    from features._compiled import rank_order as _rank_order
except ImportError:
    _rank_order = None
try:  # rounded scores in C; optional, numpy's round gives the same values
    from features._compiled import round_list as _round_list
except ImportError:
    _round_list = None
# The compiled order is an insertion sort on the stack: for the few dozen models a router
# scores; larger (hypothetical) routers take numpy's path.
_RANK_KERNEL_MAX = 64

# Free-form copies of the dense features (features/extractor.py) carry this prefix.
_FREE_FORM_PREFIX = "ff."

__all__ = [
    "DomainPrior",
    "HeadKind",
    "KnobMix",
    "LinearHead",
    "Router",
    "Scored",
    "STRATEGIES",
    "mixture_draw",
    "rounded",
]

HeadKind = Literal["sigmoid", "softmax"]
STRATEGIES = ("quality", "classifier")
_HEAD_KIND: dict[str, HeadKind] = {"quality": "sigmoid", "classifier": "softmax"}


@dataclass
class DomainPrior:
    """Per-domain mean quality of each model, and how strongly a prompt's scores lean on it.

    The domain head (columns of the owning `LinearHead` after the score and gain columns) gives
    p(d | x) over `names`; `means[d, m]` is model m's mean quality on the training prompts of
    domain d, `measured[d, m]` whether m was measured there, and `strength[d, m]` in [0, 1] how
    far m's score moves toward that mean on prompts of domain d (chosen by cross-validation on
    the training side, per domain and source). A score s_m becomes

        s_m + Σ_d p_d · strength_dm · measured_dm · (means_dm − s_m)

    a convex mix of the prompt's own prediction and the domain means it probably belongs to.
    """

    names: list[str]
    means: np.ndarray  # (D, K)
    measured: np.ndarray  # (D, K) bool
    strength: np.ndarray  # (D, K)

    def __post_init__(self) -> None:
        self.means = np.asarray(self.means, dtype=np.float64)
        self.measured = np.asarray(self.measured, dtype=bool)
        if self.means.ndim != 2 or self.measured.shape != self.means.shape:
            raise ValueError("domain means and measured must be (D, K) arrays of one shape")
        if len(self.names) != self.means.shape[0]:
            raise ValueError(f"{len(self.names)} domain names for {self.means.shape[0]} rows")
        self.strength = np.broadcast_to(
            np.asarray(self.strength, dtype=np.float64), self.means.shape
        ).copy()
        # Precomputed at load, so a request does two (D, K) mat-vecs; C-ordered, as the compiled
        # head kernel reads them.
        self._den = np.ascontiguousarray(np.where(self.measured, self.strength, 0.0))
        self._num = np.ascontiguousarray(self._den * self.means)

    def apply(self, score: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Shrunk scores; `p` is (D,) or (n, D) domain probabilities, `score` (K,) or (n, K)."""
        pull = score + p @ self._num
        pull -= score * (p @ self._den)
        return pull

    def to_payload(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "means": self.means,
            "measured": self.measured,
            "strength": self.strength,
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> DomainPrior:
        return cls(
            names=[str(x) for x in data["names"]],
            means=np.asarray(data["means"], dtype=np.float64),
            measured=np.asarray(data["measured"], dtype=bool),
            strength=np.asarray(data["strength"], dtype=np.float64),
        )


@dataclass
class LinearHead:
    """w·x + b for every model at once, split into the dense and the hashed block.

    dense_w: (n_dense, K) float64; hashed_w: (n_hash, K) float32 (the big block, kept compact);
    bias: (K,). `kind` says how logits become scores. A sigmoid head may carry `extra` columns,
    (dense_w, hashed_w, bias) of G + D more columns, which are stacked with the K score columns
    at load time so that one pass over the hashed rows serves them all:

    - a gain block (`gain_models`, `gain_ref`, the first G extra columns): for model
      `gain_models[i]`, the column predicts (1 + q_ref − q_m) / 2, the calibrated expected gain
      of its reference model `gain_ref[i]` over it; its score becomes s_ref − (2·sigmoid − 1);
    - a domain block (`domain`, the last D extra columns): domain logits, softmax → p(d | x),
      and `DomainPrior.apply` shrinks the scores toward the domain means.
    """

    kind: HeadKind
    dense_w: np.ndarray
    hashed_w: np.ndarray
    bias: np.ndarray
    extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    gain_models: np.ndarray | None = None
    gain_ref: np.ndarray | None = None
    domain: DomainPrior | None = None
    # The default knob calibrated on this head's scores, when it is a two-knob mix.
    knob_mix: KnobMix | None = None

    def __post_init__(self) -> None:
        k = int(self.bias.shape[0])
        self.n_scores = k
        self.gain_models = np.asarray(
            [] if self.gain_models is None else self.gain_models, dtype=np.int64
        )
        self.gain_ref = np.asarray([] if self.gain_ref is None else self.gain_ref, dtype=np.int64)
        g = self.gain_models.size
        d = 0 if self.domain is None else len(self.domain.names)
        n_extra = 0 if self.extra is None else int(self.extra[2].shape[0])
        if self.gain_ref.size != g or n_extra != g + d:
            raise ValueError(f"head has {n_extra} extra columns; expected {g} gains + {d} domains")
        if g and (
            self.gain_models.min() < 0
            or max(self.gain_models.max(), self.gain_ref.max()) >= k
            or self.gain_ref.min() < 0
        ):
            raise ValueError(f"gain models and references must be model indices below {k}")
        if self.domain is not None and self.domain.means.shape != (d, k):
            raise ValueError(f"domain means must be ({d}, {k}), got {self.domain.means.shape}")
        self._gain_cols = slice(k, k + g)
        self._domain_cols = slice(k + g, k + g + d)
        if self.extra is None:
            self._dense, self._hashed, self._bias = self.dense_w, self.hashed_w, self.bias
            return
        # One (n, K + G + D) matrix per block; the K score columns stay visible as views.
        ed, eh, eb = self.extra
        self._dense = np.ascontiguousarray(np.hstack([self.dense_w, ed]), dtype=np.float64)
        self._hashed = np.ascontiguousarray(np.hstack([self.hashed_w, eh]), dtype=np.float32)
        self._bias = np.concatenate([self.bias, eb]).astype(np.float64)
        self.dense_w, self.hashed_w = self._dense[:, :k], self._hashed[:, :k]
        self.bias = self._bias[:k]
        self.extra = (self._dense[:, k:], self._hashed[:, k:], self._bias[k:])

    @classmethod
    def from_coef(
        cls,
        kind: HeadKind,
        coef: np.ndarray,
        bias: np.ndarray,
        n_dense: int,
        *,
        n_scores: int | None = None,
        **extras: Any,
    ) -> LinearHead:
        """From an sklearn-style (C, n_features) coefficient matrix; with `n_scores`, the rows
        after the first `n_scores` are the extra (gain, domain) columns."""
        coef = np.asarray(coef, dtype=np.float64)
        bias = np.asarray(bias, dtype=np.float64)
        k = coef.shape[0] if n_scores is None else n_scores
        extra = None
        if coef.shape[0] > k:
            extra = (
                np.ascontiguousarray(coef[k:, :n_dense].T),
                np.ascontiguousarray(coef[k:, n_dense:].T, dtype=np.float32),
                bias[k:].copy(),
            )
        return cls(
            kind=kind,
            dense_w=np.ascontiguousarray(coef[:k, :n_dense].T),
            hashed_w=np.ascontiguousarray(coef[:k, n_dense:].T, dtype=np.float32),
            bias=bias[:k].copy(),
            extra=extra,
            **extras,
        )

    def logits_one(
        self, dense: np.ndarray, idx: np.ndarray, vals: np.ndarray, n_dense: int
    ) -> np.ndarray:
        """All logits (scores, then gain and domain columns) of one feature row."""
        # The hashed block is megabytes large and a prompt touches a few hundred scattered rows
        # of it: most of a head's time. The compiled kernel adds vals · row straight from the
        # float32 rows, and the dense block's non-zero rows in the same call; numpy's fallback
        # (BLAS mat-vec, fancy `take`, float64 cast, BLAS product) costs about 1.3-1.5× as much
        # and rounds in another order (same logits to ~1e-15).
        if _add_rows is not None:
            z = self._bias.copy()
            _add_rows(z, self._hashed, idx, vals, n_dense, dense, self._dense)
            return z
        z = dense @ self._dense
        z += self._bias
        if idx.size:
            z += vals @ self._hashed.take(idx - n_dense, axis=0)
        return z

    def logits_batch(self, X: sparse.csr_matrix, n_dense: int) -> np.ndarray:
        dense = X[:, :n_dense].toarray()
        z = dense @ self._dense + self._bias
        z += np.asarray(X[:, n_dense:] @ self._hashed, dtype=np.float64)
        return z

    def scores(
        self, z: np.ndarray, mask: np.ndarray | None = None, *, shrink: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores (…, K) from all logits (…, C), and the domain probabilities (or None).

        With `shrink=False`, the scores before the domain prior (for explanations)."""
        k = self.n_scores
        if self.kind == "softmax":
            return _softmax(z[..., :k], mask), None
        if self.extra is None:
            return expit(z, out=z), None  # z is this call's own array: scored in place
        # z is this call's own array: one row goes to the compiled kernel (features/_compiled.c,
        # `head_scores`), which does all of the below in place in ~1.4 µs where the numpy calls
        # take ~11 µs; the numpy path works in place on views of z too, with the operations of
        # the formulas in the class docstring in the same order.
        kg = self._gain_cols.stop
        if shrink and z.ndim == 1 and _head_scores is not None:
            prior = self.domain
            if prior is None:
                _head_scores(z, k, self.gain_models, self.gain_ref, None, None)
                return z[:k], None
            _head_scores(z, k, self.gain_models, self.gain_ref, prior._num, prior._den)
            return z[:k], z[kg:]
        expit(z[..., :kg], out=z[..., :kg])  # score and gain columns, one ufunc
        s = z[..., :k]
        if self.gain_models.size:
            gain = z[..., self._gain_cols]
            gain *= 2.0
            gain -= 1.0
            np.subtract(s[..., self.gain_ref], gain, out=gain)
            s[..., self.gain_models] = gain
        if self.domain is None:
            return s, None
        p = z[..., self._domain_cols]  # softmax in place
        p -= p.max(axis=-1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)
        return (self.domain.apply(s, p) if shrink else s), p

    def to_payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "dense_w": np.ascontiguousarray(self.dense_w),
            "hashed_w": np.ascontiguousarray(self.hashed_w),
            "bias": np.ascontiguousarray(self.bias),
        }
        if self.extra is not None:
            out["extra"] = {
                "dense_w": np.ascontiguousarray(self.extra[0]),
                "hashed_w": np.ascontiguousarray(self.extra[1]),
                "bias": np.ascontiguousarray(self.extra[2]),
            }
        if self.gain_models.size:
            out["gain_models"] = self.gain_models
            out["gain_ref"] = self.gain_ref
        if self.domain is not None:
            out["domain"] = self.domain.to_payload()
        if self.knob_mix is not None:
            out["knob_mix"] = self.knob_mix.to_payload()
        return out

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> LinearHead:
        if data["kind"] not in ("sigmoid", "softmax"):
            raise ValueError(f"head kind {data['kind']!r}; known: sigmoid, softmax")
        extra = data.get("extra")
        return cls(
            kind=data["kind"],
            dense_w=np.asarray(data["dense_w"], dtype=np.float64),
            hashed_w=np.asarray(data["hashed_w"], dtype=np.float32),
            bias=np.asarray(data["bias"], dtype=np.float64),
            extra=None
            if extra is None
            else (
                np.asarray(extra["dense_w"], dtype=np.float64),
                np.asarray(extra["hashed_w"], dtype=np.float32),
                np.asarray(extra["bias"], dtype=np.float64),
            ),
            gain_models=data.get("gain_models"),
            gain_ref=data.get("gain_ref"),
            domain=DomainPrior.from_payload(data["domain"]) if "domain" in data else None,
            knob_mix=KnobMix.from_payload(data["knob_mix"]) if "knob_mix" in data else None,
        )


_MAX_COST_SCALE = 1e250  # × any real cost in USD stays finite


def _softmax(z: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    z = np.array(z, dtype=np.float64, copy=True)
    if mask is not None:
        z = np.where(mask, z, -np.inf)
    z -= np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def rounded(values: np.ndarray, decimals: int = 6) -> list[float]:
    """``np.round(values, decimals).tolist()`` for a float64 vector: the scores as an answer
    shows them. One compiled call where numpy takes two (~0.3 against ~1.6 µs for 21 values)."""
    if _round_list is not None:
        return _round_list(values, decimals)
    return np.round(values, decimals).tolist()


def mixture_draw(prompt: Prompt) -> float:
    """A number in [0, 1) fixed by the prompt's text: which side of a knob mixture it takes.

    Deterministic, so that a prompt is routed the same way every time (and evaluation sees the
    draws the service makes); CRC-32 of the first 4 KiB of the last user turn is C-speed.
    """
    return zlib.crc32(prompt.last_user[:4096].encode("utf-8", "surrogatepass")) / 2.0**32


@dataclass(frozen=True)
class KnobMix:
    """A default knob that is a mixture of two: `high` for a share `p_high` of prompts.

    A random mix of two routers is a router whose cost and calls are the same mix of theirs, so
    a target that falls between two knob points is met in expectation by mixing them. The draw
    per prompt is `mixture_draw`, so the mix is deterministic per prompt.
    """

    low: float
    high: float
    p_high: float

    def knob(self, draw: float) -> float:
        return self.high if draw < self.p_high else self.low

    def to_payload(self) -> list[float]:
        return [float(self.low), float(self.high), float(self.p_high)]

    @classmethod
    def from_payload(cls, data: Sequence[float]) -> KnobMix:
        low, high, p_high = (float(x) for x in data)
        if not (0.0 <= low <= high < math.inf and 0.0 <= p_high <= 1.0):
            raise ValueError(f"knob mix {list(data)!r}: need 0 <= low <= high and 0 <= p <= 1")
        return cls(low, high, p_high)


@dataclass(slots=True)
class Scored:
    """What the router knows about one request, before any policy is applied.

    `score` is predicted quality (quality head) or P(best) (classifier head) per model, in
    `Router.models` order; `cost_usd` the estimated cost of this request per model;
    `domain_p` the domain probabilities when the head has a domain prior; `draw` the prompt's
    `mixture_draw`.
    Read-only by convention (not frozen: one is built per decision, and a frozen dataclass
    builds several times slower); `dataclasses.replace` makes changed copies.
    """

    score: np.ndarray
    cost_usd: np.ndarray
    input_tokens: int
    strategy: str
    features: tuple[np.ndarray, np.ndarray, np.ndarray] = field(repr=False)
    domain_p: np.ndarray | None = field(default=None, repr=False)
    draw: float = 0.0


@dataclass
class Router:
    """A trained router. Saved and loaded as `to_payload()` / `from_payload()` (models/artifact.py).

    `knob_mix`, when set, is the calibrated default policy: `rank` with no knob (or with
    `default_knob`, which is its low side) uses it.
    """

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
    knob_mix: KnobMix | None = None
    # Answer verifiers per model (escalation after the call); empty when the logs had no answers.
    verifiers: dict[str, Verifier] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_strategy not in self.heads:
            raise ValueError(f"default_strategy {self.default_strategy!r} has no head")
        self.index = {m: i for i, m in enumerate(self.models)}
        self.n_dense = int(self.featurizer.n_dense_)
        if self.knob_mix is None:
            # Artifacts written by the joblib format keep the mix with the head it was
            # calibrated on (see LinearHead.knob_mix).
            self.knob_mix = self.heads[self.default_strategy].knob_mix
        if self.knob_mix is not None:
            self.default_knob = self.knob_mix.low
        self._typical: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # ----------------------------------------------------------------- payload
    def to_payload(self) -> dict[str, Any]:
        """Everything a router is, as numpy arrays and plain JSON values (no objects)."""
        return {
            "models": list(self.models),
            "featurizer_params": self.featurizer.get_params(),
            # None when trained without them (idf_power 0, streaming, older artifacts)
            "column_weights": self.featurizer.column_weights_,
            "heads": {name: head.to_payload() for name, head in self.heads.items()},
            "input_price": self.input_price,
            "output_price": self.output_price,
            "output_tokens": self.output_tokens,
            "cost_ref": float(self.cost_ref),
            "default_strategy": self.default_strategy,
            "default_knob": float(self.default_knob),
            "knob_mix": None if self.knob_mix is None else self.knob_mix.to_payload(),
            "verifiers": {m: v.to_payload() for m, v in self.verifiers.items()},
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any], *, version: str = "") -> Router:
        # JSON has no tuples: list-valued featurizer parameters (char_ngrams) come back as
        # tuples, keeping get_params() identical to the saved router's.
        params = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data["featurizer_params"].items()
        }
        mix = data.get("knob_mix")
        return cls(
            models=tuple(str(m) for m in data["models"]),
            featurizer=PromptFeaturizer(**params)
            .fit([])
            .set_column_weights(data.get("column_weights")),
            heads={k: LinearHead.from_payload(v) for k, v in data["heads"].items()},
            input_price=np.asarray(data["input_price"], dtype=np.float64),
            output_price=np.asarray(data["output_price"], dtype=np.float64),
            output_tokens=np.asarray(data["output_tokens"], dtype=np.float64),
            cost_ref=float(data["cost_ref"]),
            default_strategy=str(data["default_strategy"]),
            default_knob=float(data["default_knob"]),
            version=version,
            knob_mix=None if mix is None else KnobMix.from_payload(mix),
            verifiers={
                str(m): Verifier.from_payload(v) for m, v in (data.get("verifiers") or {}).items()
            },
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
        score, domain_p = head.scores(head.logits_one(*feats, self.n_dense), mask)
        in_tok = estimate_tokens(len(prompt.text))
        return Scored(
            score,
            self.estimate_cost(in_tok, expected_output_tokens),
            in_tok,
            strategy,
            feats,
            domain_p,
            mixture_draw(prompt) if self.knob_mix is not None else 0.0,
        )

    def estimate_cost(
        self, input_tokens: int, expected_output_tokens: int | None = None
    ) -> np.ndarray:
        if expected_output_tokens is None:
            # The typical answer's cost per model: the product this line would form on every
            # request, kept while the two arrays are the same objects.
            typical = self._typical
            if (
                typical is None
                or typical[0] is not self.output_price
                or typical[1] is not self.output_tokens
            ):
                product = self.output_price * self.output_tokens
                typical = self._typical = (self.output_price, self.output_tokens, product)
            cost = self.input_price * float(input_tokens)  # a float multiplies faster than an int
            cost += typical[2]
            return cost
        return self.input_price * float(input_tokens) + self.output_price * float(
            expected_output_tokens
        )

    def utility(self, score: np.ndarray, cost_usd: np.ndarray, knob: float) -> np.ndarray:
        """score − λ · cost / c_ref: the quantity the policy maximises."""
        if knob == 0.0:
            return score
        return score - cost_usd * self._cost_scale(knob)

    def _cost_scale(self, knob: float) -> float:
        """λ / c_ref, capped: a knob near float's limit would overflow; capped, cost alone still
        decides the order, which is what such a knob asks for (np.errstate would cost every
        decision ~4 µs)."""
        return min(knob / self.cost_ref, _MAX_COST_SCALE)

    def rank(
        self, scored: Scored, knob: float | None = None, mask: np.ndarray | None = None
    ) -> np.ndarray:
        """Model indices, best first, restricted to `mask` (a boolean vector) when given.

        No knob, or the default knob, means the default policy (the calibrated mix, if any).
        """
        if knob is None or knob == self.default_knob:
            knob = self.default_knob if self.knob_mix is None else self.knob_mix.knob(scored.draw)
        scale = None if knob == 0.0 else self._cost_scale(knob)
        k = scored.score.shape[0]
        if _rank_order is not None and k <= _RANK_KERNEL_MAX:
            # the numpy lines below, in one call (~1 µs where they take ~4 µs)
            out = np.empty(k, dtype=np.int64)
            return out[: _rank_order(out, scored.score, scored.cost_usd, scale, mask)]
        # −utility, formed directly: c·s − q is exactly −(q − c·s) in IEEE arithmetic, one
        # array operation fewer on every decision.
        if scale is None:
            negative_u = -scored.score
        else:
            negative_u = scored.cost_usd * scale
            negative_u -= scored.score
        # Ties (equal utility) go to the cheaper model: lexsort's last key is the primary one.
        order = np.lexsort((scored.cost_usd, negative_u))
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
        """(scores, estimated costs), each (n, K), for many prompts at once (evaluation).

        The same scores as `score` per prompt: gain block and domain prior included.
        """
        strategy = strategy or self.default_strategy
        head = self.heads[strategy]
        if X is None:
            X = self.featurizer.transform(prompts, task_types=task_types)
        score, _p = head.scores(head.logits_batch(X, self.n_dense), masks)
        in_tok = np.array([estimate_tokens(len(p.text)) for p in prompts], dtype=np.float64)
        cost = in_tok[:, None] * self.input_price + self.output_price * self.output_tokens
        return score, cost

    def explain(
        self, scored: Scored, chosen: int, against: int | None = None, top: int = 8
    ) -> list[dict[str, Any]]:
        """The dense features that pushed `chosen` up (relative to `against`, when given).

        A feature and its free-form copy (``kw.coding`` and ``ff.kw.coding``) are one signal
        with two weights; they are reported once, under the base name, with the summed
        contribution.
        """
        head = self.heads[scored.strategy]
        dense, idx, vals = scored.features
        w = head.dense_w[:, chosen] - (head.dense_w[:, against] if against is not None else 0.0)
        contrib = dense * w
        names = self.featurizer.get_feature_names_out()[: self.n_dense]
        merged: dict[str, list[float]] = {}
        for i in np.flatnonzero(contrib):
            base = str(names[i]).removeprefix(_FREE_FORM_PREFIX)
            entry = merged.setdefault(base, [0.0, 0.0])
            entry[0] = max(entry[0], float(dense[i]), key=abs)
            entry[1] += float(contrib[i])
        ranked = sorted(merged.items(), key=lambda kv: -abs(kv[1][1]))[:top]
        out: list[dict[str, Any]] = [
            {"feature": name, "value": round(value, 4), "contribution": round(c, 4)}
            for name, (value, c) in ranked
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
        dom = self.domain_of(scored, chosen)
        if dom is not None:
            # The domain prior's pull on the final scores (score units, not logits).
            prior = head.domain
            assert prior is not None and scored.domain_p is not None
            p = scored.domain_p
            own, _p = head.scores(head.logits_one(dense, idx, vals, self.n_dense), shrink=False)
            pull = prior.apply(own, p) - own
            delta = pull[chosen] - (pull[against] if against is not None else 0.0)
            # Same keys as every entry: the domain in the name, the weight of its means in the
            # chosen model's score as the value (`domain_of` has the probability too).
            out.append(
                {
                    "feature": f"domain:{dom['domain']}",
                    "value": dom["weight"],
                    "contribution": round(float(delta), 4),
                }
            )
        return out

    def domain_of(self, scored: Scored, model: int | None = None) -> dict[str, Any] | None:
        """The prompt's most likely domain, its probability, and (for `model`) the weight of
        the domain means in that model's score; None when the head has no domain prior."""
        prior = self.heads[scored.strategy].domain
        if prior is None or scored.domain_p is None:
            return None
        d = int(np.argmax(scored.domain_p))
        out: dict[str, Any] = {
            "domain": prior.names[d],
            "probability": round(float(scored.domain_p[d]), 4),
        }
        if model is not None:
            out["weight"] = round(float(scored.domain_p @ prior._den[:, model]), 4)
        return out
