"""The decision log's two row kinds, and how a reader joins them into training rows.

The service writes a decision's row when `/route` answers (so nothing acknowledged is lost if
the process dies) and each outcome as a row of its own when feedback, or the gateway's own
result, arrives — possibly in another process's file. Both carry the request id:

``decision``  ``{"id", "kind": "decision", "prompt"|"messages"|"prompt_sha256", "model",
              "fallbacks", "input_tokens", "task_type"?, "ts", "router_version",
              "experiment"?: {"name", "variant"}, "caller"?, "propensity"?}``
``outcome``   ``{"id", "kind": "outcome", "model", "success", "quality"?, "cost_usd"?,
              "latency_ms"?, "error_type"?, "input_tokens"?, "output_tokens"?, "response"?,
              "escalations"?, "ts"}``

`join_rows` turns them back into the single-call rows `promptroute train` reads (the decision's
prompt with one outcome's model and label, ``routed_model`` when the outcome is a fallback's),
across any number of files and in any order; a decision with no outcome gives one row with
``"success": null`` (unlabelled). Rows without a ``kind`` pass through unchanged.

This module sits below both the writer (`serving`) and the reader (`training`), so the two
agree on one definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

_W = TypeVar("_W")  # where a row was read (a "file:line" string, or a reader's own marker)

__all__ = ["DECISION", "KINDS", "OUTCOME", "JoinReport", "join_rows"]

DECISION = "decision"
OUTCOME = "outcome"
KINDS = (DECISION, OUTCOME)

# What an outcome row contributes to the joined row (the rest comes from the decision).
_OUTCOME_FIELDS = (
    "success",
    "quality",
    "cost_usd",
    "latency_ms",
    "error_type",
    "input_tokens",
    "output_tokens",
    "response",
    "escalations",
)
_DECISION_FIELDS = ("prompt", "messages", "prompt_sha256", "task_type", "router_version")


@dataclass
class JoinReport:
    """What `join_rows` matched: outcome rows whose decision was never seen, by where they were."""

    decisions: int = 0
    outcomes: int = 0
    unanswered: int = 0
    orphans: list[tuple[Any, str]] = field(default_factory=list)  # (where, request id)


def _joined(decision: dict[str, Any], outcome: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": decision["id"]}
    for key in _DECISION_FIELDS:
        if decision.get(key) is not None:
            row[key] = decision[key]
    routed = decision.get("model")
    row["input_tokens"] = decision.get("input_tokens")
    if outcome is None:
        row["model"] = routed
        row["success"] = None
    else:
        row["model"] = outcome.get("model", routed)
        for key in _OUTCOME_FIELDS:
            if outcome.get(key) is not None:
                row[key] = outcome[key]
        row.setdefault("success", None)
        if row["model"] != routed:
            row["routed_model"] = routed
    if decision.get("experiment") is not None:
        row["experiment"] = decision["experiment"]
    # The propensity is the routed model's: a fallback that answered instead has none.
    if decision.get("propensity") is not None and row["model"] == routed:
        row["propensity"] = decision["propensity"]
    row["ts"] = decision.get("ts")
    return row


def join_rows(
    rows: Iterable[tuple[_W, dict[str, Any]]], report: JoinReport | None = None
) -> Iterator[tuple[_W, dict[str, Any]]]:
    """Join decision and outcome rows by request id; pass any other row through.

    `rows` are ``(where, row)`` pairs (``where`` names the file and line, for messages). A
    decision's joined rows are yielded where its decision row stood, one per outcome (in the
    order the outcomes were read), once every row has been read — outcomes may come from any
    file, before or after their decision. Rows without a ``kind`` are yielded as they come.
    An outcome whose decision is never seen is listed in `report.orphans`, not yielded.

    >>> rows = [("a:1", {"id": "r", "kind": "decision", "prompt": "hi", "model": "m"}),
    ...         ("b:1", {"id": "r", "kind": "outcome", "model": "m", "success": True})]
    >>> [(w, r["prompt"], r["success"]) for w, r in join_rows(rows)]
    [('a:1', 'hi', True)]
    """
    report = report if report is not None else JoinReport()
    decisions: dict[str, tuple[_W, dict[str, Any]]] = {}
    outcomes: dict[str, list[tuple[_W, dict[str, Any]]]] = {}
    order: list[str] = []
    for where, row in rows:
        kind = row.get("kind")
        if kind == DECISION:
            rid = str(row.get("id"))
            if rid not in decisions:
                order.append(rid)
            decisions[rid] = (where, row)
            report.decisions += 1
        elif kind == OUTCOME:
            outcomes.setdefault(str(row.get("id")), []).append((where, row))
            report.outcomes += 1
        else:
            yield where, row
    for rid in order:
        where, decision = decisions[rid]
        answered = outcomes.pop(rid, None)
        if not answered:
            report.unanswered += 1
            yield where, _joined(decision, None)
            continue
        for _outcome_where, outcome in answered:
            yield where, _joined(decision, outcome)
    for rid, left in outcomes.items():
        for where, _row in left:
            report.orphans.append((where, rid))
