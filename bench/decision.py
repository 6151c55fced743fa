"""Decision latency in-process, on real prompts, against two rule routers in the same run.

For every prompt and every repeat, five things are timed back to back with
`time.perf_counter_ns`: the whole learned decision (`router.score` + `router.rank` with a
candidate mask), the hand-rule router (`HeuristicRouter.choose`, the `heuristic` baseline of
`promptroute eval`) and the seed design's `ContentRouter` regex rules
(`bench/content_router.py`), in an order that rotates from prompt to prompt, then feature
extraction alone (`featurizer.transform_one`) and the linear head alone
(`LinearHead.logits_one` on those features). Each prompt's time is the median over its repeats; percentiles are over prompts.
One untimed pass first warms the featurizer's word cache, as a running service has it warm.
Garbage collection stays on, as in the service.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import Target, percentiles_us, real_prompts
from bench.content_router import ContentRouter
from models.artifact import load_router
from models.catalog import Catalog
from training.heuristic import HeuristicRouter

__all__ = ["run"]

P50_TARGET_US = 100.0
P99_TARGET_US = 500.0
RATIO_TARGET = 3.0
CONTENT_RATIO_TARGET = 2.5  # issue 13


def run(
    artifact: str | Path, *, n_prompts: int = 2000, repeats: int = 5, seed: int = 0
) -> dict[str, Any]:
    """Time features, head, whole decision and both rule routers on `n_prompts` real prompts.

    Returns a JSON-ready dict: percentiles (µs) per measurement, the learned / hand-rule and
    learned / ContentRouter ratios, per-dataset medians, and the targets of issues 4 and 13
    with pass/miss.
    """
    router, manifest = load_router(artifact)
    catalog = Catalog.from_dict(manifest["catalog"])
    rules = HeuristicRouter(catalog)
    models = list(router.models)
    # Categories to models by price, as a rule author would pick them; fixed up front, so a
    # ContentRouter decision is its rules and one dict lookup.
    tiers = rules.tiers(models)
    strong = tiers["strong"]
    content = ContentRouter(
        {"code": strong, "math": strong, "simple": tiers["cheap"], "complex": strong}
    )
    mask = router.mask_for(models)
    head = router.heads[router.default_strategy]
    n_dense = router.n_dense
    featurizer = router.featurizer
    sample = real_prompts(n_prompts, seed=seed)
    prompts = [p for _, p in sample]
    sources = np.array([s for s, _ in sample])
    n = len(prompts)

    def learned(p: Any) -> int:
        return int(router.rank(router.score(p, mask=mask), None, mask)[0])

    for p in prompts:  # warm-up, untimed
        learned(p)
        rules.choose(p, models)
        content.choose(p)

    clock = time.perf_counter_ns
    t_dec = np.empty((repeats, n), dtype=np.int64)
    t_rule = np.empty((repeats, n), dtype=np.int64)
    t_content = np.empty((repeats, n), dtype=np.int64)
    t_feat = np.empty((repeats, n), dtype=np.int64)
    t_head = np.empty((repeats, n), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        for i in rng.permutation(n):
            p = prompts[i]
            shift = (r + i) % 3
            for which in (0, 1, 2)[shift:] + (0, 1, 2)[:shift]:
                if which == 0:
                    t0 = clock()
                    learned(p)
                    t_dec[r, i] = clock() - t0
                elif which == 1:
                    t0 = clock()
                    rules.choose(p, models)
                    t_rule[r, i] = clock() - t0
                else:
                    t0 = clock()
                    content.choose(p)
                    t_content[r, i] = clock() - t0
            t0 = clock()
            feats = featurizer.transform_one(p, None)
            t_feat[r, i] = clock() - t0
            t0 = clock()
            head.logits_one(*feats, n_dense)
            t_head[r, i] = clock() - t0

    dec, rule = np.median(t_dec, axis=0), np.median(t_rule, axis=0)
    cont = np.median(t_content, axis=0)
    feat, lin = np.median(t_feat, axis=0), np.median(t_head, axis=0)
    s_dec, s_rule, s_cont = percentiles_us(dec), percentiles_us(rule), percentiles_us(cont)
    ratio = _ratios(s_dec, s_rule, dec / rule)
    content_ratio = _ratios(s_dec, s_cont, dec / cont)
    empty = []
    for _ in range(1000):
        t0 = clock()
        empty.append(clock() - t0)
    chars = np.array([len(p.text) for p in prompts])
    result: dict[str, Any] = {
        "params": {"n_prompts": n, "repeats": repeats, "seed": seed, "artifact": str(artifact)},
        "router": {
            "version": router.version,
            "models": len(models),
            "strategy": router.default_strategy,
            "n_hash_features": int(featurizer.n_hash_features),
        },
        "prompt_chars": {
            "p50": int(np.median(chars)),
            "p99": int(np.percentile(chars, 99)),
            "max": int(chars.max()),
        },
        "timer_overhead_ns": int(np.median(empty)),
        "features_us": percentiles_us(feat),
        "head_us": percentiles_us(lin),
        "decision_us": s_dec,
        "heuristic_us": s_rule,
        "content_router_us": s_cont,
        "ratio_learned_over_heuristic": ratio,
        "ratio_learned_over_content_router": content_ratio,
        "decision_p50_us_by_dataset": {
            s: round(float(np.median(dec[sources == s])) / 1000, 3) for s in sorted(set(sources))
        },
    }
    result["targets"] = [
        Target(
            "decision p50",
            f"≤ {P50_TARGET_US:g} µs",
            f"{s_dec['p50']:.1f} µs",
            s_dec["p50"] <= P50_TARGET_US,
        ).to_dict(),
        Target(
            "decision p99",
            f"≤ {P99_TARGET_US:g} µs",
            f"{s_dec['p99']:.1f} µs",
            s_dec["p99"] <= P99_TARGET_US,
        ).to_dict(),
        Target(
            "learned / hand-rule decision time (p50 ratio)",
            f"≤ {RATIO_TARGET:g}×",
            f"{ratio['p50']:.2f}× ({s_dec['p50']:.1f} / {s_rule['p50']:.1f} µs)",
            ratio["p50"] <= RATIO_TARGET,
            f"per-prompt median ratio {ratio['median_per_prompt']:.2f}×, p99 ratio {ratio['p99']:.2f}×",
        ).to_dict(),
        Target(
            "learned / seed ContentRouter decision time (p50 ratio)",
            f"≤ {CONTENT_RATIO_TARGET:g}×",
            f"{content_ratio['p50']:.2f}× ({s_dec['p50']:.1f} / {s_cont['p50']:.1f} µs)",
            content_ratio["p50"] <= CONTENT_RATIO_TARGET,
            f"per-prompt median ratio {content_ratio['median_per_prompt']:.2f}×, "
            f"p99 ratio {content_ratio['p99']:.2f}×",
        ).to_dict(),
    ]
    return result


def _ratios(
    learned: dict[str, float], baseline: dict[str, float], per_prompt: np.ndarray
) -> dict[str, float]:
    """learned ÷ baseline at p50, p99 and the mean, and the median of per-prompt ratios."""
    return {
        "p50": round(learned["p50"] / baseline["p50"], 3),
        "p99": round(learned["p99"] / baseline["p99"], 3),
        "mean": round(learned["mean"] / baseline["mean"], 3),
        "median_per_prompt": round(float(np.median(per_prompt)), 3),
    }
