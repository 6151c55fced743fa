"""Domains learned from the training data: a prompt → domain classifier and per-domain means.

Within a benchmark, a prompt's text says little about which model will be right; which
benchmark (domain) it comes from says a lot. The `task` column of the training records names the
domain; it is a training-time target only: at request time the domain is predicted from the
prompt's features. A finer `domain` inside a task (MMLU's 57 subjects) refines it: the finer
domains are grouped by which models do well on them (`group_finer_domains`, at most
`DOMAIN_GROUPS` per task), and each group is a domain ("mmlu/moral_disputes+11").

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
from typing import NamedTuple

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, SGDClassifier
from threadpoolctl import threadpool_limits

__all__ = [
    "DomainFit",
    "DOMAIN_GROUPS",
    "DomainLabels",
    "DomainLogits",
    "STRENGTH_GRID",
    "choose_strength",
    "domain_labels",
    "domain_logits",
    "domain_means",
    "group_finer_domains",
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
# Finer domains of one task are grouped into at most this many by their models' mean quality
# (`group_finer_domains`). Chosen by 5-fold cross-validation on RouteLLM's train side (MMLU APGR
# out of fold): no finer domains 0.6543, 4 groups 0.6581, 8 0.6542, 16 0.6602, all 57 subjects
# 0.6644 (16: 0.6629 once the served classifier became the fold fits' mean, below); but 57
# domains doubled the default model's training time and made a decision 38% slower (each
# domain is a column of the served head), where 16 cost ~5 s of training.
DOMAIN_GROUPS = 16
# Six strengths: a finer grid moved the bundled data's CV AIQ by < 0.001 and cost twice the time.
STRENGTH_GRID: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def group_finer_domains(
    tasks: Sequence[str | None],
    domains: Sequence[str | None],
    quality: np.ndarray,
    labelled: np.ndarray,
    max_groups: int = DOMAIN_GROUPS,
    seed: int = 0,
) -> tuple[list[str | None], dict[str, list[str]]]:
    """Each record's finer domain replaced by its group's name, and each group's members.

    Within a task, the finer domains (MMLU's subjects, say) are clustered by k-means on the
    mean quality of the models measured on all of them (weighted by their record counts) into
    at most `max_groups` groups: what a domain prior needs is which models do well, and a few
    groups are cheap where each domain is a column of the served head. A group is named
    "<its largest member>+<how many others>" (just the member when alone). A task with one
    finer domain, or whose finer domains share no measured model, keeps them as they are;
    `max_groups` 0 drops finer domains.

    `quality`, `labelled`: (records, K) outcomes, as `Targets` holds them.
    """
    if max_groups <= 0:
        return [None] * len(domains), {}
    by_task: dict[str | None, dict[str, list[int]]] = {}
    for i, (t, d) in enumerate(zip(tasks, domains, strict=True)):
        if d:
            by_task.setdefault(t, {}).setdefault(d, []).append(i)
    rename: dict[tuple[str | None, str], str] = {}
    members: dict[str, list[str]] = {}
    for t, subs in sorted(by_task.items(), key=lambda kv: str(kv[0])):
        names = sorted(subs)
        rows = [np.asarray(subs[n]) for n in names]
        counts = np.array([r.size for r in rows], dtype=np.float64)
        measured = np.array([labelled[r].sum(axis=0) >= MIN_MEASURED for r in rows]).all(axis=0)
        group = np.arange(len(names))
        if max_groups < len(names) and measured.any():
            means = np.array(
                [
                    np.where(labelled[r], quality[r], 0.0)[:, measured].sum(axis=0)
                    / labelled[r][:, measured].sum(axis=0)
                    for r in rows
                ]
            )
            # k-means warns (an error under the tests) when asked for more clusters than there
            # are distinct points
            k = min(max_groups, len(np.unique(means, axis=0)))
            km = KMeans(n_clusters=k, n_init=10, random_state=seed)
            group = km.fit_predict(means, sample_weight=counts)
        for g in np.unique(group):
            inside = [names[j] for j in np.flatnonzero(group == g)]
            largest = max(inside, key=lambda n: (len(subs[n]), n))
            name = largest if len(inside) == 1 else f"{largest}+{len(inside) - 1}"
            members[f"{t}/{name}" if t else name] = inside
            for n in inside:
                rename[(t, n)] = name
    return [rename[(t, d)] if d else None for t, d in zip(tasks, domains, strict=True)], members


class DomainLabels(NamedTuple):
    names: list[str]  # sorted
    index: np.ndarray  # (prompts,) each prompt's domain, -1 for none
    group: np.ndarray  # (D,) each domain's task, an index into `tasks`
    tasks: list[str]  # sorted


def domain_labels(
    tasks: Sequence[str | None], domains: Sequence[str | None] | None = None
) -> DomainLabels:
    """The domains of prompts with these tasks and finer domains, and the task of each.

    A prompt's domain is "task/domain" where it names a finer `domain` that at least
    MIN_DOMAIN_PROMPTS prompts share, else its task where that many prompts share the task,
    else none.

    >>> d = domain_labels(["a"] * 20 + ["b"] * 20, [None] * 20 + ["x"] * 20)
    >>> d.names, d.index[[0, -1]].tolist(), d.group.tolist(), d.tasks
    (['a', 'b/x'], [0, 1], [0, 1], ['a', 'b'])
    """
    if domains is None:
        domains = [None] * len(tasks)
    fine = [(f"{t}/{d}" if t else d) if d else None for t, d in zip(tasks, domains, strict=True)]
    counts: dict[str, int] = {}
    for label in (*tasks, *fine):
        if label:
            counts[label] = counts.get(label, 0) + 1
    chosen: list[str | None] = []
    task_of: dict[str, str] = {}
    for t, f in zip(tasks, fine, strict=True):
        label = f if f and counts[f] >= MIN_DOMAIN_PROMPTS else t
        if label and counts[label] < MIN_DOMAIN_PROMPTS:
            label = None
        if label:
            task_of[label] = t or label
        chosen.append(label)
    names = sorted(task_of)
    index = {n: i for i, n in enumerate(names)}
    tasks_sorted = sorted(set(task_of.values()))
    group = np.array([tasks_sorted.index(task_of[n]) for n in names], dtype=np.int64)
    labels = np.array([index[c] if c else -1 for c in chosen], dtype=np.int64)
    return DomainLabels(names, labels, group, tasks_sorted)


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
    """The SGD fits of `fit_domains` (one per fold; the served fit is their mean): the slow
    part, safe to run on a thread (it touches no process-wide state)."""
    n_folds = int(folds.max()) + 1
    raw = np.zeros((X.shape[0], d))
    coef, bias = np.zeros((d, X.shape[1])), np.zeros(d)
    for f in range(n_folds):
        train = np.flatnonzero((folds != f) & (labels >= 0))
        test = np.flatnonzero(folds == f)
        c, b = _sgd(X[train], labels[train], d, n_jobs, seed)
        raw[test] = X[test] @ c.T + b
        coef += c
        bias += b
    # The served classifier is the fold fits' mean, not one more fit on every prompt. The
    # calibration below is fitted on the fold fits' logits, and a fit on all prompts gives
    # logits of another scale: on a held-out quarter of the bundled train side, the served
    # rule classified 0.944 of the prompts right with the mean, 0.790 with a full fit (17
    # tasks; 0.751 vs 0.470 with the 33 domains of the default model). It also saves a fit.
    return DomainLogits(raw, coef / n_folds, bias / n_folds)


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
    group: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[tuple[int, int], dict[float, float]]]:
    """(D, K) strengths: for each task and model set (one source's models), the grid value
    whose shrunk out-of-fold scores route that set's records of that task best (highest AIQ;
    ties to the weaker strength), for every domain of the task. Cells with too few records keep
    strength 0. The table of AIQs is keyed by (model set, task).

    `score` (n, K) OOF scores, `p` (n, D) OOF domain probabilities, `fold_means[f]` the
    domain means computed without fold f, `fold` (n,) each record's fold, `dom` (n,) its true
    domain (-1 none), `groups` record indices per model set, `subset_aiq(scores, rows)` the
    routing AIQ of some records, `group` (D,) each domain's task (default: its own).
    One strength per task, not per finer domain: the domains inside a task (57 MMLU
    subjects) have ~200 records each, too few to choose a strength on; per subject, RouteLLM's
    test-side MMLU APGR fell 0.678 → 0.671, per task it rose to 0.699.
    """
    n_domains = p.shape[1]
    k = score.shape[1]
    if group is None:
        group = np.arange(n_domains)
    cell_dom = np.where(dom >= 0, group[np.maximum(dom, 0)], -1)
    cells = []
    for gi, g in enumerate(groups):
        for d in np.unique(group):
            rows = g[cell_dom[g] == d]
            if rows.size >= MIN_DOMAIN_PROMPTS:
                cells.append((gi, int(d), rows))
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
        for dd in np.flatnonzero(group == d):
            free = cols[~assigned[dd, cols]]
            strength[dd, free] = best
            assigned[dd, free] = True
    return strength, table


def _group_models(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The models scored on a model set's first record."""
    return np.flatnonzero(np.isfinite(score[rows[0]]))
