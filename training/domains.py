"""Domains learned from the training data: a prompt → domain classifier and per-domain means.

Within a benchmark, a prompt's text says little about which model will be right; which
benchmark (domain) it comes from says a lot. The `task` column of the training records names the
domain; it is a training-time target only: at request time the domain is predicted from the
prompt's features.

The classifier is a one-vs-rest logistic regression on the router's features fitted by SGD
(seconds, where liblinear per domain takes minutes), calibrated by a multinomial regression on
its out-of-fold logits (D × D weights), so p(d | x) = softmax(x · (W C)ᵀ + W c + b) is one
more block of columns in a linear head.

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
from sklearn.linear_model import LogisticRegression, SGDClassifier
from threadpoolctl import threadpool_limits

__all__ = [
    "DomainFit",
    "DomainLogits",
    "STRENGTH_GRID",
    "choose_strength",
    "domain_labels",
    "domain_logits",
    "domain_means",
    "fit_domains",
    "shrink",
]

# A domain needs this many distinct training prompts to be learned; rarer tasks are unlabelled.
MIN_DOMAIN_PROMPTS = 20
# A model's domain mean is used only where it was measured on at least this many records.
MIN_MEASURED = 5
DOMAIN_FIT_ROWS = 600
# The one-vs-rest classifier: chosen on the bundled train side (3-fold accuracy of the task on
# DCRouter's 14 tasks: 0.886, against 0.870 at alpha 1e-5 and 0.780 for nearest centroids).
SGD_ALPHA = 1e-4
SGD_EPOCHS = 10
# Six strengths: a finer grid moved the bundled data's CV AIQ by < 0.001 and cost twice the time.
STRENGTH_GRID: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


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


@dataclass
class DomainFit:
    """The learned classifier, folded into feature space, and out-of-fold probabilities."""

    names: list[str]
    coef: np.ndarray  # (D, F): logits = X · coefᵀ + bias
    bias: np.ndarray  # (D,)
    oof_proba: np.ndarray  # (u, D) out-of-fold p(d | x) per distinct prompt
    oof_accuracy: float


def _sgd(
    X: sparse.csr_matrix, y: np.ndarray, d: int, n_jobs: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One-vs-rest logistic regression by SGD: (D, F) coefficients and (D,) intercepts."""
    # tol=None: exactly SGD_EPOCHS epochs, and no ConvergenceWarning, so no warnings filter is
    # needed. That matters: the trainer runs these fits on a thread, and `catch_warnings` swaps
    # the process-wide filter list, which two threads entering and leaving it would scramble.
    clf = SGDClassifier(
        loss="log_loss",
        alpha=SGD_ALPHA,
        max_iter=SGD_EPOCHS,
        tol=None,
        random_state=seed,
        n_jobs=n_jobs,
    )
    clf.fit(X, y)
    coef = np.zeros((d, X.shape[1]))
    bias = np.full(d, -30.0)
    if len(clf.classes_) == 2:  # sklearn keeps one row for two classes
        coef[clf.classes_[1]], bias[clf.classes_[1]] = clf.coef_[0], clf.intercept_[0]
        coef[clf.classes_[0]], bias[clf.classes_[0]] = -clf.coef_[0], -clf.intercept_[0]
    else:
        coef[clf.classes_], bias[clf.classes_] = clf.coef_, clf.intercept_
    return coef, bias


@dataclass
class DomainLogits:
    """The one-vs-rest fits: out-of-fold logits of every prompt, and the fit on all of them."""

    oof: np.ndarray  # (u, D)
    coef: np.ndarray  # (D, F)
    bias: np.ndarray  # (D,)


def domain_logits(
    X: sparse.csr_matrix,
    labels: np.ndarray,
    d: int,
    folds: np.ndarray,
    seed: int = 0,
    n_jobs: int = 1,
) -> DomainLogits:
    """The SGD fits of `fit_domains` (one per fold, one on every prompt with a domain): the
    slow part, safe to run on a thread (it touches no process-wide state)."""
    n_folds = int(folds.max()) + 1
    raw = np.zeros((X.shape[0], d))
    for f in range(n_folds):
        train = np.flatnonzero((folds != f) & (labels >= 0))
        test = np.flatnonzero(folds == f)
        coef, bias = _sgd(X[train], labels[train], d, n_jobs, seed)
        raw[test] = X[test] @ coef.T + bias
    rows = np.flatnonzero(labels >= 0)
    coef, bias = _sgd(X[rows], labels[rows], d, n_jobs, seed)
    return DomainLogits(raw, coef, bias)


