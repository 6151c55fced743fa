"""Train the answer verifier (`models/verifier.py`) from logs that carry answer text.

Every outcome with a ``response`` and a quality is one example: (prompt, answer) → quality, a
soft target in [0, 1]. One verifier is trained per model that has at least ``min_examples``
labelled answers: what a wrong answer looks like depends on the model (on the bundled GSM8K
data a Mixtral-only verifier ranked Mixtral's answers better out of fold than one trained on
both models' answers: cascade APGR 0.771 vs 0.722, cost to 95% of GPT-4 0.534 vs 0.595 of
always-GPT-4). Steps, per model:

1. features: the verifier's structural block (scaled to [-1, 1] per column on these examples)
   and its hashed answer n-grams, the hashed block weighted by ``text_weight``;
2. k-fold cross-validation (folds keyed by a hash of the prompt, so both answers to one prompt
   stay in one fold) picks C and ``text_weight`` by out-of-fold log loss;
3. Platt scaling on the out-of-fold logits, folded into the final weights with the scaling;
4. the default threshold, out of fold: where the logs have a better model (by mean quality) on the
   same prompts, the cheapest cascade point that reaches 95% of its quality; else 0.5.

Only the records given are used; callers pass the train side of the split.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models.catalog import Catalog
from models.verifier import STRUCTURE_NAMES, Verifier, structure, text_features
from training.cascade import escalation_curve, threshold_for
from training.labels import outcome_cost
from training.records import Record

__all__ = ["VerifierOptions", "Example", "examples", "train_verifier", "train_verifiers"]

Progress = Callable[[str], None]


@dataclass
class VerifierOptions:
    """Options of `train_verifier`; validated on construction."""

    c_grid: tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
    # 0.5 won the out-of-fold loss on the bundled GSM8K answers against 1.0 (both models).
    text_weights: tuple[float, ...] = (0.5,)
    folds: int = 5
    n_hash: int = 2**14
    min_examples: int = 50
    random_state: int = 0

    def __post_init__(self) -> None:
        self.c_grid = tuple(float(c) for c in self.c_grid)
        self.text_weights = tuple(float(w) for w in self.text_weights)
        if not self.c_grid or any(not (c > 0 and math.isfinite(c)) for c in self.c_grid):
            raise ValueError("verifier c_grid: every value must be a positive finite number")
        if not self.text_weights or any(not (w >= 0) for w in self.text_weights):
            raise ValueError("verifier text_weights: every value must be >= 0")
        if not (2 <= self.folds <= 20):
            raise ValueError("verifier folds: must be between 2 and 20")
        if not (2**8 <= self.n_hash <= 2**20):
            raise ValueError("verifier n_hash: must be between 2**8 and 2**20")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    quality: float
    model: str
    record: int  # index into the records given


def examples(records: Sequence[Record]) -> list[Example]:
    """Every labelled (prompt, answer) pair the records carry."""
    out = []
    for i, rec in enumerate(records):
        for model, outcome in rec.outcomes.items():
            for answer, quality in outcome.responses:
                if quality is not None:
                    out.append(Example(rec.prompt.text, answer, float(quality), model, i))
    return out


def _fold(text: str, k: int) -> int:
    # The same bytes as the router's CV folds (training.trainer.fold_ids).
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[8:16], 16) % k


def _features(ex: Sequence[Example], n_hash: int) -> tuple[np.ndarray, sparse.csr_matrix]:
    dense = np.array([structure(e.prompt, e.answer) for e in ex]).reshape(len(ex), -1)
    parts = [text_features(e.answer, n_hash) for e in ex]
    ptr = np.cumsum([0] + [idx.size for idx, _ in parts])
    idx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    val = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    return dense, sparse.csr_matrix((val, idx, ptr), shape=(len(ex), n_hash))


def _fit(X: sparse.csr_matrix, y: np.ndarray, C: float, seed: int) -> tuple[np.ndarray, float]:
    """Soft-label logistic regression: row i is positive with weight y_i, negative with 1 − y_i
    (a 0/1 row stays one row)."""
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y < 1)
    Xf = sparse.vstack([X[pos], X[neg]]).tocsr()
    yf = np.concatenate([np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)])
    wf = np.concatenate([y[pos], 1.0 - y[neg]])
    # The dual is the cheaper problem here (fewer answers than hashed columns); the trainer's
    # liblinear tolerance (see training/trainer.py).
    clf = LogisticRegression(
        C=C, solver="liblinear", dual=True, tol=1e-2, max_iter=5000, random_state=seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xf, yf, sample_weight=wf)
    return clf.coef_[0].copy(), float(clf.intercept_[0])


def _loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    res = optimize.minimize(
        lambda p: _loss(p[0] * z + p[1], y),
        x0=np.array([1.0, 0.0]),
        method="L-BFGS-B",
        bounds=[(1e-3, 100.0), (-20.0, 20.0)],
    )
    return float(res.x[0]), float(res.x[1])


def _stronger(records: Sequence[Record], model: str, catalog: Catalog) -> str | None:
    """The model with the best mean quality on the prompts `model` answered, if better."""
    stats: dict[str, list[float]] = {}
    for rec in records:
        mine = rec.outcomes.get(model)
        if mine is None or mine.quality is None or mine.response is None:
            continue
        for m, o in rec.outcomes.items():
            if o.quality is not None and m in catalog:
                s = stats.setdefault(m, [0.0, 0.0])
                s[0] += o.quality
                s[1] += 1
    if model not in stats:
        return None
    best = max(stats, key=lambda m: stats[m][0] / stats[m][1])
    return None if best == model else best


def train_verifiers(
    records: Sequence[Record],
    catalog: Catalog,
    options: VerifierOptions | None = None,
    *,
    progress: Progress | None = None,
) -> dict[str, Verifier]:
    """One verifier per model with enough labelled answers in `records` (maybe none)."""
    opts = options or VerifierOptions()
    by_model: dict[str, int] = {}
    for e in examples(records):
        by_model[e.model] = by_model.get(e.model, 0) + 1
    out = {}
    for model in sorted(by_model):
        v = train_verifier(records, catalog, model, opts, progress=progress)
        if v is not None:
            out[model] = v
    return out


def train_verifier(
    records: Sequence[Record],
    catalog: Catalog,
    model: str,
    options: VerifierOptions | None = None,
    *,
    progress: Progress | None = None,
) -> Verifier | None:
    """Fit `model`'s verifier on its answers in `records`; None when too few are labelled.

    Examples
    --------
    >>> from training.verifier import train_verifier  # doctest: +SKIP
    >>> v = train_verifier(records, catalog, "m")     # doctest: +SKIP
    >>> v.score("What is 2+3?", "2 + 3 = 5\\n#### 5")  # doctest: +SKIP
    0.83
    """
    opts = options or VerifierOptions()
    say = progress or (lambda _m: None)
    ex = [e for e in examples(records) if e.model == model]
    y = np.array([e.quality for e in ex])
    if len(ex) < opts.min_examples or y.min(initial=1.0) == y.max(initial=0.0):
        if ex:
            say(
                f"verifier {model}: {len(ex)} labelled answers, too few or one outcome only; "
                "not trained"
            )
        return None
    say(f"verifier {model}: {len(ex)} labelled answers; extracting features")
    dense, hashed = _features(ex, opts.n_hash)
    peak = np.abs(dense).max(axis=0)
    scale = np.where(peak > 0, 1.0 / np.where(peak > 0, peak, 1.0), 1.0)
    dense_s = sparse.csr_matrix(dense * scale)
    folds = np.array([_fold(e.prompt, opts.folds) for e in ex])

    def design(w: float) -> sparse.csr_matrix:
        return sparse.hstack([dense_s, hashed * w]).tocsr()

    cv_loss: dict[str, float] = {}
    best: tuple[float, float, float] | None = None
    best_oof = np.zeros(len(ex))
    for w in opts.text_weights:
        X = design(w)
        for c in opts.c_grid:
            oof = np.zeros(len(ex))
            for f in range(opts.folds):
                tr, te = folds != f, folds == f
                if not te.any():
                    continue
                if y[tr].min() == y[tr].max():
                    oof[te] = math.log(max(y[tr].mean(), 1e-3) / max(1 - y[tr].mean(), 1e-3))
                    continue
                coef, b = _fit(X[tr], y[tr], c, opts.random_state)
                oof[te] = X[te] @ coef + b
            loss = _loss(oof, y)
            cv_loss[f"C={c:g},text_weight={w:g}"] = round(loss, 5)
            if best is None or loss < best[0] - 1e-9:
                best, best_oof = (loss, c, w), oof
    assert best is not None
    _, c_star, w_star = best
    a, b = _platt(best_oof, y)
    oof_p = 1.0 / (1.0 + np.exp(-(a * best_oof + b)))
    hard = (y == 0) | (y == 1)
    auc = float(roc_auc_score(y[hard], oof_p[hard])) if len(set(y[hard].tolist())) == 2 else None
    say(f"verifier {model}: C={c_star:g}, text weight {w_star:g}, OOF AUC {auc}")

    report: dict[str, Any] = {
        "model": model,
        "examples": len(ex),
        "mean_quality": round(float(y.mean()), 4),
        "c": c_star,
        "text_weight": w_star,
        "cv_folds": opts.folds,
        "cv_loss": cv_loss,
        "oof_auc": None if auc is None else round(auc, 4),
        "oof_brier": round(float(np.mean((oof_p - y) ** 2)), 5),
        "options": asdict(opts),
    }
    threshold, rule = 0.5, "0.5: the logs have no better model on the same prompts"
    strong = _stronger(records, model, catalog)
    if strong is not None:
        rows = [
            i
            for i, e in enumerate(ex)
            if strong in records[e.record].outcomes
            and records[e.record].outcomes[strong].quality is not None
        ]
        recs = [records[ex[i].record] for i in rows]
        curve = escalation_curve(
            oof_p[rows],
            y[rows],
            np.array([r.outcomes[strong].quality for r in recs]),
            np.array([outcome_cost(r.outcomes[model], model, r, catalog) for r in recs]),
            np.array([outcome_cost(r.outcomes[strong], strong, r, catalog) for r in recs]),
            cheap_always_paid=True,
        )
        t = threshold_for(curve, 0.95)
        if t is not None:
            threshold = t
            rule = f"cheapest out-of-fold cascade point reaching 95% of {strong}"
        report["oof_cascade"] = {
            "strong": strong,
            "n": len(recs),
            **{k: v for k, v in curve.summary().items() if k != "curve"},
        }
    report["threshold_rule"] = rule

    X = design(w_star)
    coef, b0 = _fit(X, y, c_star, opts.random_state)
    coef, b0 = coef * a, b0 * a + b
    n_dense = len(STRUCTURE_NAMES)
    return Verifier(
        dense_w=coef[:n_dense] * scale,
        hashed_w=np.asarray(coef[n_dense:] * w_star, dtype=np.float32),
        bias=float(b0),
        threshold=float(threshold),
        report=report,
    )
