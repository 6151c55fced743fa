"""Decision time for very long prompts (10 KB, 100 KB, 1 MB), built from real prompts.

Each repeat builds a fresh text per size (real prompts from the bundled data, shuffled and
concatenated, cut to the exact length), so the word cache does not make later repeats cheaper
than a new request would be. Sizes are interleaved within a repeat in rotating order; each
measurement times the whole decision (`normalize` + `router.score` + `router.rank` with a mask),
then feature extraction alone, then the hand-rule router, on the same text.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import Target, real_prompts
from features.text import normalize
from models.artifact import load_router
from models.catalog import Catalog
from training.heuristic import HeuristicRouter

__all__ = ["build_text", "run"]

SIZES = (10 * 1024, 100 * 1024, 1024 * 1024)
MB_TARGET_MS = 5.0


def build_text(pool: list[str], chars: int, rng: random.Random) -> str:
    """Real prompts in random order, joined by blank lines, cut to exactly `chars` characters."""
    parts: list[str] = []
    total = 0
    while total < chars:
        text = pool[rng.randrange(len(pool))]
        parts.append(text)
        total += len(text) + 2
    return "\n\n".join(parts)[:chars]


def run(
    artifact: str | Path,
    *,
    sizes: tuple[int, ...] = SIZES,
    repeats: int = 7,
    seed: int = 0,
) -> dict[str, Any]:
    """Median and max decision time per prompt size (ms), with features and hand rules."""
    router, manifest = load_router(artifact)
    rules = HeuristicRouter(Catalog.from_dict(manifest["catalog"]))
    models = list(router.models)
    mask = router.mask_for(models)
    pool = [p.text for _, p in real_prompts(3000, seed=seed)]
    rng = random.Random(seed)
    texts = {size: [build_text(pool, size, rng) for _ in range(repeats)] for size in sizes}
    warm = build_text(pool, min(sizes), rng)
    router.rank(router.score(normalize(warm), mask=mask), None, mask)

    clock = time.perf_counter_ns
    times: dict[int, dict[str, list[int]]] = {
        s: {"decision": [], "features": [], "heuristic": []} for s in sizes
    }
    for r in range(repeats):
        k = r % len(sizes)
        for size in sizes[k:] + sizes[:k]:
            text = texts[size][r]
            t0 = clock()
            prompt = normalize(text)
            router.rank(router.score(prompt, mask=mask), None, mask)
            times[size]["decision"].append(clock() - t0)
            t0 = clock()
            router.featurizer.transform_one(prompt, None)
            times[size]["features"].append(clock() - t0)
            t0 = clock()
            rules.choose(prompt, models)
            times[size]["heuristic"].append(clock() - t0)

    by_size = {}
    for size in sizes:
        row = {}
        for name, values in times[size].items():
            ms = np.asarray(values) / 1e6
            row[f"{name}_ms"] = {
                "median": round(float(np.median(ms)), 4),
                "max": round(float(ms.max()), 4),
            }
        by_size[str(size)] = row
    largest, smallest = str(max(sizes)), str(min(sizes))
    worst = by_size[largest]["decision_ms"]["median"]
    growth = worst / by_size[smallest]["decision_ms"]["median"]
    result: dict[str, Any] = {
        "params": {"sizes_chars": list(sizes), "repeats": repeats, "seed": seed},
        "by_size_chars": by_size,
        "growth_largest_over_smallest": round(growth, 2),
    }
    label = _label(max(sizes))
    result["targets"] = [
        Target(
            f"decision on a {label} prompt (median)",
            f"≤ {MB_TARGET_MS:g} ms" if max(sizes) >= SIZES[-1] else "bounded",
            f"{worst:.2f} ms (max {by_size[largest]['decision_ms']['max']:.2f} ms)",
            worst <= MB_TARGET_MS if max(sizes) >= SIZES[-1] else None,
            f"{growth:.1f}× the {_label(min(sizes))} prompt's time for "
            f"{max(sizes) / min(sizes):.0f}× the characters",
        ).to_dict()
    ]
    return result


def _label(chars: int) -> str:
    if chars >= 1024 * 1024 and chars % (1024 * 1024) == 0:
        return f"{chars // (1024 * 1024)} MB"
    if chars >= 1024 and chars % 1024 == 0:
        return f"{chars // 1024} KB"
    return f"{chars}-character"
