"""Fit a router from labelled records: features, two linear heads, calibration, knob.

Pipeline (each step is a function below, so tests and the CLI can follow it):

1. the model list is every model with a labelled outcome (or direct label); all must be in
   the catalog, which supplies prices for labels and cost estimates; the records are then put
   in a canonical order (`in_canonical_order`), so the order the logs were read in does not
   change the router;
2. distinct prompts → `PromptFeaturizer` (one sparse matrix, one row per distinct prompt and
   task type; a prompt logged several times is one example whose target is its mean outcome),
   with `TrainOptions.idf_power` > 0 its hashed n-grams then weighted by their idf over those
   prompts (the weights become the featurizer's, so requests are featurised the same way);
3. targets: quality and cost per (prompt, model), best model per prompt (`training/labels.py`);
4. cross-validation on the given records only (folds keyed by a hash of the prompt text, so
   repeated prompts never straddle folds), on a hash-chosen sample of at most
   `TrainOptions.cv_max_prompts` distinct prompts, picks the regularisation C per model and per
   head from `TrainOptions.c_grid`, and yields out-of-fold (OOF) scores for that sample; with
   `calibrate_per_model` (the default), models the sample under-represents are cross-validated
   again at their C on up to `cv_max_prompts` of their own prompts, with the gain heads
   (`training/gain.py`) in the same pass;
5. calibration on the OOF scores: Platt scaling per model for the quality and gain heads, a
   temperature for the classifier head; all folded into the final weights; gain heads kept
   where they beat the quality heads, domain strengths (`training/domains.py`);
6. the OOF cost–quality curves choose the default head (higher AIQ wins) and the default knob
   (the cheapest setting that still matches the best single model, or a user's budget target);
7. final fits on all distinct prompts at the chosen C: they run in the fitting workers from the
   end of step 4 on, while this process does steps 5 and 6.

Why a CV sample: every (head, model) is fitted |c_grid| × cv_folds times in CV and once at the
end, so CV is where the time goes; capping it makes training cost grow like the final fits
alone. The default cap (8,000) was chosen on the bundled data's train side only (an inner
split: train on three quarters, route the held-out quarter): with the cap, held-out AIQ was
within 0.001 of uncapped CV on each dataset (RouteLLM 0.778, RouterBench 0.852, DCRouter
0.639); at 5,000 RouterBench fell 0.0015, at 3,000 by 0.005.

Each per-model head is a binary logistic regression trained on the prompts where that model has
a labelled outcome: the quality head regresses quality (fractional qualities become two weighted
rows, a standard soft-label trick), the classifier head is one-vs-rest on "this model is the best
one", normalised with a softmax over the candidates a request allows.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math
import multiprocessing
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from scipy import optimize, sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from features.extractor import PromptFeaturizer, idf_weights
from models.catalog import Catalog
from models.errors import DataError
from models.router import DomainPrior, KnobMix, LinearHead, Router, mixture_draw
from training import metrics
from training.curves import KNOB_GRID, choose, choose_mixed, curve_aiq, sweep
from training.domains import (
    DOMAIN_GROUPS,
    DomainFit,
    choose_strength,
    domain_labels,
    domain_logits,
    domain_means,
    fit_domains,
    group_finer_domains,
    shrink,
)
from training.gain import choose_gain, model_groups, references
from training.labels import Targets, build_targets
from training.policy import choose_policy
from training.progress import featurise, track
from training.records import Record, in_canonical_order

__all__ = ["TrainOptions", "TrainResult", "fold_ids", "train"]

Progress = Callable[[str], None]

CV_MAX_PROMPTS = 8_000


@dataclass
class TrainOptions:
    """Training options; validated on construction and stored in the artifact manifest."""

    tolerance: float = 0.0
    c_grid: tuple[float, ...] = (0.1, 0.3, 1.0)
    cv_folds: int = 3
    strategy: str = "auto"  # "auto" | "quality" | "classifier"
    target_budget: float | None = None  # router cost ≤ this fraction of the strongest model's
    target_strong_share: float | None = None  # share of calls to the strongest model ≤ this
    knob: float | None = None  # an explicit default knob instead of a calibrated one
    n_hash_features: int = 2**17
    random_state: int = 0
    n_jobs: int = 2
    # Cross-validation (C, calibration, default head and knob) runs on at most this many
    # distinct prompts, a hash-chosen sample; the final fits use every record.
    cv_max_prompts: int = CV_MAX_PROMPTS
    # Calibrate each model on out-of-fold logits of up to `cv_max_prompts` of its own prompts
    # (at the C chosen on the shared sample), not only on its part of the shared sample: better
    # routing for sources that the shared sample under-represents (pooled logs). It costs a
    # second cross-validation of those models: ~20% more time on the 100k-record benchmark.
    calibrate_per_model: bool = True
    # Finer domains inside a task (a log's `domain`, or `meta.subject`: MMLU's 57 subjects in
    # the bundled RouteLLM data) become at most this many domains per task, grouped by their
    # models' mean quality (`training/domains.py`); 0 ignores them.
    domain_groups: int = DOMAIN_GROUPS
    # The hashed n-grams are weighted by idf ** idf_power, idf from the training prompts
    # (`features.extractor.idf_weights`); 0 leaves them unweighted. Off by default: applying
    # the weights costs ~5 µs per decision (random reads of one weight per n-gram column), which
    # breaks the decision-time target (≤ 2.5× the seed's ContentRouter); their gain is small
    # (README, "Offline evaluation": cross-validation on the train sides preferred power 1 for
    # the pooled model, mean AIQ +0.0013 over the three sources).
    idf_power: float = 0.0

    def __post_init__(self) -> None:
        self.c_grid = tuple(float(c) for c in self.c_grid)
        if not self.c_grid or any(not (c > 0 and math.isfinite(c)) for c in self.c_grid):
            raise ValueError("c_grid: every value must be a positive finite number")
        if not (0.0 <= self.tolerance <= 1.0):
            raise ValueError("tolerance: must be between 0 and 1")
        if not isinstance(self.calibrate_per_model, bool):
            raise ValueError(
                f"calibrate_per_model: must be true or false, got {self.calibrate_per_model!r}"
            )
        for name in (
            "cv_folds",
            "n_hash_features",
            "random_state",
            "n_jobs",
            "cv_max_prompts",
            "domain_groups",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(f"{name}: must be a whole number, got {value!r}")
        if isinstance(self.idf_power, bool) or not isinstance(self.idf_power, int | float):
            raise ValueError(f"idf_power: must be a number, got {self.idf_power!r}")
        self.idf_power = float(self.idf_power)
        if not (0.0 <= self.idf_power <= 4.0):
            raise ValueError("idf_power: must be between 0 and 4")
        if not (0 <= self.domain_groups <= 1000):
            raise ValueError("domain_groups: must be between 0 and 1000")
        if not (2 <= self.cv_folds <= 20):
            raise ValueError("cv_folds: must be between 2 and 20")
        if self.strategy not in ("auto", "quality", "classifier"):
            raise ValueError("strategy: must be one of auto, quality, classifier")
        targets = [
            x for x in (self.target_budget, self.target_strong_share, self.knob) if x is not None
        ]
        if len(targets) > 1:
            raise ValueError("knob: give at most one of target_budget, target_strong_share, knob")
        if self.target_budget is not None and not (0 < self.target_budget <= 10):
            raise ValueError("target_budget: must be a fraction > 0 (e.g. 0.3 for 30%)")
        if self.target_strong_share is not None and not (0 <= self.target_strong_share <= 1):
            raise ValueError("target_strong_share: must be between 0 and 1")
        if self.knob is not None and not (self.knob >= 0 and math.isfinite(self.knob)):
            raise ValueError("knob: must be a finite number >= 0")
        if not (2**8 <= self.n_hash_features <= 2**22):
            raise ValueError("n_hash_features: must be between 2**8 and 2**22")
        if self.cv_max_prompts < 100:
            raise ValueError("cv_max_prompts: must be at least 100")


@dataclass
class TrainResult:
    router: Router
    report: dict[str, Any] = field(default_factory=dict)


def fold_ids(texts: Sequence[str], k: int) -> np.ndarray:
    """CV fold per prompt, from bytes of sha256(text) that the 80/20 split rule does not use."""
    return np.array(
        [int(hashlib.sha256(t.encode("utf-8")).hexdigest()[8:16], 16) % k for t in texts],
        dtype=np.int64,
    )


def _dense_scale(X: sparse.csr_matrix, n_dense: int) -> np.ndarray:
    """1 / max |value| per dense column on the training rows (1 for all-zero columns)."""
    peak = np.asarray(abs(X[:, :n_dense]).max(axis=0).todense()).ravel()
    return np.where(peak > 0, 1.0 / np.where(peak > 0, peak, 1.0), 1.0)


class _RowSlicer:
    """X[rows] for a run of fits, the last slice reused while the rows repeat (one per process).

    The models of one source share their prompts, and fits are dispatched largest first, so a
    source's fits come one after another with the same rows. Each fitting worker slices for
    itself: joblib hands the workers the whole matrix once per stage as a memory map (one
    array, one file; `max_nbytes`), so the main process no longer pickles a slice per fit.
    When it did, it kept a core busy feeding the two workers and a stage ran only 1.25–1.4×
    faster on two cores than on one. Nothing downstream modifies a slice.
    """

    def __init__(self) -> None:
        self._source: str | weakref.ref[sparse.csr_matrix] | None = None
        self._rows = b""
        self._last: sparse.csr_matrix | None = None

    def __call__(self, X: sparse.csr_matrix, rows: np.ndarray) -> sparse.csr_matrix:
        # A worker unpickles a new matrix object per fit over the same memory-mapped file, so
        # there the file names the matrix; in-process (one job) the matrix object does.
        where = getattr(X.data, "filename", None)
        key = rows.tobytes()
        same = (
            self._source == where
            if where is not None
            else isinstance(self._source, weakref.ref) and self._source() is X
        )
        if not same or key != self._rows or self._last is None:
            self._source = where if where is not None else weakref.ref(X)
            self._rows, self._last = key, X[rows]
        return self._last

    def clear(self) -> None:
        self._source, self._rows, self._last = None, b"", None


_ROWS = _RowSlicer()

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_worker_tuned = False


def _keep_freed_memory() -> None:
    """In a fitting worker (a loky process of joblib's), have glibc keep freed memory for reuse.

    Every liblinear fit copies its rows into a buffer of its own (~9 KB per prompt), and glibc
    serves any buffer over 32 MB with a fresh mmap and hands it back on free, so each fit
    faulted its pages in anew: 1.9 M page faults and ~16 s of system time in the 100k-record
    training benchmark. From the heap, kept after free, the next fit reuses them (0.4 M
    faults, 11 s). A worker's memory stays at its peak until joblib retires it (idle for five
    minutes); the calling process is never changed. Elsewhere than glibc, nothing happens.
    """
    global _worker_tuned
    if _worker_tuned:
        return
    _worker_tuned = True
    if not multiprocessing.current_process().name.startswith("LokyProcess"):
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)


def _worker_ready() -> bool:
    """Nothing: unpickling it imports this module, and what fitting needs, in a worker."""
    return True


def _fit_rows(
    X: sparse.csr_matrix, rows: np.ndarray, pos: np.ndarray, neg: np.ndarray, C: float, seed: int
) -> tuple[np.ndarray, float]:
    """`_fit_weighted` on X[rows] (runs in a worker process)."""
    _keep_freed_memory()
    return _fit_weighted(_ROWS(X, rows), pos, neg, C, seed)


class _InBackground:
    """`fn(*args)` on a daemon thread; `result()` waits and returns its value or raises its error.

    For work whose inner loops release the GIL (sklearn's SGD), run while the fitting workers
    are busy: the cores take turns instead of the stage after waiting for it. A daemon thread,
    so that an interrupted training does not wait for it to finish.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn(*args)
            except BaseException as e:  # handed to the caller of result()
                self._error = e

        self._thread = threading.Thread(target=run, name="promptroute-train", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


# --------------------------------------------------------------------------- binary fits
# liblinear's stopping tolerance. 1e-2 instead of sklearn's 1e-4: on the bundled train side the
# held-out loss of every fit we compared (3 models × C in 0.3, 1, 5) agreed to 1e-5, and the
# fits are 30-40% faster.
_LIBLINEAR_TOL = 1e-2
# Arrays larger than this go to the fitting workers as memory maps (joblib), not pickles.
_SHARE_BYTES = "1M"


def _fit_weighted(
    X: sparse.csr_matrix, pos: np.ndarray, neg: np.ndarray, C: float, seed: int
) -> tuple[np.ndarray, float]:
    """Logistic regression where row i is a positive example with weight `pos[i]` and a negative
    one with weight `neg[i]` (a soft target y is pos = y, neg = 1 − y); returns (coef, intercept).

    A row with both weights becomes a positive and a negative row, the standard soft-label
    trick. With a single class present the best constant is the clipped log-odds of the mean.
    """
    total_pos, total = float(pos.sum()), float(pos.sum() + neg.sum())
    if total_pos <= 0.0 or total_pos >= total:
        mean = float(np.clip(total_pos / max(total, 1e-12), 1e-3, 1 - 1e-3))
        return np.zeros(X.shape[1]), math.log(mean / (1 - mean))
    p_rows, n_rows = np.flatnonzero(pos > 0), np.flatnonzero(neg > 0)
    Xf = X[np.concatenate([p_rows, n_rows])]
    yf = np.concatenate([np.ones(p_rows.size, np.int64), np.zeros(n_rows.size, np.int64)])
    wf = np.concatenate([pos[p_rows], neg[n_rows]])
    # The dual problem is the cheaper one here (fewer prompts than hashed columns): same
    # solution, 2-4x faster than the primal in our measurements.
    clf = LogisticRegression(
        C=C, solver="liblinear", dual=True, tol=_LIBLINEAR_TOL, max_iter=5000, random_state=seed
    )
    with warnings.catch_warnings():
        # A fit that stops at max_iter is still a usable, regularised solution; the CV loss
        # that chose C already reflects it.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(Xf, yf, sample_weight=wf)
    return clf.coef_[0].copy(), float(clf.intercept_[0])


def _weighted_loss(z: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> float:
    """Weighted mean cross-entropy of logits z (`_binary_loss` when pos = y and neg = 1 − y)."""
    total = float(pos.sum() + neg.sum())
    return float(np.sum(pos * np.logaddexp(0.0, -z) + neg * np.logaddexp(0.0, z)) / total)


def _binary_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of logits z against soft targets y."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@dataclass(frozen=True)
class _Prompts:
    """The distinct prompts behind the records (prompt and task type: what features see).

    Logs repeat prompts (resampled benchmarks, retried requests); each distinct prompt is
    featurised once and is one row per fit, its target the mean outcome of its records.
    """

    inverse: np.ndarray  # (n,) index of each record's distinct prompt
    first: np.ndarray  # (u,) the first record of each distinct prompt
    folds: np.ndarray  # (u,) CV fold, `fold_ids` of the prompt text
    in_cv: np.ndarray  # (u,) whether cross-validation uses the prompt
    rank: np.ndarray  # (u,) the prompt's place in the sample order (0 is taken first)


def _distinct_prompts(records: Sequence[Record], k: int, cv_max_prompts: int) -> _Prompts:
    """Group records by prompt; pick the (at most `cv_max_prompts`) prompts CV runs on.

    The CV sample is the prompts with the smallest bytes 20–27 of sha256(text), which neither
    the 80/20 split, the folds nor the streaming trainer's holdout read: a fixed, order-free
    sample with every copy of a prompt on the same side.
    """
    index: dict[tuple[Any, str | None], int] = {}
    inverse = np.fromiter(
        (index.setdefault((r.prompt, r.task_type), len(index)) for r in records),
        dtype=np.int64,
        count=len(records),
    )
    first = np.full(len(index), -1, dtype=np.int64)
    first[inverse[::-1]] = np.arange(len(records) - 1, -1, -1)
    digests = [hashlib.sha256(records[i].prompt.text.encode("utf-8")).hexdigest() for i in first]
    folds = np.array([int(d[8:16], 16) % k for d in digests], dtype=np.int64)
    keys = np.array([int(d[40:56], 16) for d in digests], dtype=np.uint64)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(keys, kind="stable")] = np.arange(len(first))
    return _Prompts(inverse, first, folds, rank < cv_max_prompts, rank)


def _measured(t: Targets, prompts: _Prompts) -> np.ndarray:
    """(u, K) bool: whether model j has a labelled outcome on distinct prompt i."""
    rec, mod = np.nonzero(t.labelled)
    own = np.zeros((len(prompts.first), t.quality.shape[1]), dtype=bool)
    own[prompts.inverse[rec], mod] = True
    return own


def _model_samples(own: np.ndarray, prompts: _Prompts, cap: int) -> np.ndarray:
    """(u, K) bool: per model, the (at most `cap`) prompts it is calibrated on, of those it
    was measured on (`own`, from `_measured`).

    The shared CV sample spreads `cap` prompts over every source, so a source with many
    models and few prompts gets a small share of its own prompts (DCRouter's models: 41% of
    theirs in the bundled data), and heads calibrated on out-of-fold logits of models fitted on
    that little route its prompts worse than a source-only model does. Each model's sample is
    the first `cap` of its own prompts in the same hash order, so it contains the model's
    part of the shared sample.
    """
    sample = np.zeros_like(own)
    for j in range(own.shape[1]):
        rows = np.flatnonzero(own[:, j])
        if rows.size > cap:
            rows = rows[np.argsort(prompts.rank[rows], kind="stable")[:cap]]
        sample[rows, j] = True
    return sample


def _targets_for(
    head: str, t: Targets, j: int, refs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and soft targets of model j for `head`.

    The gain head of model j learns (1 + q_ref − q_j) / 2 on the records where both j and its
    reference model `refs[j]` were measured: the expected gain of the reference over j.
    """
    if head == "quality":
        rows = np.flatnonzero(t.labelled[:, j])
        return rows, t.quality[rows, j]
    if head == "gain":
        ref = -1 if refs is None else int(refs[j])
        if ref < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows = np.flatnonzero(t.labelled[:, j] & t.labelled[:, ref])
        return rows, (1.0 + t.quality[rows, ref] - t.quality[rows, j]) / 2.0
    rows = np.flatnonzero(t.label >= 0)
    avail = t.labelled[rows, j] | (t.label[rows] == j)
    rows = rows[avail]
    return rows, (t.label[rows] == j).astype(np.float64)


def _prompt_weights(
    head: str, t: Targets, j: int, prompts: _Prompts, refs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per distinct prompt, the mean soft target (pos) of model j's records for `head` and its
    complement (neg); both 0 where the prompt has no such record.

    A prompt is one example however often it was logged, its target the mean outcome: the
    rule `training/logs.py` applies to repeated single-call rows. Weighting it by its count
    instead would give it C × count (liblinear slows down several-fold as C grows) and let
    resampled or retried logs regularise differently from the same prompts logged once.
    """
    rows, y = _targets_for(head, t, j, refs)
    u = len(prompts.first)
    at = prompts.inverse[rows]
    count = np.bincount(at, minlength=u).astype(np.float64)
    pos = np.bincount(at, weights=y, minlength=u) / np.maximum(count, 1.0)
    return pos, np.where(count > 0, 1.0 - pos, 0.0)


_Job = tuple[str, int, np.ndarray, np.ndarray, np.ndarray]  # head, model, rows, pos, neg


def _fit_jobs(
    heads: Sequence[str],
    t: Targets,
    prompts: _Prompts,
    *,
    cv_only: bool,
    refs: np.ndarray | None = None,
    only: dict[str, np.ndarray] | None = None,
    sample: np.ndarray | None = None,
) -> list[_Job]:
    """Every (head, model) fit: the distinct prompts it trains on (those of the CV sample if
    `cv_only`: the shared one, or model j's column of `sample`) and their positive and
    negative weights. Gain fits exist only for models with a reference; `only` restricts a
    head to the models it names (bool per model)."""
    jobs = []
    for head in heads:
        for j in range(t.quality.shape[1]):
            if head == "gain" and (refs is None or refs[j] < 0):
                continue
            if only is not None and head in only and not only[head][j]:
                continue
            pos, neg = _prompt_weights(head, t, j, prompts, refs)
            used = pos + neg > 0
            if cv_only:
                used &= prompts.in_cv if sample is None else sample[:, j]
            rows = np.flatnonzero(used)
            jobs.append((head, j, rows, pos[rows], neg[rows]))
    return jobs


@dataclass
class _HeadFit:
    """Per-model results of cross-validating one head."""

    oof: np.ndarray  # (n, K) out-of-fold logits at the chosen C (NaN where not applicable)
    best_c: list[float]
    cv_loss: dict[str, dict[str, float]]


def _cv_one_model(
    X: sparse.csr_matrix,
    rows: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    fj: np.ndarray,
    folds: int,
    c_grid: tuple[float, ...],
    seed: int,
) -> dict[float, np.ndarray]:
    """Out-of-fold logits of one model's prompts X[rows] for every C (runs in a worker)."""
    _keep_freed_memory()
    Xj = _ROWS(X, rows)
    out = {}
    for c in c_grid:
        z = np.full(len(pos), np.nan)
        for f in range(folds):
            tr, te = fj != f, fj == f
            if tr.any() and te.any():
                coef, b = _fit_weighted(Xj[tr], pos[tr], neg[tr], c, seed)
                z[te] = Xj[te] @ coef + b
        out[c] = z
    return out


@dataclass
class _CvPlan:
    """The jobs of one cross-validation (`_cv_plan`) and their calls, largest first."""

    heads: list[str]
    jobs: list[_Job]
    order: list[int]
    calls: list[Any]  # joblib `delayed` calls, in `order`
    refs: np.ndarray | None


def _cv_plan(
    heads: Sequence[str],
    X: sparse.csr_matrix,
    t: Targets,
    prompts: _Prompts,
    opts: TrainOptions,
    refs: np.ndarray | None = None,
    c_by_model: Sequence[float] | None = None,
    sample: np.ndarray | None = None,
    only: dict[str, np.ndarray] | None = None,
) -> _CvPlan:
    """The calls that cross-validate every (head, model) on the CV sample of prompts (per
    model with `sample`; only the models `only` names, with it); X has one row per distinct
    prompt. With `c_by_model`, model j is cross-validated at that one C only (no search)."""
    jobs = _fit_jobs(heads, t, prompts, cv_only=True, refs=refs, only=only, sample=sample)
    # One job per (head, model), largest first so that the two workers finish together; each
    # worker receives that model's rows once and does every fold and C.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][2].size)
    calls = [
        delayed(_cv_one_model)(
            X,
            rows,
            pos,
            neg,
            prompts.folds[rows],
            opts.cv_folds,
            opts.c_grid if c_by_model is None else (float(c_by_model[j]),),
            opts.random_state,
        )
        for _h, j, rows, pos, neg in (jobs[i] for i in order)
    ]
    return _CvPlan(list(heads), jobs, order, calls, refs)


def _cv_collect(
    plan: _CvPlan,
    done: Sequence[dict[float, np.ndarray]],
    t: Targets,
    prompts: _Prompts,
    opts: TrainOptions,
) -> dict[str, _HeadFit]:
    """The fits of a `_cv_plan` from its calls' results (`done`, in the plan's order): C by
    CV loss, and OOF logits spread back to the records of the sample."""
    n, k = t.quality.shape
    results = dict(zip(plan.order, done, strict=True))
    fits: dict[str, _HeadFit] = {}
    for head in plan.heads:
        fits[head] = _HeadFit(np.full((n, k), np.nan), [], {})
        fits[head].best_c = [opts.c_grid[len(opts.c_grid) // 2]] * k
    for i, (head, j, rows, pos, neg) in enumerate(plan.jobs):
        fit, by_c = fits[head], results[i]
        losses = {
            c: _weighted_loss(z, pos, neg)
            for c, z in by_c.items()
            if rows.size and not np.isnan(z).any()
        }
        if not losses:
            continue
        c_star = min(losses, key=lambda c: (losses[c], c))
        fit.best_c[j] = c_star
        # every record of model j whose prompt is in the sample gets its prompt's OOF logit
        z_prompt = np.full(len(prompts.first), np.nan)
        z_prompt[rows] = by_c[c_star]
        rec_rows, _y = _targets_for(head, t, j, plan.refs)
        fit.oof[rec_rows, j] = z_prompt[prompts.inverse[rec_rows]]
        fit.cv_loss[t.models[j]] = {f"C={c:g}": round(v, 5) for c, v in losses.items()}
    return fits


def _parallel(opts: TrainOptions, calls: Sequence[Any]) -> Iterator[Any]:
    """The calls' results in order, computed by `opts.n_jobs` workers as they are consumed
    and after: the workers go on while the caller does other work between two results."""
    return iter(Parallel(n_jobs=opts.n_jobs, max_nbytes=_SHARE_BYTES, return_as="generator")(calls))


def _take(stream: Iterator[Any], n: int, label: str) -> list[Any]:
    """The next `n` results of a `_parallel` stream, with a progress bar named `label`."""
    return list(track(itertools.islice(stream, n), label, total=n, unit="models"))


def _cross_validate(
    heads: Sequence[str], X: sparse.csr_matrix, t: Targets, prompts: _Prompts, opts: TrainOptions
) -> dict[str, _HeadFit]:
    """Cross-validate every (head, model) on the shared CV sample, searching C (`_cv_plan`)."""
    plan = _cv_plan(heads, X, t, prompts, opts)
    done = _take(_parallel(opts, plan.calls), len(plan.calls), "cross-validation")
    return _cv_collect(plan, done, t, prompts, opts)


# --------------------------------------------------------------------------- calibration
def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """a, b minimising the cross-entropy of sigmoid(a·z + b) against soft targets y."""

    def loss(p: np.ndarray) -> float:
        return _binary_loss(p[0] * z + p[1], y)

    res = optimize.minimize(
        loss, x0=np.array([1.0, 0.0]), method="L-BFGS-B", bounds=[(1e-3, 100.0), (-20.0, 20.0)]
    )
    return float(res.x[0]), float(res.x[1])


def _masked_softmax(z: np.ndarray, mask: np.ndarray) -> np.ndarray:
    z = np.where(mask, z, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _temperature(z: np.ndarray, mask: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(z / T) over the masked classes."""
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        p = _masked_softmax(z / math.exp(log_t), mask)
        return float(-np.mean(np.log(np.clip(p[rows, y], 1e-12, 1.0))))

    res = optimize.minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded")
    return math.exp(float(res.x))


# --------------------------------------------------------------------------- main entry
def _model_list(records: Sequence[Record], catalog: Catalog) -> tuple[str, ...]:
    seen: dict[str, str] = {}
    for rec in records:
        for m, o in rec.outcomes.items():
            if o.quality is not None:
                seen.setdefault(m, rec.source)
        if rec.label is not None:
            seen.setdefault(rec.label, rec.source)
    unknown = [m for m in seen if m not in catalog]
    if unknown:  # all of them at once, located at the first; one edit of the catalog fixes it
        raise DataError(seen[unknown[0]] or "logs", None, catalog.missing_message(unknown))
    if len(seen) < 2:
        raise DataError(
            "logs", None, f"need labelled outcomes for at least 2 models, found {sorted(seen)}"
        )
    return tuple(sorted(seen))


def train(
    records: Sequence[Record],
    catalog: Catalog,
    options: TrainOptions | None = None,
    *,
    progress: Progress | None = None,
    verifier_records: Sequence[Record] = (),
) -> TrainResult:
    """Train a router on `records` (see the module docstring for the steps).

    The answer verifier is trained too when `records` or `verifier_records` (logs used for the
    verifier only) carry answer text (`training/verifier.py`).
    """
    from training.verifier import train_verifiers

    opts = options or TrainOptions()
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    records = [r for r in records if r.labelled_models or r.label is not None]
    if not records:
        raise DataError("logs", None, "no record has a labelled outcome or a label")
    models = _model_list(records, catalog)  # before sorting: it names the first bad line
    records = in_canonical_order(records)
    targets = build_targets(records, models, catalog, tolerance=opts.tolerance)
    n, k = targets.quality.shape
    say(f"{n} records, {k} models; extracting features")

    # The fitting workers start (a Python process each, importing numpy, scipy and sklearn:
    # ~1.5 s of a core) while this process featurises, instead of when the first fit waits.
    warm_up = _parallel(opts, [delayed(_worker_ready)() for _ in range(opts.n_jobs)])
    featurizer = PromptFeaturizer(n_hash_features=opts.n_hash_features).fit([])
    distinct = _distinct_prompts(records, opts.cv_folds, opts.cv_max_prompts)
    firsts = [records[i] for i in distinct.first]
    # One feature row per distinct prompt; every fit below weights it by its records.
    X = featurise(featurizer, firsts)
    if opts.idf_power > 0:
        doc_freq = np.bincount(X.indices, minlength=X.shape[1])[featurizer.n_dense_ :]
        featurizer.set_column_weights(idf_weights(doc_freq, X.shape[0], opts.idf_power))
        X = featurizer.reweight(X)
    # liblinear converges several times faster when the dense block is on the hashed block's
    # scale; the scaling is folded back into the weights after the final fit.
    dense_scale = _dense_scale(X, featurizer.n_dense_)
    X = (
        X @ sparse.diags(np.concatenate([dense_scale, np.ones(X.shape[1] - featurizer.n_dense_)]))
    ).tocsr()
    n_cv = int(distinct.in_cv.sum())
    say(
        f"features: {X.shape[1]} columns, {X.shape[0]} distinct prompts in "
        f"{time.perf_counter() - t0:.1f}s; cross-validating C in {list(opts.c_grid)}"
        + (f" on a sample of {n_cv} prompts" if n_cv < X.shape[0] else "")
    )

    inp_price, out_price = catalog.prices(models)
    out_tokens = np.array(
        [
            float(np.nanmean(col))
            if np.isfinite(col).any()
            else float(catalog.typical_output_tokens)
            for col in targets.output_tokens.T
        ]
    )
    in_tok = np.array([-(-len(r.prompt.text) // 4) for r in records], dtype=np.float64)
    est_cost = in_tok[:, None] * inp_price + out_price * out_tokens
    cost_ref = float(np.median(np.max(est_cost, axis=1)))
    if not cost_ref > 0:
        cost_ref = 1.0

    heads_wanted = ["quality", "classifier"] if opts.strategy == "auto" else [opts.strategy]
    if "classifier" in heads_wanted and not (targets.label >= 0).any():
        heads_wanted.remove("classifier")
    if not heads_wanted:
        raise DataError(
            "logs", None, "no record has two labelled models or a label: nothing to learn"
        )
    if "quality" in heads_wanted and not targets.labelled.any():
        heads_wanted.remove("quality")

    # The domain classifier's SGD fits need only the features and the domains (tasks, and the
    # groups of finer domains inside them): they run on a thread while cross-validation keeps
    # the fitting workers busy. Two SGD threads (over the domains; the same coefficients as
    # one): the fits outlast cross-validation, and then a core is free (the default model took
    # 57.0 s against 60.3 s with one thread, with 16 groups of MMLU subjects).
    finer, finer_groups = group_finer_domains(
        [r.task for r in records],
        [r.domain for r in records],
        targets.quality,
        targets.labelled,
        opts.domain_groups,
        opts.random_state,
    )
    dlabels = domain_labels([r.task for r in firsts], [finer[i] for i in distinct.first])
    names, dom_prompt = dlabels.names, dlabels.index
    domain_job = (
        _InBackground(
            domain_logits, X, dom_prompt, len(names), distinct.folds, opts.random_state, 2
        )
        if "quality" in heads_wanted and len(names) >= 2
        else None
    )
    t1 = time.perf_counter()
    for _ in warm_up:
        pass
    fits = _cross_validate(heads_wanted, X, targets, distinct, opts)
    say(f"cv {', '.join(heads_wanted)} head(s): {time.perf_counter() - t1:.1f}s")

    # Calibration on out-of-fold logits, and OOF scores for the policy choices below.
    in_sample = distinct.in_cv[distinct.inverse]
    rec_fold = distinct.folds[distinct.inverse]
    report: dict[str, Any] = {
        "n_records": n,
        "models": list(models),
        "cv_folds": opts.cv_folds,
        "cv_sample": {
            "distinct_prompts": int(X.shape[0]),
            "prompts": n_cv,
            "records": int(in_sample.sum()),
        },
    }
    calib: dict[str, Any] = {}
    oof_scores: dict[str, np.ndarray] = {}
    ab: list[tuple[float, float]] = []
    gain_ab: dict[int, tuple[float, float]] = {}
    gain_keep = np.zeros(k, dtype=bool)
    prior: DomainPrior | None = None
    domain_fit: DomainFit | None = None
    # Everything the workers still have to do is known now: the second cross-validation
    # (below) and the final fits on every record at the chosen C, the gain heads' at their
    # quality head's C (a search would triple the cost), of every model with a reference: which
    # gain heads are kept is decided later, and fitting the few that are not costs less than
    # leaving the workers idle while this process calibrates and chooses. One ordered stream:
    # the second cross-validation's results come first, the final fits run on behind them.
    t_s = time.perf_counter()
    refs = references(targets) if "quality" in fits else np.full(k, -1, dtype=np.int64)
    own = _measured(targets, distinct)
    sample: np.ndarray | None = None
    grown = np.zeros(k, dtype=bool)
    if "quality" in fits and opts.calibrate_per_model:
        # C is chosen on the shared sample. With calibrate_per_model, calibration, gain heads
        # and the choices below see out-of-fold logits of each model's own sample
        # (`_model_samples`), at that C; without, of the model's part of the shared sample.
        sample = _model_samples(own, distinct, opts.cv_max_prompts)
        grown = (sample & ~distinct.in_cv[:, None]).any(axis=0)
    second = (["quality"] if grown.any() else []) + (["gain"] if (refs >= 0).any() else [])
    plan = _cv_plan(
        second,
        X,
        targets,
        distinct,
        opts,
        refs=refs,
        c_by_model=fits["quality"].best_c if "quality" in fits else None,
        sample=sample,
        only={"quality": grown},
    )
    final_c = {head: fit.best_c for head, fit in fits.items()}
    if "gain" in second:
        final_c["gain"] = fits["quality"].best_c
    final_jobs = _fit_jobs(list(final_c), targets, distinct, cv_only=False, refs=refs)
    final_order = sorted(range(len(final_jobs)), key=lambda i: -final_jobs[i][2].size)
    final_calls = [
        delayed(_fit_rows)(X, rows, pos, neg, final_c[head][j], opts.random_state)
        for head, j, rows, pos, neg in (final_jobs[i] for i in final_order)
    ]
    stream = _parallel(opts, plan.calls + final_calls)
    again = (
        _cv_collect(
            plan, _take(stream, len(plan.calls), "cross-validation"), targets, distinct, opts
        )
        if second
        else {}
    )
    if "quality" in again:
        fits["quality"].oof[:, grown] = again["quality"].oof[:, grown]
    if second:
        say(
            f"cv {' and '.join(second)} heads"
            + (f" ({int(grown.sum())} quality heads on their own samples)" if grown.any() else "")
            + f": {time.perf_counter() - t_s:.1f}s"
        )
    if "quality" in fits:
        calibrated_on = own & (distinct.in_cv[:, None] if sample is None else sample)
        report["cv_sample"]["per_model_prompts"] = dict(
            zip(models, (int(v) for v in calibrated_on.sum(axis=0)), strict=True)
        )
        ab, q_scores, calib["quality"] = _calibrate_sigmoid(fits["quality"].oof, targets.quality)
        if "gain" in again:
            gain_fit = again["gain"]
            y_gain = np.full((n, k), np.nan)
            for j in np.flatnonzero(refs >= 0):
                y_gain[:, j] = (1.0 + targets.quality[:, refs[j]] - targets.quality[:, j]) / 2.0
            g_ab, g_p, _ = _calibrate_sigmoid(gain_fit.oof, y_gain)
            gain_keep, report["gain_heads"] = choose_gain(q_scores, 2.0 * g_p - 1.0, targets, refs)
            for j in np.flatnonzero(gain_keep):
                gain_ab[int(j)] = g_ab[j]
                q_scores[:, j] = q_scores[:, refs[j]] - (2.0 * g_p[:, j] - 1.0)
            fits["gain"] = gain_fit
            say(f"gain heads kept for {int(gain_keep.sum())} of {int((refs >= 0).sum())} models")
        oof_scores["quality"] = q_scores
    if "classifier" in fits:
        oof_scores["classifier"], calib["classifier"] = _calibrate_softmax(
            fits["classifier"].oof, targets
        )
    report["calibration"] = calib

    # Policy choices on the OOF curves (records with ≥ 2 labelled models, scored by every head).
    evalable = targets.labelled.sum(axis=1) >= 2
    for s in oof_scores.values():
        evalable &= ~np.isnan(np.where(targets.labelled, s, 0.0)).any(axis=1)
    groups = model_groups(targets.labelled, evalable)

    # Domains: a classifier of the records' task, and per-domain means to shrink toward.
    if "quality" in oof_scores and groups:
        t_d = time.perf_counter()
        if domain_job is not None:
            domain_fit = fit_domains(
                X,
                dom_prompt,
                names,
                distinct.folds,
                opts.random_state,
                logits=domain_job.result(),
            )
            dom_rec = dom_prompt[distinct.inverse]
            p_rec = domain_fit.oof_proba[distinct.inverse]
            fold_means = [
                domain_means(
                    targets.quality[rec_fold != f],
                    targets.labelled[rec_fold != f],
                    dom_rec[rec_fold != f],
                    len(names),
                )
                for f in range(opts.cv_folds)
            ]

            def subset_aiq(score: np.ndarray, rows: np.ndarray) -> float | None:
                # every other knob: the AIQ of a curve barely moves, the time halves
                return _aiq_of(
                    *_group_curve(score, est_cost, cost_ref, targets, rows, KNOB_GRID[::2])
                )

            strength, table = choose_strength(
                oof_scores["quality"],
                p_rec,
                fold_means,
                rec_fold,
                dom_rec,
                groups,
                subset_aiq,
                group=dlabels.group,
            )
            means, measured = domain_means(targets.quality, targets.labelled, dom_rec, len(names))
            prior = DomainPrior(names, means, measured, strength)
            oof_scores["quality"] = _shrink_by_fold(
                oof_scores["quality"], p_rec, fold_means, rec_fold, strength
            )
            report["domains"] = {
                "names": names,
                "oof_accuracy": round(domain_fit.oof_accuracy, 4),
                "groups": {n: finer_groups[n] for n in names if n in finer_groups},
                "strength": {
                    name: {
                        m: float(strength[d, j])
                        for j, m in enumerate(models)
                        if measured[d, j] and strength[d, j] > 0
                    }
                    for d, name in enumerate(names)
                },
                "cv_aiq_by_strength": {
                    f"{dlabels.tasks[d]} / {groups[g].size} records of a {int(targets.labelled[groups[g][0]].sum())}-model set": {
                        f"{a:g}": round(v, 5) for a, v in by.items()
                    }
                    for (g, d), by in table.items()
                },
            }
            say(
                f"domains: {len(names)} learned (OOF accuracy {domain_fit.oof_accuracy:.3f}), "
                f"strengths chosen in {time.perf_counter() - t_d:.1f}s"
            )

    cv_routing = {}
    for head, s in oof_scores.items():
        cv_routing[head] = _oof_routing(s, est_cost, cost_ref, targets, evalable, rec_fold)
    report["cv_routing"] = {
        h: {kk: v for kk, v in r.items() if kk not in ("curve", "fold_curves")}
        for h, r in cv_routing.items()
    }
    if opts.strategy != "auto":
        strategy = opts.strategy
    else:
        strategy = (
            max(cv_routing, key=lambda h: cv_routing[h]["aiq"]) if cv_routing else heads_wanted[0]
        )
    policy = choose_policy(
        cv_routing.get(strategy),
        knob=opts.knob,
        target_budget=opts.target_budget,
        target_strong_share=opts.target_strong_share,
    )
    knob, mix, target_met = policy["knob"], policy["mix"], policy["met"]
    report["default_strategy"] = strategy
    report["default_knob"] = knob
    report["default_knob_mix"] = None if mix is None else mix.to_payload()
    chosen = next(
        (p for p in cv_routing.get(strategy, {}).get("curve", []) if p["knob"] == knob), None
    )
    report["default_knob_cv_point"] = chosen
    # The default head's cross-validated cost–quality curve: the service's dashboard draws it.
    report["cv_curve"] = cv_routing.get(strategy, {}).get("curve", [])
    report["knob_target_met"] = target_met
    if strategy in cv_routing:
        # The OOF curve the policy was read from, so a target can be re-applied without
        # retraining (`training.policy.retarget`).
        cv = cv_routing[strategy]
        report["cv_policy_curve"] = {
            "best_single_quality": cv["best_single_quality"],
            "curve": cv["curve"],
            "fold_curves": cv["fold_curves"],
        }
    if "target" in policy:
        kind, wanted = next(iter(policy["target"].items()))
        report["knob_target_expected_cv"] = policy.get("expected")
        # What the mix achieves out of fold, with the per-prompt draws the router will make.
        achieved = _policy_share(
            oof_scores[strategy], est_cost, cost_ref, targets, evalable, policy, firsts, distinct
        )
        report["knob_target"] = {
            "kind": kind,
            "target": wanted,
            "achieved_cv": None if achieved is None else round(achieved[kind], 4),
            "achieved_cv_quality": None if achieved is None else round(achieved["quality"], 4),
            "knobs": None if mix is None else [mix.low, mix.high],
            "p_high": None if mix is None else round(mix.p_high, 4),
        }
        say(
            f"knob target {kind} {wanted:g}: cross-validated {report['knob_target']['achieved_cv']}"
            + (f" (mix of knobs {mix.low:g} / {mix.high:g}, p={mix.p_high:.3f})" if mix else "")
        )
    elif policy.get("margin") is not None:
        report["default_knob_margin"] = round(policy["margin"], 5)
    if not target_met:
        say(
            "warning: no knob on the cross-validated curve meets the target; using the cheapest setting"
        )

    # Final fits on everything at the chosen C (begun above), calibration folded into the weights.
    t2 = time.perf_counter()
    done = _take(stream, len(final_calls), "fitting")
    final = {
        (final_jobs[i][0], final_jobs[i][1]): cb for i, cb in zip(final_order, done, strict=True)
    }
    heads: dict[str, LinearHead] = {}
    for head in fits:
        if head == "gain":
            continue
        coef = np.zeros((k, X.shape[1]))
        bias = np.zeros(k)
        for j in range(k):
            coef[j], bias[j] = final[head, j]
        extras: dict[str, Any] = {}
        if head == "quality":
            a = np.array([p[0] for p in ab])
            b = np.array([p[1] for p in ab])
            coef, bias = coef * a[:, None], bias * a + b
            gm = np.flatnonzero(gain_keep)
            if gm.size:
                g_coef = np.array([final["gain", j][0] * gain_ab[j][0] for j in gm])
                g_bias = np.array([final["gain", j][1] * gain_ab[j][0] + gain_ab[j][1] for j in gm])
                coef, bias = np.vstack([coef, g_coef]), np.concatenate([bias, g_bias])
                extras.update(gain_models=gm, gain_ref=refs[gm])
            if prior is not None and domain_fit is not None:
                coef = np.vstack([coef, domain_fit.coef])
                bias = np.concatenate([bias, domain_fit.bias])
                extras["domain"] = prior
        else:
            temp = calib["classifier"]["temperature"]
            coef, bias = coef / temp, bias / temp
        if head == strategy and mix is not None:
            extras["knob_mix"] = mix
        coef[:, : featurizer.n_dense_] *= dense_scale
        heads[head] = LinearHead.from_coef(
            "sigmoid" if head == "quality" else "softmax",
            coef,
            bias,
            featurizer.n_dense_,
            n_scores=k,
            **extras,
        )
        report.setdefault("best_c", {})[head] = dict(zip(models, fits[head].best_c, strict=True))
    final_seconds = time.perf_counter() - t2
    _ROWS.clear()
    verifiers = train_verifiers(
        [*records, *in_canonical_order(verifier_records)], catalog, progress=say
    )
    report["verifiers"] = {m: v.report for m, v in verifiers.items()}
    say(f"final fit: {final_seconds:.1f}s; total {time.perf_counter() - t0:.1f}s")
    report["cv_loss"] = {h: f.cv_loss for h, f in fits.items()}
    report["train_seconds"] = round(time.perf_counter() - t0, 2)
    report["options"] = asdict(opts)

    router = Router(
        models=models,
        featurizer=featurizer,
        heads=heads,
        input_price=inp_price,
        output_price=out_price,
        output_tokens=out_tokens,
        cost_ref=cost_ref,
        default_strategy=strategy,
        default_knob=knob,
        knob_mix=mix,
        verifiers=verifiers,
    )
    return TrainResult(router=router, report=report)


def _calibrate_sigmoid(
    oof: np.ndarray, y_all: np.ndarray
) -> tuple[list[tuple[float, float]], np.ndarray, dict[str, Any]]:
    """Platt (a, b) per column of OOF logits against soft targets; calibrated OOF scores."""
    n, k = oof.shape
    ab: list[tuple[float, float]] = []
    before, after = [], []
    scores = np.full((n, k), np.nan)
    for j in range(k):
        rows = np.flatnonzero(~np.isnan(oof[:, j]))
        if rows.size < 10:
            ab.append((1.0, 0.0))
            scores[rows, j] = 1 / (1 + np.exp(-oof[rows, j]))
            continue
        y = y_all[rows, j]
        a, b = _platt(oof[rows, j], y)
        ab.append((a, b))
        raw = 1 / (1 + np.exp(-oof[rows, j]))
        cal = 1 / (1 + np.exp(-(a * oof[rows, j] + b)))
        scores[rows, j] = cal
        before.append(metrics.brier_binary(raw, y) * rows.size)
        after.append(metrics.brier_binary(cal, y) * rows.size)
    total = int(np.sum(~np.isnan(oof)))
    report = {
        "method": "platt per model",
        "brier_before": round(sum(before) / max(total, 1), 5),
        "brier_after": round(sum(after) / max(total, 1), 5),
    }
    return ab, scores, report


def _calibrate_softmax(oof: np.ndarray, targets: Targets) -> tuple[np.ndarray, dict[str, Any]]:
    """Temperature-scaled OOF probabilities of the classifier head, and the calibration report."""
    n, k = oof.shape
    rows = np.flatnonzero((targets.label >= 0) & np.isfinite(oof).any(axis=1))
    mask = np.isfinite(oof[rows])
    z = np.where(mask, oof[rows], 0.0)
    y = targets.label[rows]
    ok = mask[np.arange(len(rows)), y]
    rows, z, mask, y = rows[ok], z[ok], mask[ok], y[ok]
    temp = _temperature(z, mask, y) if len(rows) else 1.0
    p_before = _masked_softmax(z, mask)
    p_after = _masked_softmax(z / temp, mask)
    report = {
        "method": "temperature",
        "temperature": round(temp, 4),
        "ece_before": round(
            metrics.expected_calibration_error(
                p_before.max(1), (p_before.argmax(1) == y).astype(float)
            ),
            5,
        ),
        "ece_after": round(
            metrics.expected_calibration_error(
                p_after.max(1), (p_after.argmax(1) == y).astype(float)
            ),
            5,
        ),
        "brier_after": round(metrics.brier_multiclass(p_after, y), 5),
    }
    c_scores = np.full((n, k), np.nan)
    c_scores[rows] = np.where(mask, p_after, np.nan)
    return c_scores, report


def _shrink_by_fold(
    score: np.ndarray,
    p: np.ndarray,
    fold_means: Sequence[tuple[np.ndarray, np.ndarray]],
    fold: np.ndarray,
    strength: np.ndarray,
) -> np.ndarray:
    """OOF scores shrunk toward domain means computed without each record's fold."""
    out = score.copy()
    for f, (means, measured) in enumerate(fold_means):
        at = fold == f
        out[at] = shrink(score[at], p[at], means, measured, strength)
    return out


def _group_curve(
    score: np.ndarray,
    est_cost: np.ndarray,
    cost_ref: float,
    t: Targets,
    g: np.ndarray,
    knobs: Sequence[float] = KNOB_GRID,
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray]:
    """Knob sweep of one model set's records: (curve, mask, quality, cost)."""
    mask = ~np.isnan(t.quality[g])
    cols = np.flatnonzero(mask[0])
    # only the set's own models: a sweep over all K columns costs K / |set| times more
    m = mask[:, cols]
    s = np.where(m, np.nan_to_num(score[np.ix_(g, cols)], nan=-1.0), -np.inf)
    q = np.nan_to_num(t.quality[np.ix_(g, cols)])
    c = np.nan_to_num(t.cost[np.ix_(g, cols)])
    return sweep(s, est_cost[np.ix_(g, cols)], cost_ref, q, c, m, list(knobs)), m, q, c


def _aiq_of(curve: list[Any], mask: np.ndarray, q: np.ndarray, c: np.ndarray) -> float | None:
    cols = np.flatnonzero(mask[0])
    single_q = q[:, cols].mean(axis=0)
    single_c = c[:, cols].mean(axis=0)
    if not single_c.max() > single_c.min():
        return None
    return curve_aiq([p.cost for p in curve], [p.quality for p in curve], single_q, single_c)


def _oof_routing(
    score: np.ndarray,
    est_cost: np.ndarray,
    cost_ref: float,
    t: Targets,
    rows: np.ndarray,
    fold: np.ndarray | None = None,
) -> dict[str, Any]:
    """AIQ and the knob curve of OOF scores, pooled over groups of records with the same models.

    AIQ is computed per group (costs of different model sets are not comparable) and averaged,
    weighted by group size. With `fold` (each record's CV fold), the curve's quality and the best
    single model's are also given per fold (`fold_curves`), for the default knob's margin.
    """
    idx = np.flatnonzero(rows)
    labelled = t.labelled  # a property that rebuilds the whole mask: read it once
    groups: dict[bytes, list[int]] = {}
    for i in idx:
        groups.setdefault(labelled[i].tobytes(), []).append(i)
    n_folds = 0 if fold is None else int(fold.max()) + 1
    total, aiq_sum = 0, 0.0
    nk = len(KNOB_GRID)
    acc = np.zeros((nk, 4))  # quality, cost, strongest cost, strong calls (sums)
    fq = np.zeros((n_folds, nk))
    fbest = np.zeros(n_folds)
    fn = np.zeros(n_folds)
    best_single_sum = 0.0
    for members in groups.values():
        g = np.array(members)
        mask = labelled[g]
        s = np.where(mask, score[g], -np.inf)
        q = np.nan_to_num(t.quality[g])
        c = np.nan_to_num(t.cost[g])
        cols = np.flatnonzero(mask[0])
        single_q = q[:, cols].mean(axis=0)
        single_c = c[:, cols].mean(axis=0)
        strongest = cols[int(np.argmax(single_q - 1e-9 * single_c))]
        rr = np.arange(len(g))
        gf = None if fold is None else fold[g]
        points = []
        for ki, knob in enumerate(KNOB_GRID):
            pick = choose(s, est_cost[g], cost_ref, knob, mask)
            qp = q[rr, pick]
            cp = c[rr, pick]
            points.append((qp.mean(), cp.mean()))
            acc[ki] += (qp.sum(), cp.sum(), c[:, strongest].sum(), float((pick == strongest).sum()))
            if gf is not None:
                fq[:, ki] += np.bincount(gf, weights=qp, minlength=n_folds)
        if gf is not None:
            fn += np.bincount(gf, minlength=n_folds)
            fbest += np.bincount(gf, weights=q[:, strongest], minlength=n_folds)
        if single_c.max() > single_c.min():
            cheapest = int(np.argmin(single_c))
            a = metrics.aiq(
                [p[1] for p in points],
                [p[0] for p in points],
                float(single_c.min()),
                float(single_c.max()),
                anchor=(float(single_c[cheapest]), float(single_q[cheapest])),
            )
            aiq_sum += a * len(g)
            total += len(g)
        best_single_sum += float(single_q.max()) * len(g)
    n = max(len(idx), 1)
    curve_rows = [
        {
            "knob": knob,
            "quality": acc[ki, 0] / n,
            "cost": acc[ki, 1] / n,
            "budget_share": acc[ki, 1] / acc[ki, 2] if acc[ki, 2] else None,
            "strong_share": acc[ki, 3] / n,
        }
        for ki, knob in enumerate(KNOB_GRID)
    ]
    fold_curves = [
        {"quality": (fq[f] / fn[f]).tolist(), "best_single": float(fbest[f] / fn[f])}
        for f in range(n_folds)
        if fn[f] > 0
    ]
    return {
        "aiq": aiq_sum / total if total else 0.0,
        "n": len(idx),
        "best_single_quality": best_single_sum / n,
        "curve": curve_rows,
        "fold_curves": fold_curves,
    }


def _policy_share(
    score: np.ndarray,
    est_cost: np.ndarray,
    cost_ref: float,
    t: Targets,
    rows: np.ndarray,
    policy: dict[str, Any],
    firsts: Sequence[Record],
    prompts: _Prompts,
) -> dict[str, float] | None:
    """Budget share, strong-call share and quality of the default policy out of fold, with the
    router's per-prompt mixture draws (pooled over model sets, as the curve is)."""
    mix: KnobMix | None = policy["mix"]
    idx = np.flatnonzero(rows)
    if not idx.size:
        return None
    draws = np.array([mixture_draw(r.prompt) for r in firsts])[prompts.inverse]
    labelled = t.labelled
    sums = np.zeros(4)
    for g in model_groups(labelled, rows) or []:
        mask = labelled[g]
        s = np.where(mask, score[g], -np.inf)
        q = np.nan_to_num(t.quality[g])
        c = np.nan_to_num(t.cost[g])
        cols = np.flatnonzero(mask[0])
        strongest = cols[int(np.argmax(q[:, cols].mean(axis=0) - 1e-9 * c[:, cols].mean(axis=0)))]
        pick = choose_mixed(s, est_cost[g], cost_ref, policy["knob"], mix, draws[g], mask)
        rr = np.arange(len(g))
        sums += (
            q[rr, pick].sum(),
            c[rr, pick].sum(),
            c[:, strongest].sum(),
            (pick == strongest).sum(),
        )
    n = max(len(idx), 1)
    return {
        "quality": sums[0] / n,
        "budget_share": sums[1] / sums[2] if sums[2] else float("nan"),
        "strong_share": sums[3] / n,
    }
