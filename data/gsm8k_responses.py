"""Build ``gsm8k_responses.jsonl.gz``, GSM8K answer texts for the verifier, from RouteLLM's CSV.

    python data/gsm8k_responses.py RAW_DIR [--out data/gsm8k_responses.jsonl.gz]

RAW_DIR is RouteLLM's raw evaluation folder (it holds ``gsm8k/gsm8k_responses.csv`` and
``gsm8k/contaminated_prompts.jsonl``; lm-sys/RouteLLM @ 0b64fdafe049e596a3f5657c219329f24af24198,
Apache-2.0). Standard library only.

Each output line is a labelled log record in the multi-outcome form, with the one field the
verifier needs beyond `routellm.jsonl.gz`: each model's answer text as ``response``. Tokens and
costs are the same estimates as in `routellm.jsonl.gz` (ceil(chars / 4) at list prices), so the
two files agree on every GSM8K prompt's outcomes. The gzip is written at level 9 with mtime 0 and
no file name, so the same input gives the same bytes with the same zlib.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import os
import sys
from pathlib import Path

__all__ = ["MODELS", "convert", "main", "records"]

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
MODELS = (WEAK, STRONG)
# USD per 1M tokens (input, output): the prices routellm.jsonl.gz's converter used.
_PRICES = {STRONG: (10.0, 30.0), WEAK: (0.6, 0.6)}
_CSV = Path("gsm8k") / "gsm8k_responses.csv"
_CONTAMINATED = Path("gsm8k") / "contaminated_prompts.jsonl"


def _tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def _correct(value: str, where: str) -> float:
    if value in ("True", "False"):
        return 1.0 if value == "True" else 0.0
    raise ValueError(f"{where}: expected True or False, got {value!r}")


def _contaminated(raw_dir: Path) -> set[str]:
    with (raw_dir / _CONTAMINATED).open(encoding="utf-8") as f:
        return {json.loads(line)["eval_prompt"] for line in f if line.strip()}


def records(raw_dir: Path) -> list[dict]:
    """One multi-outcome record per CSV row, in row order."""
    contaminated = _contaminated(raw_dir)
    out = []
    with (raw_dir / _CSV).open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f)):
            prompt = row["prompt"]
            tin = _tokens(prompt)
            outcomes = {}
            for m in MODELS:
                response = row[f"{m}_response"]
                tout = _tokens(response)
                pin, pout = _PRICES[m]
                outcomes[m] = {
                    "quality": _correct(row[m], f"{_CSV}:{i + 2}:{m}"),
                    "cost_usd": (tin * pin + tout * pout) / 1e6,
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "response": response,
                }
            out.append(
                {
                    "id": f"routellm/gsm8k/{i}",
                    "prompt": prompt,
                    "task": "gsm8k",
                    "outcomes": outcomes,
                    "meta": {"contaminated": prompt in contaminated},
                }
            )
    return out


def convert(raw_dir: Path, target: Path) -> tuple[int, str, str]:
    """Write the gzip'd JSONL; returns (records, sha256 of the JSONL, sha256 of the .gz)."""
    csv.field_size_limit(sys.maxsize)
    rows = records(raw_dir)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the path and the clock out of the header.
    with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=buf, mtime=0) as gz:
        gz.write(data)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, target)
    return (
        len(rows),
        hashlib.sha256(data).hexdigest(),
        hashlib.sha256(buf.getvalue()).hexdigest(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="RouteLLM's raw evaluation folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "gsm8k_responses.jsonl.gz",
    )
    args = parser.parse_args(argv)
    try:
        n, jsonl_sha, gz_sha = convert(args.raw_dir, args.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{n} records")
    print(f"gsm8k_responses.jsonl  sha256 {jsonl_sha}")
    print(f"gsm8k_responses.jsonl.gz  sha256 {gz_sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