def fit_domains(
    X: sparse.csr_matrix,
    labels: np.ndarray,
    names: list[str],
    folds: np.ndarray,
    seed: int = 0,
    n_jobs: int = 1,
    logits: DomainLogits | None = None,
) -> DomainFit:
    """Fit the classifier on prompts with a domain; OOF probabilities for every prompt.

    `logits`: `domain_logits` of the same arguments, computed beforehand (on a thread)."""
    d = len(names)
    if logits is None:
        logits = domain_logits(X, labels, d, folds, seed, n_jobs)
    raw = logits.oof
    rows = np.flatnonzero(labels >= 0)
    # Calibration: a multinomial regression on the OOF one-vs-rest logits (D × D weights), on
    # at most DOMAIN_FIT_ROWS prompts per domain, weighted back to the domain's share.
    counts = np.bincount(labels[rows], minlength=d)
    rank = np.zeros(rows.size, dtype=np.int64)
    for c in range(d):
        at = labels[rows] == c
        rank[at] = np.arange(int(at.sum()))
    keep = rows[rank < DOMAIN_FIT_ROWS]
    weight = np.maximum(counts[labels[keep]] / DOMAIN_FIT_ROWS, 1.0)
    lr = LogisticRegression(C=1.0, max_iter=300, random_state=seed)
    # One BLAS thread: on a busy machine, threads fighting over (D × D) products made this fit
    # a hundred times slower.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        lr.fit(raw[keep], labels[keep], sample_weight=weight)
    w = np.zeros((d, d))
    b = np.full(d, -30.0)
    if len(lr.classes_) > 2:
        w[lr.classes_], b[lr.classes_] = lr.coef_, lr.intercept_
    else:  # binary: one row, the second class's log-odds; split it symmetrically
        w[lr.classes_[1]], b[lr.classes_[1]] = lr.coef_[0] / 2, lr.intercept_[0] / 2
        w[lr.classes_[0]], b[lr.classes_[0]] = -lr.coef_[0] / 2, -lr.intercept_[0] / 2
    oof = _softmax(raw @ w.T + b)
    acc = float(np.mean(oof[rows].argmax(axis=1) == labels[rows])) if rows.size else 0.0
    return DomainFit(names, w @ logits.coef, w @ logits.bias + b, oof, acc)


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
    """`DomainPrior.apply` for training-time arrays; `strength` is (D, K) or a scalar."""
    den = np.where(measured, np.broadcast_to(strength, means.shape), 0.0)
    return score + p @ (den * means) - score * (p @ den)


def choose_strength(
    score: np.ndarray,
    p: np.ndarray,
    fold_means: Sequence[tuple[np.ndarray, np.ndarray]],
    fold: np.ndarray,
    dom: np.ndarray,
    groups: Sequence[np.ndarray],
    subset_aiq: Callable[[np.ndarray, np.ndarray], float | None],
    grid: Sequence[float] = STRENGTH_GRID,
) -> tuple[np.ndarray, dict[tuple[int, int], dict[float, float]]]:
    """(D, K) strengths: for each domain and model set (one source's models), the grid value
    whose shrunk out-of-fold scores route that set's records of that domain best (highest
    AIQ; ties to the weaker strength). Cells with too few records keep strength 0.

    `score` (n, K) OOF scores, `p` (n, D) OOF domain probabilities, `fold_means[f]` the
    domain means computed without fold f, `fold` (n,) each record's fold, `dom` (n,) its true
    domain (-1 none), `groups` record indices per model set, `subset_aiq(scores, rows)` the
    routing AIQ of some records.
    """
    n_domains = p.shape[1]
    k = score.shape[1]
    cells = []
    for gi, g in enumerate(groups):
        for d in range(n_domains):
            rows = g[dom[g] == d]
            if rows.size >= MIN_DOMAIN_PROMPTS:
                cells.append((gi, d, rows))
    table: dict[tuple[int, int], dict[float, float]] = {}
    for a in grid:
        shrunk = score.copy()
        for f, (means, measured) in enumerate(fold_means):
            at = fold == f
            shrunk[at] = shrink(score[at], p[at], means, measured, np.float64(a))
        for gi, d, rows in cells:
            v = subset_aiq(shrunk, rows)
            if v is not None:
                table.setdefault((gi, d), {})[a] = v
    strength = np.zeros((n_domains, k))
    assigned = np.zeros((n_domains, k), dtype=bool)
    for (gi, d), by in table.items():
        best = max(sorted(by), key=lambda a: by[a])  # ties: the weaker strength
        cols = _group_models(groups[gi], score)
        free = cols[~assigned[d, cols]]
        strength[d, free] = best
        assigned[d, free] = True
    return strength, table


def _group_models(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The models scored on a model set's first record."""
    return np.flatnonzero(np.isfinite(score[rows[0]]))
