"""Regenerate the bundled ``*.jsonl.gz`` files from a folder of the shared JSONL (stdlib only).

    python data/bundle.py SOURCE_DIR [--out data]

SOURCE_DIR holds ``NAME.jsonl`` or ``NAME/NAME.jsonl`` for each NAME in `NAMES` (the shared
data folder has the second layout). Each file is gzip'd as it is, at level 9, with mtime 0 and
no file name in the header, so the same input and zlib give the same bytes. Prints the sha256 of
each JSONL and of each .gz, as listed in data/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import sys
from pathlib import Path

__all__ = ["NAMES", "bundle", "find_source", "main"]

NAMES = ("routellm", "routerbench", "llmrouter_dcrouter")


def find_source(source_dir: Path, name: str) -> Path:
    """The JSONL file for `name` in `source_dir`, in either layout."""
    for candidate in (source_dir / f"{name}.jsonl", source_dir / name / f"{name}.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {name}.jsonl or {name}/{name}.jsonl in {source_dir}")


def bundle(source: Path, target: Path) -> tuple[str, str]:
    """Gzip `source` into `target` reproducibly; returns (sha256 of source, sha256 of target)."""
    data = source.read_bytes()
    tmp = target.with_name(target.name + ".tmp")
    with tmp.open("wb") as raw:
        # filename="" and mtime=0 keep the path and the clock out of the header.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            gz.write(data)
    os.replace(tmp, target)
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(target.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_dir", type=Path, help="folder with the shared JSONL files")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args(argv)
    try:
        sources = {name: find_source(args.source_dir, name) for name in NAMES}
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        jsonl_sha, gz_sha = bundle(source, args.out / f"{name}.jsonl.gz")
        print(f"{name}.jsonl  sha256 {jsonl_sha}")
        print(f"{name}.jsonl.gz  sha256 {gz_sha}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
