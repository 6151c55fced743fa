"""Gain heads: learn how much better a reference model is than each other model, per prompt.

A routing decision turns on the *difference* between models' qualities. A per-model quality head
predicts each model's level; a gain head of model m predicts E[q_ref − q_m | x] directly (as
the soft target (1 + q_ref − q_m) / 2 of a logistic regression), where the reference is the
strongest model of m's source (the model with the best mean quality on the records that carry
m's model set). Model m's score then becomes q̂_ref(x) − ĝ_m(x).

Which one a model keeps is decided on the training side: the out-of-fold error of the
predicted difference q_ref − q_m, quality heads' q̂_ref − q̂_m against the gain head's ĝ_m.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.labels import Targets

__all__ = ["choose_gain", "model_groups", "references"]

# A model set needs this many records to name a reference or a group for a strength.
MIN_GROUP_RECORDS = 20


def model_groups(labelled: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
    """Record indices per model set (≥ 2 models, ≥ MIN_GROUP_RECORDS records), largest first."""
    idx = np.arange(labelled.shape[0]) if rows is None else np.flatnonzero(rows)
    by: dict[bytes, list[int]] = {}
    for i in idx:
        if labelled[i].sum() >= 2:
            by.setdefault(labelled[i].tobytes(), []).append(int(i))
    groups = [np.array(v) for v in by.values() if len(v) >= MIN_GROUP_RECORDS]
    return sorted(groups, key=lambda g: -g.size)


def references(t: Targets) -> np.ndarray:
    """(K,) the reference model of each model (-1 for the strongest model of a set, and for
    models in no set): the strongest model of the largest set that contains it."""
    labelled = t.labelled
    k = labelled.shape[1]
    refs = np.full(k, -2, dtype=np.int64)
    strongest = set()
    for g in model_groups(labelled):
        cols = np.flatnonzero(labelled[g[0]])
        mean_q = np.nanmean(t.quality[np.ix_(g, cols)], axis=0)
        top = int(cols[int(np.argmax(mean_q))])
        strongest.add(top)
        for j in cols:
            if refs[j] == -2:
                refs[j] = top
    for j in strongest:
        refs[j] = -1
    refs[refs == -2] = -1
    return refs


def choose_gain(
    q_oof: np.ndarray, gain_oof: np.ndarray, t: Targets, refs: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """(K,) bool: the models whose gain head predicts q_ref − q_m better out of fold (mean
    squared error), and the per-model errors for the report.

    `q_oof` are calibrated OOF quality scores, `gain_oof` calibrated OOF expected gains
    (2·p − 1), both (n, K) with NaN outside the CV sample.
    """
    k = q_oof.shape[1]
    keep = np.zeros(k, dtype=bool)
    report: dict[str, Any] = {}
    for j in range(k):
        r = int(refs[j])
        if r < 0:
            continue
        rows = (
            t.labelled[:, j]
            & t.labelled[:, r]
            & np.isfinite(q_oof[:, j])
            & np.isfinite(q_oof[:, r])
            & np.isfinite(gain_oof[:, j])
        )
        if rows.sum() < MIN_GROUP_RECORDS:
            continue
        diff = t.quality[rows, r] - t.quality[rows, j]
        mse_q = float(np.mean((q_oof[rows, r] - q_oof[rows, j] - diff) ** 2))
        mse_g = float(np.mean((gain_oof[rows, j] - diff) ** 2))
        keep[j] = mse_g < mse_q
        report[t.models[j]] = {
            "reference": t.models[r],
            "mse_quality_heads": round(mse_q, 5),
            "mse_gain_head": round(mse_g, 5),
            "kept": bool(keep[j]),
        }
    return keep, report
