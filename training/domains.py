"""Domains learned from the training data: a prompt → domain classifier and per-domain means.

Within a benchmark, a prompt's text says little about which model will be right; which
benchmark (domain) it comes from says a lot. The `task` column of the training records names the
domain; it is a training-time target only: at request time the domain is predicted from the
prompt's features.

The classifier is a nearest-centroid model made linear: similarities to the domain centroids
S = X · Cᵀ, then a multinomial logistic regression on S (D × D weights, fitted on out-of-fold
similarities), so p(d | x) = softmax(x · Cᵀ Wᵀ + b) is one more block of columns in a linear
head. It costs one sparse product to fit, where a one-vs-rest regression per domain on the
hashed features costs minutes.

`DomainPrior` in models/router.py shrinks each model's score toward its domain mean with a
strength per model; `choose_strength` picks it by cross-validation (routing AIQ of the
out-of-fold scores) on the training side.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

__all__ = [
    "DomainFit",
    "STRENGTH_GRID",
    "choose_strength",
    "domain_labels",
    "domain_means",
    "fit_domains",
    "shrink",
]

# A domain needs this many distinct training prompts to be learned; rarer tasks are unlabelled.
MIN_DOMAIN_PROMPTS = 20
# A model's domain mean is used only where it was measured on at least this many records.
MIN_MEASURED = 5
DOMAIN_FIT_ROWS = 600
STRENGTH_GRID: tuple[float, ...] = tuple(round(x, 2) for x in np.linspace(0.0, 1.0, 11))


def domain_labels(tasks: Sequence[str | None]) -> tuple[list[str], np.ndarray]:
    """Domain names (tasks with ≥ MIN_DOMAIN_PROMPTS prompts, sorted) and each prompt's index
    among them (-1 for no task or a rare one)."""
    counts: dict[str, int] = {}
    for task in tasks:
        if task:
            counts[task] = counts.get(task, 0) + 1
    names = sorted(t for t, c in counts.items() if c >= MIN_DOMAIN_PROMPTS)
    index = {t: i for i, t in enumerate(names)}
    return names, np.array([index.get(t, -1) if t else -1 for t in tasks], dtype=np.int64)


def _centroids(X: sparse.csr_matrix, labels: np.ndarray, n_domains: int) -> np.ndarray:
    """(D, F) dense mean feature row of each domain's prompts (labels < 0 ignored).

    Dense on purpose: the centroids fill most hashed columns, and sparse × sparse products
    with them are two orders of magnitude slower than sparse × dense.
    """
    rows = np.flatnonzero(labels >= 0)
    counts = np.bincount(labels[rows], minlength=n_domains).astype(np.float64)
    ind = sparse.csr_matrix(
        (1.0 / np.maximum(counts[labels[rows]], 1.0), (labels[rows], rows)),
        shape=(n_domains, X.shape[0]),
    )
    return np.asarray((ind @ X).todense())


@dataclass
class DomainFit:
    """The learned classifier, folded into feature space, and out-of-fold probabilities."""

    names: list[str]
    coef: np.ndarray  # (D, F): logits = X · coefᵀ + bias
    bias: np.ndarray  # (D,)
    oof_proba: np.ndarray  # (u, D) out-of-fold p(d | x) per distinct prompt
    oof_accuracy: float


def fit_domains(
    X: sparse.csr_matrix, labels: np.ndarray, names: list[str], folds: np.ndarray, seed: int = 0
) -> DomainFit:
    """Fit the classifier on prompts with a domain; OOF probabilities for every prompt."""
    d = len(names)
    n_folds = int(folds.max()) + 1
    sims = np.zeros((X.shape[0], d))
    for f in range(n_folds):
        train = np.where(folds != f, labels, -1)
        test = np.flatnonzero(folds == f)
        sims[test] = X[test] @ _centroids(X, train, d).T
    scale = sims[labels >= 0].std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    rows = np.flatnonzero(labels >= 0)
    # At most DOMAIN_FIT_ROWS prompts per domain, weighted back to the domain's share, keep the
    # fit to well under a second; it has only D × D weights to learn.
    counts = np.bincount(labels[rows], minlength=d)
    rank = np.zeros(rows.size, dtype=np.int64)
    for c in range(d):
        at = labels[rows] == c
        rank[at] = np.arange(int(at.sum()))
    keep = rows[rank < DOMAIN_FIT_ROWS]
    weight = np.maximum(counts[labels[keep]] / DOMAIN_FIT_ROWS, 1.0)
    lr = LogisticRegression(C=3.0, max_iter=300, random_state=seed)
    # One BLAS thread: on a busy machine, threads fighting over (D × D) products made this fit
    # a hundred times slower.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr.fit(sims[keep] / scale, labels[keep], sample_weight=weight)
    # Classes absent from the labelled rows cannot happen (names come from the labels), but
    # keep the column order explicit.
    w = np.zeros((d, d))
    b = np.full(d, -30.0)
    w[lr.classes_] = lr.coef_ / scale
    b[lr.classes_] = lr.intercept_
    oof = _softmax(sims @ w.T + b)
    acc = float(np.mean(oof[rows].argmax(axis=1) == labels[rows])) if rows.size else 0.0
    centroids = _centroids(X, labels, d)
    coef = w @ centroids
    return DomainFit(names, coef, b, oof, acc)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def domain_means(
    quality: np.ndarray, labelled: np.ndarray, dom: np.ndarray, n_domains: int
) -> tuple[np.ndarray, np.ndarray]:
    """(means, measured), each (D, K): mean quality per domain and model over the records
    given (dom < 0 ignored), and whether it rests on at least MIN_MEASURED records."""
    k = quality.shape[1]
    sums = np.zeros((n_domains, k))
    counts = np.zeros((n_domains, k))
    rows = dom >= 0
    q = np.where(labelled, quality, 0.0)[rows]
    np.add.at(sums, dom[rows], q)
    np.add.at(counts, dom[rows], labelled[rows].astype(np.float64))
    measured = counts >= MIN_MEASURED
    return np.where(measured, sums / np.maximum(counts, 1.0), 0.0), measured


def shrink(
    score: np.ndarray, p: np.ndarray, means: np.ndarray, measured: np.ndarray, strength: np.ndarray
) -> np.ndarray:
    """`DomainPrior.apply`, for training-time arrays (NaN scores stay NaN)."""
    num = p @ np.where(measured, means, 0.0)
    den = p @ measured.astype(np.float64)
    return score + strength * (num - score * den)


def choose_strength(
    score: np.ndarray,
    p: np.ndarray,
    fold_means: Sequence[tuple[np.ndarray, np.ndarray]],
    fold: np.ndarray,
    model_group: np.ndarray,
    group_aiq: Callable[[np.ndarray], dict[int, float]],
    grid: Sequence[float] = STRENGTH_GRID,
) -> tuple[np.ndarray, dict[int, dict[float, float]]]:
    """Per-model strength: for each group of models (one source's model set), the grid value
    whose shrunk out-of-fold scores route best (highest AIQ; ties to the weaker strength).

    `score` (n, K) OOF scores, `p` (n, D) OOF domain probabilities, `fold_means[f]` the
    domain means computed without fold f, `fold` (n,) each record's fold, `model_group` (K,)
    the group whose AIQ decides each model's strength, `group_aiq(scores)` → {group: AIQ}.
    """
    table: dict[int, dict[float, float]] = {}
    for a in grid:
        shrunk = score.copy()
        for f, (means, measured) in enumerate(fold_means):
            at = fold == f
            shrunk[at] = shrink(score[at], p[at], means, measured, np.full(score.shape[1], a))
        for g, v in group_aiq(shrunk).items():
            table.setdefault(g, {})[a] = v
    best = {g: max(sorted(by), key=lambda a: by[a]) for g, by in table.items()}  # ties: weaker
    strength = np.array([best.get(int(g), 0.0) for g in model_group], dtype=np.float64)
    return strength, table
