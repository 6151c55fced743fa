"""Train a router on labelled logs larger than memory: stream, featurise by chunk, fit by SGD.

`training.trainer.train` holds every record and the whole feature matrix in memory and fits
each head with an exact solver. This module trains the same kind of router (the quality head:
per-model predicted quality, Platt-calibrated) with memory bounded by `chunk_size`:

1. records are read lazily with `training.logs.iter_records` (single-call rows are not merged,
   each is one training row), optionally restricted to one side of the train/test split;
2. a deterministic slice of the prompts (bytes of sha256 of the text that neither the split nor
   `trainer.fold_ids` reads) is held out; those prompts are never trained on, and a bounded,
   order-independent sample of them (the `max_holdout` smallest by another hash) is kept for
   the validation loss, Platt calibration and the default knob;
3. the dense block's scale (1 / max |value| per column, the trainer's conditioning trick) and
   the largest squared row norm R² are taken from the first `scale_rows` training records, a
   fixed number so that the chunk size cannot change them; the first epoch's first chunks
   wait, featurised, until those rows are in, so no record is read or featurised twice;
4. for every epoch, each chunk is featurised with `PromptFeaturizer.transform` (each distinct
   prompt of the chunk once: logs repeat prompts), shuffled (a permutation seeded by
   `random_state`, the epoch and the chunk's number) and fed by
   `partial_fit` to one `SGDClassifier(loss="log_loss", average=True)` per (model, step).
   Logs are often sorted by task, and SGD in file order fits them much worse (held-out loss
   0.605 against 0.551 for liblinear and 0.551 shuffled, on claude-v1 in the bundled data);
   the price is that the model depends on where the chunks start: the same chunk boundaries
   give the same model, bit for bit. Fractional qualities become a positive and a negative
   row weighted q and 1 − q. The learning rate is constant, `step / R²`: averaged SGD with a
   constant step of order 1/R² converges for logistic regression (Bach & Moulines, 2013),
   where sklearn's default "optimal" schedule starts with steps of order alpha^-1/4 and
   diverges on these features;
5. per model, the step with the lowest held-out loss is kept, calibrated by Platt scaling on
   the held-out sample, and folded into one `LinearHead`; prices, expected output tokens and
   the cost reference (the trainer's rules) come from running statistics of the first epoch,
   and the default knob from the held-out routing curve (the trainer's rule, on the sample).

Memory is the chunk's records and feature rows (at the start, the first `scale_rows` records'
when that is more than a chunk), the held-out sample and its features, and the weights
(models × steps × columns); it does not grow with the number of records.
"""

from __future__ import annotations

import hashlib
import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.linear_model import SGDClassifier

from features.extractor import PromptFeaturizer
from models.catalog import Catalog, estimate_tokens
from models.errors import DataError
from models.router import LinearHead, Router
from training import metrics
from training.labels import build_targets
from training.logs import iter_records
from training.progress import open_progress
from training.records import Record
from training.split import SPLIT_SIDES, is_test
from training.trainer import (
    TrainOptions,
    TrainResult,
    _binary_loss,
    _choose_knob,
    _oof_routing,
    _platt,
)

__all__ = ["StreamingOptions", "expand_soft_targets", "is_holdout", "train_streaming"]

Progress = Callable[[str], None]

_CLASSES = np.array([0, 1])
_MIN_CALIBRATION_ROWS = 10  # as the trainer: fewer held-out rows keep the identity (a=1, b=0)


