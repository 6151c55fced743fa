"""The in-memory form of one labelled log record, whatever form it was written in."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from features.text import Prompt

__all__ = ["Outcome", "Record", "in_canonical_order"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one model did on one prompt. `quality` is in [0, 1]; None where unlabelled.

    `responses` holds the answer texts the log carries, each with the quality of that call
    (one pair for a multi-outcome record; one per row when single-call rows are merged), for
    training the answer verifier.
    """

    quality: float | None = None
    cost_usd: float | None = None
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    responses: tuple[tuple[str, float | None], ...] = ()

    @property
    def response(self) -> str | None:
        """The (first) answer text, or None when the log has none."""
        return self.responses[0][0] if self.responses else None


@dataclass(slots=True)
class Record:
    """One prompt with the outcomes of one or more models, or a direct `label`.

    `task` groups reports; `task` and `domain` (a finer topic inside the task, such as an MMLU
    subject) are the domain classifier's training targets (`training/domains.py`); none of them
    is ever a feature.
    `source` is "file:line" of the (first) line the record came from, for messages.
    """

    prompt: Prompt
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    label: str | None = None
    id: str | None = None
    task: str | None = None
    task_type: str | None = None
    source: str = ""
    domain: str | None = None

    @property
    def labelled_models(self) -> list[str]:
        return [m for m, o in self.outcomes.items() if o.quality is not None]


def in_canonical_order(records: Sequence[Record]) -> list[Record]:
    """The records sorted by what they say, not by where they were read: by a hash of the
    prompt's text, then the rest of the prompt (turns, images, system prompt, last user turn),
    its task type, task, domain, id and label.

    Training depends on the order of its rows (liblinear and SGD visit them in a seeded
    order), so sorting first makes the same records train the same router whichever order the
    logs were read in (`--logs a b` or `--logs b a`, replicas' logs concatenated). Records
    alike in all of these keep the order given; that can change only the order of a
    floating-point sum of their outcomes.
    """

    digests: dict[str, bytes] = {}  # logs repeat prompts: hash each text once

    def key(r: Record) -> tuple[Any, ...]:
        p = r.prompt
        digest = digests.get(p.text)
        if digest is None:
            digest = hashlib.sha256(p.text.encode("utf-8")).digest()
            digests[p.text] = digest
        # the later fields are compared only between records whose earlier ones tie
        return (
            digest,
            p.turns,
            p.images,
            p.has_system,
            p.last_user,
            r.task_type or "",
            r.task or "",
            r.domain or "",
            r.id or "",
            r.label or "",
        )

    return sorted(records, key=key)
