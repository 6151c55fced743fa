"""Where the bundled training data lives (``data/`` of the checkout, or of PROMPTROUTE_HOME)."""

from __future__ import annotations

from pathlib import Path

from models.paths import project_root

__all__ = ["bundled_data", "bundled_responses"]


def bundled_data() -> tuple[Path, ...]:
    data = project_root() / "data"
    return tuple(
        data / f
        for f in ("routellm.jsonl.gz", "routerbench.jsonl.gz", "llmrouter_dcrouter.jsonl.gz")
    )


def bundled_responses() -> tuple[Path, ...]:
    """Logs with answer text, for the answer verifier only (GSM8K answers from RouteLLM)."""
    return (project_root() / "data" / "gsm8k_responses.jsonl.gz",)