@dataclass
class StreamingOptions:
    """Options of `train_streaming`; validated on construction, stored in the manifest."""

    chunk_size: int = 20_000  # records featurised and fitted at once: bounds the memory
    epochs: int = 2  # passes over the files
    steps: tuple[float, ...] = (1.0, 4.0)  # SGD step sizes × 1/R² tried; best per model wins
    alpha: float = 1e-6  # L2 penalty of the SGD objective
    holdout_percent: int = 5  # prompts held out by hash, never trained on
    max_holdout: int = 10_000  # held-out records kept for validation and calibration
    scale_rows: int = 10_000  # training records read for the dense scale and R²
    split: str = "all"  # side of the 80/20 split to train on: train, test or all
    target_budget: float | None = None  # default knob targets, as in `TrainOptions`
    target_strong_share: float | None = None
    knob: float | None = None
    n_hash_features: int = 2**17
    random_state: int = 0  # seeds the per-chunk shuffles
    skip_invalid: bool = False  # skip bad lines (counted in the report) instead of raising

    def __post_init__(self) -> None:
        self.steps = tuple(float(a) for a in self.steps)
        for name in ("chunk_size", "epochs", "max_holdout", "scale_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer")
        if not self.steps or any(not (0 < a <= 8) for a in self.steps):
            raise ValueError("steps: every value must be > 0 and <= 8 (the SGD step is step / R²)")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError("steps: values must be distinct")
        if not (0 < self.alpha < 1):
            raise ValueError("alpha: must be > 0 and < 1")
        if not (1 <= self.holdout_percent <= 50):
            raise ValueError("holdout_percent: must be between 1 and 50")
        if self.split not in SPLIT_SIDES:
            raise ValueError(f"split: must be one of {', '.join(SPLIT_SIDES)}")
        if not (2**8 <= self.n_hash_features <= 2**22):
            raise ValueError("n_hash_features: must be between 2**8 and 2**22")
        # The knob options follow the trainer's rules (and its messages).
        self._knob_options()

    def _knob_options(self) -> TrainOptions:
        return TrainOptions(
            target_budget=self.target_budget,
            target_strong_share=self.target_strong_share,
            knob=self.knob,
            n_hash_features=self.n_hash_features,
        )


# --------------------------------------------------------------------------- pure helpers
def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def is_holdout(text: str, percent: int) -> bool:
    """Whether a prompt is held out: bytes 8–11 of sha256(text), which neither the 80/20
    split (bytes 0–3) nor the CV folds (bytes 4–7) read, as an integer mod 100 < `percent`."""
    return _holdout_bucket(_digest(text)) < percent


def _holdout_bucket(digest: bytes) -> int:
    return int.from_bytes(digest[8:12], "big") % 100


def _sample_key(digest: bytes) -> int:
    """Order of held-out prompts for the bounded validation sample (smallest kept)."""
    return int.from_bytes(digest[12:20], "big")


