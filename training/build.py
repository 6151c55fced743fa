"""Build artifacts from labelled logs: load, train (batch or streaming), save with provenance.

The functions the CLI and the bundled default model share; each returns the saved manifest.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.artifact import VALUES, file_sha256, read_manifest, save_router
from models.catalog import load_catalog
from models.errors import ArtifactError
from models.paths import default_artifact_path
from training.logs import LoadReport, load_records
from training.paths import bundled_data, bundled_responses
from training.progress import progress_bar
from training.records import Record
from training.split import split_records

__all__ = [
    "Progress",
    "data_sha256",
    "ensure_default_artifact",
    "load_split",
    "log_progress",
    "train_and_save",
    "train_streaming_and_save",
]

Progress = Callable[[str], None]


def log_progress(msg: str) -> None:
    """Timestamped phase lines on stderr (the CLI's default progress sink)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load_split(
    paths: Sequence[str], split: str, skip_invalid: bool, progress: Progress = log_progress
) -> tuple[list[Record], LoadReport]:
    """Read labelled logs and keep one side of the 80/20 split; says what was skipped and why."""
    # Only existing files count towards the total: a missing one is load_records' error to say.
    size = sum(Path(p).stat().st_size for p in paths if Path(p).is_file())
    with progress_bar("loading logs", total=size, unit="B") as advance:
        report = load_records(list(paths), skip_invalid=skip_invalid, on_bytes=advance)
    if report.skipped:
        progress(f"skipped {len(report.skipped)} invalid line(s):")
        for reason, count in sorted(report.skipped_by_reason().items(), key=lambda kv: -kv[1]):
            progress(f"  {count} × {reason}")
        for where, reason in report.skipped[:5]:
            progress(f"  e.g. {where}: {reason}")
    records = split_records(report.records, split)
    progress(
        f"loaded {len(report.records)} records from {len(paths)} file(s); "
        f"using {len(records)} ({split} side)"
    )
    return records, report


def data_sha256(paths: Sequence[str | Path]) -> str:
    """One hash over the training files' hashes, in order (the manifest's data provenance)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def train_and_save(
    logs: Sequence[str],
    out: str | Path,
    *,
    split: str = "all",
    catalog_path: str | None = None,
    skip_invalid: bool = False,
    options: Any = None,
    progress: Progress = log_progress,
    verifier_logs: Sequence[str] = (),
) -> dict[str, Any]:
    """Load logs, train in memory, save the artifact; returns the manifest.

    `verifier_logs` are extra logs with answer text that train only the answer verifiers
    (the same `split` side is used).
    """
    from training.trainer import TrainOptions, train

    catalog = load_catalog(catalog_path)
    records, report = load_split(logs, split, skip_invalid, progress)
    extra: list[Record] = []
    if verifier_logs:
        extra, _ = load_split(verifier_logs, split, skip_invalid, progress)
    result = train(
        records, catalog, options or TrainOptions(), progress=progress, verifier_records=extra
    )
    training = {
        "files": [str(p) for p in logs],
        "data_sha256": data_sha256(logs),
        "verifier_files": [str(p) for p in verifier_logs],
        "verifier_data_sha256": data_sha256(verifier_logs) if verifier_logs else None,
        "split": split,
        "lines_read": report.lines_read,
        "records_loaded": len(report.records),
        "records_used": result.report["n_records"],
        "skipped_lines": len(report.skipped),
        "options": result.report["options"],
    }
    return save_router(
        result.router,
        out,
        catalog=catalog.to_dict(),
        training=training,
        metrics={k: v for k, v in result.report.items() if k != "options"},
    )


def train_streaming_and_save(
    logs: Sequence[str],
    out: str | Path,
    options: Any,
    *,
    catalog_path: str | None = None,
    progress: Progress = log_progress,
) -> dict[str, Any]:
    """Train chunk by chunk (memory bounded by the chunk size), save; returns the manifest."""
    from training.streaming import train_streaming

    catalog = load_catalog(catalog_path)
    result = train_streaming(list(logs), catalog, options, progress=progress)
    training = {
        "files": [str(p) for p in logs],
        "data_sha256": data_sha256(logs),
        "method": "streaming",
        "split": options.split,
        "records_used": result.report["n_records"],
        "options": result.report["options"],
    }
    metrics = {k: v for k, v in result.report.items() if k != "options"}
    return save_router(
        result.router, out, catalog=catalog.to_dict(), training=training, metrics=metrics
    )


def featurizer_changes(path: str | Path) -> dict[str, Any]:
    """The featurizer settings of the artifact at `path` that training no longer uses by default,
    with the artifact's values (``{}`` when none). The hash size is a training option, not a
    default, so it is not compared. An artifact from before a default changed (the scan window
    went from 16 KiB to 4 KiB) still serves exactly as it was trained, but not as the code now
    trains; the default model and the benchmarks' artifact are retrained then.
    """
    from features import PromptFeaturizer

    values = Path(path) / VALUES
    try:
        params = json.loads(values.read_text(encoding="utf-8"))["featurizer_params"]
        if not isinstance(params, dict):
            raise TypeError("featurizer_params is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{values}: cannot read the featurizer settings ({exc})") from None
    defaults = PromptFeaturizer().get_params()
    del defaults["n_hash_features"]
    # JSON has lists where the parameters have tuples (char_ngrams).
    return {
        k: params.get(k) for k, v in defaults.items() if json.loads(json.dumps(v)) != params.get(k)
    }


_MISSING = object()


def option_changes(path: str | Path) -> dict[str, Any]:
    """The training options of the artifact at `path` that are no longer the defaults, with
    the artifact's values (``{}`` when none, or when its manifest records no options). An
    option the manifest lacks predates it, so the artifact was not trained with its default
    (it shows as None). `n_jobs` changes no weight and is not compared.
    """
    from training.trainer import TrainOptions

    try:
        options = read_manifest(path).get("training", {}).get("options")
    except AttributeError:
        raise ArtifactError(f"{path}: the manifest's training section is not an object") from None
    if not isinstance(options, dict):
        return {}
    defaults = asdict(TrainOptions())
    del defaults["n_jobs"]
    return {
        k: options.get(k)
        for k, v in defaults.items()
        if json.loads(json.dumps(v)) != options.get(k, _MISSING)
    }


def stale_defaults(path: str | Path) -> dict[str, Any]:
    """`featurizer_changes` and `option_changes` of the artifact at `path`, together: what
    makes an artifact trained with the code's defaults (the default model, the benchmarks')
    differ from one trained now."""
    return {**featurizer_changes(path), **option_changes(path)}


def ensure_default_artifact(path: Path | None = None, progress: Progress = log_progress) -> Path:
    """Train the bundled default model (train side of the bundled data) when it is missing,
    unreadable, or was trained with featurizer settings or training options that are no
    longer the defaults."""
    path = default_artifact_path() if path is None else Path(path)
    try:
        read_manifest(path)
        changed = stale_defaults(path)
        if not changed:
            return path
        why = f"trained with settings that are no longer the defaults: {changed}"
    except ArtifactError as exc:
        why = str(exc)
    progress(f"default model unusable ({why}); training it from the bundled data")
    train_and_save(
        [str(p) for p in bundled_data()],
        path,
        split="train",
        progress=progress,
        verifier_logs=[str(p) for p in bundled_responses()],
    )
    return path