def expand_soft_targets(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, hard labels and weights that turn soft targets into weighted binary rows.

    A target of 0 or 1 stays one row with weight 1; a fractional target q becomes a positive
    row weighted q followed directly by a negative row weighted 1 − q, so the row order does
    not depend on how the data is cut into chunks.

    >>> rows, labels, weights = expand_soft_targets(np.array([1.0, 0.25, 0.0]))
    >>> rows.tolist(), labels.tolist(), weights.tolist()
    ([0, 1, 1, 2], [1, 1, 0, 0], [1.0, 0.25, 0.75, 1.0])
    """
    y = np.asarray(y, dtype=np.float64)
    hard = (y == 0.0) | (y == 1.0)
    counts = np.where(hard, 1, 2)
    rows = np.repeat(np.arange(y.size), counts)
    first = np.cumsum(counts) - counts
    second = (np.arange(rows.size) - first[rows]) == 1
    labels = np.where(hard[rows], y[rows], ~second).astype(np.int64)
    weights = np.where(hard[rows], 1.0, np.where(second, 1.0 - y[rows], y[rows]))
    return rows, labels, weights


def _chunks(items: Iterable[Record], size: int) -> Iterator[list[Record]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def _median_of_monotone(histogram: dict[int, int], f: Callable[[int], float]) -> float:
    """np.median of f(t) over a multiset of t given as {t: count}, for a non-decreasing f."""
    total = sum(histogram.values())
    lo_rank, hi_rank = (total - 1) // 2, total // 2
    lo = hi = None
    seen = 0
    for t in sorted(histogram):
        seen += histogram[t]
        if lo is None and seen > lo_rank:
            lo = t
        if seen > hi_rank:
            hi = t
            break
    assert lo is not None and hi is not None
    return (f(lo) + f(hi)) / 2


# --------------------------------------------------------------------------- running state
@dataclass
class _Stats:
    """What the first epoch learns about the data besides the weights."""

    models: set[str] = field(default_factory=set)
    train_rows: int = 0
    holdout_rows: int = 0
    without_quality: int = 0
    directly_labelled: int = 0  # {"prompt", "label"} rows: no outcome for the quality head
    other_split: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    in_tokens: dict[int, int] = field(default_factory=dict)
    out_sum: dict[str, float] = field(default_factory=dict)
    out_count: dict[str, int] = field(default_factory=dict)
    holdout: list[tuple[int, int, Record]] = field(default_factory=list)  # max-heap, negated
    unobserved: list[Record] = field(default_factory=list)  # held-out rows since the last chunk

    def observe(self, records: Sequence[Record], catalog: Catalog) -> None:
        """Token and output-length statistics of labelled records (both sides of the holdout)."""
        names = sorted({m for r in records for m in r.labelled_models})
        t = build_targets(records, names, catalog)
        for j, name in enumerate(names):
            col = t.output_tokens[:, j]
            ok = np.isfinite(col)
            self.out_sum[name] = self.out_sum.get(name, 0.0) + float(col[ok].sum())
            self.out_count[name] = self.out_count.get(name, 0) + int(ok.sum())
        for r in records:
            tok = estimate_tokens(len(r.prompt.text))
            self.in_tokens[tok] = self.in_tokens.get(tok, 0) + 1

    def offer_holdout(self, key: int, seq: int, record: Record, limit: int) -> None:
        item = (-key, -seq, record)
        if len(self.holdout) < limit:
            heapq.heappush(self.holdout, item)
        elif item[:2] > self.holdout[0][:2]:
            heapq.heapreplace(self.holdout, item)

    def holdout_records(self) -> list[Record]:
        return [r for _k, _s, r in sorted(self.holdout, key=lambda e: (-e[0], -e[1]))]


def _labelled_stream(
    paths: Sequence[Path],
    opts: StreamingOptions,
    catalog: Catalog,
    stats: _Stats | None,
    on_bytes: Callable[[int], None] | None = None,
) -> Iterator[tuple[Record, bytes]]:
    """(record, sha256 of its text) for every record with a labelled outcome on the chosen side;
    the first epoch passes `stats` to count, check model names and report skipped lines."""

    def skipped(where: str, reason: str) -> None:
        if stats is not None:
            stats.skipped[reason] = stats.skipped.get(reason, 0) + 1

    for path in paths:
        records = iter_records(
            path,
            skip_invalid=opts.skip_invalid,
            on_skip=skipped if opts.skip_invalid else None,
            on_bytes=on_bytes,
        )
        for rec in records:
            labelled = rec.labelled_models
            if not labelled:
                if stats is not None:
                    if rec.label is not None:
                        stats.directly_labelled += 1
                    else:
                        stats.without_quality += 1
                continue
            if opts.split != "all" and is_test(rec.prompt.text) != (opts.split == "test"):
                if stats is not None:
                    stats.other_split += 1
                continue
            if stats is not None:
                for m in labelled:
                    if m not in stats.models:
                        if m not in catalog:
                            # Prices are needed from the first chunk on: stop at the first
                            # unknown model (batch training lists them all).
                            raise DataError(
                                rec.source or str(path),
                                None,
                                catalog.missing_message([m], where="this line"),
                            )
                        stats.models.add(m)
            yield rec, _digest(rec.prompt.text)


class _Heads:
    """One SGD classifier per (model, step), created when the model first appears."""

    def __init__(self, opts: StreamingOptions, r2: float) -> None:
        self.opts = opts
        self.r2 = r2
        self.fits: dict[str, list[SGDClassifier]] = {}

    def _for(self, model: str) -> list[SGDClassifier]:
        fits = self.fits.get(model)
        if fits is None:
            fits = self.fits[model] = [
                SGDClassifier(
                    loss="log_loss",
                    penalty="l2",
                    alpha=self.opts.alpha,
                    average=True,
                    learning_rate="constant",
                    eta0=step / self.r2,
                    shuffle=False,  # the chunk is already shuffled, differently every epoch
                    random_state=self.opts.random_state,
                )
                for step in self.opts.steps
            ]
        return fits

    def partial_fit(self, X: sparse.csr_matrix, records: Sequence[Record]) -> None:
        for name, (rows, y) in sorted(_rows_by_model(records).items()):
            take, labels, weights = expand_soft_targets(y)
            Xj = X[rows[take]]
            for clf in self._for(name):
                clf.partial_fit(Xj, labels, classes=_CLASSES, sample_weight=weights)

    def logits(self, model: str, X: sparse.csr_matrix) -> list[np.ndarray]:
        return [np.asarray(clf.decision_function(X), dtype=np.float64) for clf in self.fits[model]]


def _rows_by_model(records: Sequence[Record]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`_quality_rows` of every labelled model, in one pass over the records."""
    rows: dict[str, list[int]] = {}
    ys: dict[str, list[float]] = {}
    for i, r in enumerate(records):
        for m, o in r.outcomes.items():
            if o.quality is not None:
                rows.setdefault(m, []).append(i)
                ys.setdefault(m, []).append(o.quality)
    return {
        m: (np.asarray(rows[m], dtype=np.int64), np.asarray(ys[m], dtype=np.float64)) for m in rows
    }


def _quality_rows(records: Sequence[Record], model: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the records where `model` has a labelled quality, and those qualities."""
    rows, y = [], []
    for i, r in enumerate(records):
        o = r.outcomes.get(model)
        if o is not None and o.quality is not None:
            rows.append(i)
            y.append(o.quality)
    return np.asarray(rows, dtype=np.int64), np.asarray(y, dtype=np.float64)


# --------------------------------------------------------------------------- main entry
def train_streaming(
    paths: str | Path | Sequence[str | Path],
    catalog: Catalog,
    options: StreamingOptions | None = None,
    *,
    progress: Progress | None = None,
) -> TrainResult:
    """Train a quality-head router on logs read chunk by chunk (see the module docstring).

    Parameters
    ----------
    paths : one or more labelled-log files (JSONL, gzip'd or not), read `epochs` times.
    catalog : supplies prices; every labelled model must be in it.
    options : `StreamingOptions` (defaults when None).
    progress : called with one-line progress messages.

    Returns
    -------
    TrainResult
        ``router`` saves with `models.artifact.save_router`; ``report`` has the keys the
        CLI prints for `train` (``n_records``, ``default_strategy``, ``default_knob``,
        ``cv_routing`` — on the held-out sample here —, ``calibration``, ``train_seconds``)
        plus the per-epoch held-out loss and the chosen step per model.

    Raises
    ------
    DataError
        A bad line (unless ``skip_invalid``), a model missing from the catalog, fewer than two
        labelled models, or no held-out prompt.
    """
    opts = options or StreamingOptions()
    say = progress or (lambda _msg: None)
    files = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    if not files:
        raise ValueError("train_streaming needs at least one path")
    t0 = time.perf_counter()
    featurizer = PromptFeaturizer(n_hash_features=opts.n_hash_features).fit([])
    n_dense = featurizer.n_dense_
    col_scale = np.ones(n_dense + opts.n_hash_features)
    heads: _Heads | None = None
    # Epoch 1 featurises its first chunks before the scale is known (it comes from the first
    # `scale_rows` training records); they wait here, unscaled, and are fitted once it is.
    pending: list[tuple[int, list[Record], sparse.csr_matrix]] = []

    def features(records: Sequence[Record]) -> sparse.csr_matrix:
        X = _featurise(featurizer, records)
        X.data *= col_scale[X.indices]
        return X

    def fit_chunk(epoch: int, number: int, chunk: list[Record], X: sparse.csr_matrix) -> None:
        assert heads is not None
        order = np.random.default_rng([opts.random_state, epoch, number]).permutation(len(chunk))
        heads.partial_fit(X[order], [chunk[i] for i in order])

    def start(blocks: list[sparse.csr_matrix]) -> None:
        nonlocal col_scale, heads
        col_scale, r2 = _column_scale(blocks, opts.scale_rows, n_dense, opts.n_hash_features)
        heads = _Heads(opts, r2)
        for number, chunk, X in pending:
            X.data *= col_scale[X.indices]
            fit_chunk(0, number, chunk, X)
        pending.clear()

    stats = _Stats()
    size = sum(p.stat().st_size for p in files if p.is_file())
    epoch_loss: list[dict[str, Any]] = []
    hold_records: list[Record] = []
    X_hold: sparse.csr_matrix | None = None
    for epoch in range(opts.epochs):
        first = epoch == 0
        t_epoch = time.perf_counter()
        seen = 0
        bar = open_progress(f"epoch {epoch + 1}/{opts.epochs}", total=size, unit="B")
        stream = _labelled_stream(files, opts, catalog, stats if first else None, bar.update)
        train_rows = _train_side(stream, opts, stats if first else None)
        for number, chunk in enumerate(_chunks(train_rows, opts.chunk_size)):
            if heads is None:
                pending.append((number, chunk, _featurise(featurizer, chunk)))
                if sum(len(c) for _n, c, _X in pending) >= opts.scale_rows:
                    start([X for _n, _c, X in pending])
            else:
                fit_chunk(epoch, number, chunk, features(chunk))
            seen += len(chunk)
            if first:
                stats.observe(chunk + stats.unobserved, catalog)
                stats.unobserved.clear()
        bar.close()
        say(f"epoch {epoch + 1}/{opts.epochs}: {seen} records")
        if heads is None:  # fewer training records than `scale_rows`
            start([X for _n, _c, X in pending])
        assert heads is not None
        if first:
            stats.observe(stats.unobserved, catalog)
            stats.unobserved.clear()
            _check_data(stats, files)
            hold_records = stats.holdout_records()
            X_hold = features(hold_records)
        assert X_hold is not None
        losses = _validation_losses(heads, X_hold, hold_records)
        epoch_loss.append(
            {
                "epoch": epoch + 1,
                "seconds": round(time.perf_counter() - t_epoch, 2),
                "val_loss": {
                    m: {f"step={a:g}": v for a, v in by.items()} for m, by in losses.items()
                },
            }
        )
        say(
            f"epoch {epoch + 1}: {time.perf_counter() - t_epoch:.1f}s, held-out loss {_mean_best(losses):.4f}"
        )

    assert X_hold is not None
    models = tuple(sorted(stats.models))
    k = len(models)
    best_step: dict[str, float] = {}
    coef = np.zeros((k, X_hold.shape[1]))
    bias = np.zeros(k)
    raw_scores = np.full((len(hold_records), k), np.nan)
    cal_scores = np.full((len(hold_records), k), np.nan)
    before, after, n_cal = 0.0, 0.0, 0
    final = epoch_loss[-1]["val_loss"]
    for j, name in enumerate(models):
        rows, y = _quality_rows(hold_records, name)
        losses = {a: final[name][f"step={a:g}"] for a in opts.steps} if name in final else {}
        # The smaller step wins ties, and is the one used without held-out rows.
        a_star = min(losses, key=lambda a: (losses[a], a)) if losses else min(opts.steps)
        best_step[name] = a_star
        clf = heads.fits[name][opts.steps.index(a_star)]
        w, b0 = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
        z = X_hold[rows] @ w + b0 if rows.size else np.zeros(0)
        a, b = _platt(z, y) if rows.size >= _MIN_CALIBRATION_ROWS else (1.0, 0.0)
        coef[j], bias[j] = w * a, b0 * a + b
        raw_scores[rows, j] = 1 / (1 + np.exp(-z))
        cal_scores[rows, j] = 1 / (1 + np.exp(-(a * z + b)))
        if rows.size:
            before += metrics.brier_binary(raw_scores[rows, j], y) * rows.size
            after += metrics.brier_binary(cal_scores[rows, j], y) * rows.size
            n_cal += rows.size
    coef[:, :n_dense] *= col_scale[:n_dense]

    inp_price, out_price = catalog.prices(models)
    out_tokens = np.array(
        [
            stats.out_sum[m] / stats.out_count[m]
            if stats.out_count.get(m)
            else float(catalog.typical_output_tokens)
            for m in models
        ]
    )
    cost_ref = _median_of_monotone(
        stats.in_tokens, lambda t: float(np.max(t * inp_price + out_price * out_tokens))
    )
    if not cost_ref > 0:
        cost_ref = 1.0

    knob_opts = opts._knob_options()
    targets = build_targets(hold_records, models, catalog)
    in_tok = np.array([estimate_tokens(len(r.prompt.text)) for r in hold_records], dtype=np.float64)
    est_cost = in_tok[:, None] * inp_price + out_price * out_tokens
    evalable = targets.labelled.sum(axis=1) >= 2
    routing = (
        _oof_routing(cal_scores, est_cost, cost_ref, targets, evalable) if evalable.any() else None
    )
    knob, target_met = _choose_knob(routing, knob_opts)
    if not target_met:
        say("warning: no knob on the held-out curve meets the target; using the cheapest setting")

    router = Router(
        models=models,
        featurizer=featurizer,
        heads={"quality": LinearHead.from_coef("sigmoid", coef, bias, n_dense)},
        input_price=inp_price,
        output_price=out_price,
        output_tokens=out_tokens,
        cost_ref=cost_ref,
        default_strategy="quality",
        default_knob=knob,
    )
    seconds = round(time.perf_counter() - t0, 2)
    if stats.directly_labelled:
        say(
            f"warning: ignored {stats.directly_labelled} directly labelled row(s) "
            '({"prompt", "label"}): --streaming fits the quality head, which needs outcomes; '
            "train without --streaming to use them"
        )
    say(f"streaming training done in {seconds:.1f}s")
    report: dict[str, Any] = {
        "method": "streaming",
        "n_records": stats.train_rows,
        "n_holdout": stats.holdout_rows,
        "n_holdout_used": len(hold_records),
        "records_without_quality": stats.without_quality,
        "records_directly_labelled_ignored": stats.directly_labelled,
        "records_other_split": stats.other_split,
        "skipped_lines": sum(stats.skipped.values()),
        "skipped_by_reason": dict(sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
        "models": list(models),
        "default_strategy": "quality",
        "default_knob": knob,
        "default_knob_cv_point": next(
            (p for p in (routing or {}).get("curve", []) if p["knob"] == knob), None
        ),
        "knob_target_met": target_met,
        "cv_curve": (routing or {}).get("curve", []),  # on the held-out sample; the dashboard's
        "best_step": best_step,
        "epochs": epoch_loss,
        "calibration": {
            "quality": {
                "method": "platt per model, on the held-out sample",
                "brier_before": round(before / max(n_cal, 1), 5),
                "brier_after": round(after / max(n_cal, 1), 5),
            }
        },
        "cv_routing": (
            {"quality": {kk: v for kk, v in routing.items() if kk != "curve"}}
            if routing is not None
            else {}
        ),
        "train_seconds": seconds,
        "options": asdict(opts),
    }
    return TrainResult(router=router, report=report)


def _train_side(
    stream: Iterator[tuple[Record, bytes]], opts: StreamingOptions, stats: _Stats | None
) -> Iterator[Record]:
    """The training records of `stream`; held-out ones go to the validation sample instead."""
    for seq, (rec, digest) in enumerate(stream):
        if _holdout_bucket(digest) < opts.holdout_percent:
            if stats is not None:
                stats.holdout_rows += 1
                stats.offer_holdout(_sample_key(digest), seq, rec, opts.max_holdout)
                stats.unobserved.append(rec)
            continue
        if stats is not None:
            stats.train_rows += 1
        yield rec


def _column_scale(
    blocks: Sequence[sparse.csr_matrix], scale_rows: int, n_dense: int, n_hashed: int
) -> tuple[np.ndarray, float]:
    """Per-column factors — 1 / max |dense value| over the first `scale_rows` rows of `blocks`
    (unscaled features of the first training records, in file order; 1 for all-zero columns),
    1 for every hashed column — and R²: the largest squared norm of those rows once scaled,
    plus 1 for the intercept. `blocks` are left as they are."""
    scale = np.ones(n_dense + n_hashed)
    if not blocks:
        return scale, 1.0
    X = sparse.vstack(blocks, format="csr")[:scale_rows]
    if X.shape[0] == 0:
        return scale, 1.0
    peak = abs(X[:, :n_dense]).max(axis=0).toarray().ravel()
    scale[:n_dense] = np.where(peak > 0, 1.0 / np.where(peak > 0, peak, 1.0), 1.0)
    X.data = X.data * scale[X.indices]
    return scale, float(X.multiply(X).sum(axis=1).max()) + 1.0


def _featurise(featurizer: PromptFeaturizer, records: Sequence[Record]) -> sparse.csr_matrix:
    """Unscaled feature rows of `records`, each distinct (prompt, task type) computed once:
    logs repeat prompts, and a repeated prompt's row is copied rather than recomputed."""
    index: dict[tuple[Any, str | None], int] = {}
    inverse = [index.setdefault((r.prompt, r.task_type), len(index)) for r in records]
    if len(index) == len(records):
        distinct: Sequence[Record] = records
    else:
        first: dict[int, Record] = {}
        for r, i in zip(records, inverse, strict=True):
            first.setdefault(i, r)
        distinct = [first[i] for i in range(len(index))]
    X = featurizer.transform(
        [r.prompt for r in distinct], task_types=[r.task_type for r in distinct]
    ).tocsr()
    return X if distinct is records else X[np.asarray(inverse, dtype=np.int64)]


def _check_data(stats: _Stats, files: Sequence[Path]) -> None:
    where = str(files[0]) if len(files) == 1 else "logs"
    if len(stats.models) < 2:
        raise DataError(
            where,
            None,
            f"need labelled outcomes for at least 2 models, found {sorted(stats.models)}",
        )
    if stats.train_rows == 0:
        raise DataError(where, None, "every labelled prompt is held out; nothing to train on")
    if not stats.holdout:
        raise DataError(
            where,
            None,
            "no prompt falls in the held-out slice (too few distinct prompts); "
            "raise holdout_percent or add data",
        )


def _validation_losses(
    heads: _Heads, X_hold: sparse.csr_matrix, records: Sequence[Record]
) -> dict[str, dict[float, float]]:
    out: dict[str, dict[float, float]] = {}
    for name in sorted(heads.fits):
        rows, y = _quality_rows(records, name)
        if rows.size == 0:
            continue
        zs = heads.logits(name, X_hold[rows])
        out[name] = {
            a: round(_binary_loss(z, y), 6) for a, z in zip(heads.opts.steps, zs, strict=True)
        }
    return out


def _mean_best(losses: dict[str, dict[float, float]]) -> float:
    best = [min(by.values()) for by in losses.values()]
    return float(np.mean(best)) if best else float("nan")
