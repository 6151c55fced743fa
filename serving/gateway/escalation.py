"""Verify and escalate: check the routed model's answer and call a stronger model when it fails.

A router decides from the prompt alone; the gateway also sees the answer. With escalation on
(``promptroute.escalate`` on the request, or ``gateway.escalation.enabled`` in the config), the
answer is checked, cheapest check first, and the first failing check escalates:

    length     the reply stopped at the token limit (``finish_reason: "length"``)
    empty      no text and no tool call
    refusal    the model refused (OpenAI's ``message.refusal``, or a reply that opens "I'm sorry,
               but I can't …")
    json       ``response_format`` asked for JSON and the text does not parse, or does not match
               the ``json_schema`` given (checked with `jsonschema`)
    tool_args  a tool call's ``arguments`` are not a JSON object
    verifier   the artifact's learned verifier for the answering model scores the answer below the
               threshold (``verifier:0.31<0.50``); skipped for models without a verifier

An escalation calls the next model of the decision's ranking whose predicted quality is higher
than the answering model's (the fallbacks passed every filter already), at most
``max_escalations`` times (1 by default). If the stronger call fails, the first answer is
served. Both calls are paid and counted: the request's cost and latency in the decision log,
the metrics and the experiments are the sums, and the log row lists each discarded answer
(``escalations``). Headers name every attempt (``x-promptroute-attempts``) and each escalation
with its reason (``x-promptroute-escalated``). A streamed request is buffered when escalation is
on for it: the upstream is called without streaming and the checked answer is sent as events.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jsonschema

from models.verifier import Verifier
from serving.config import ESCALATION_CHECKS, EscalationConfig
from serving.errors import ApiError

__all__ = [
    "ESCALATION_CHECKS",
    "EscalationPolicy",
    "Verdict",
    "answer_text",
    "check_answer",
    "policy_for",
    "sse_events",
    "stronger_models",
]

_REFUSAL = re.compile(
    r"^\s*(?:i['’]m sorry|i am sorry|sorry|i apologi[sz]e)?[,.!]?\s*(?:but\s+)?"
    r"(?:i\s+(?:can(?:no|['’])t|am\s+(?:not\s+able|unable)|won['’]t|will\s+not)\s+"
    r"(?:help|assist|comply|provide|do\s+that|answer|fulfil))",
    re.IGNORECASE,
)
_POLICY_KEYS = ("checks", "threshold", "max_escalations")


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """Which checks run, the verifier threshold (None: the verifier's own), how many escalations."""

    checks: tuple[str, ...]
    threshold: float | None
    max_escalations: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """The first failing check (`reason`, e.g. ``json:schema``), or None; the verifier's score."""

    reason: str | None
    score: float | None = None

    @property
    def passed(self) -> bool:
        return self.reason is None


def _bad(field: str, problem: str) -> ApiError:
    return ApiError(422, "invalid_request", f"{field}: {problem}", field=field)


def policy_for(value: Any, config: EscalationConfig) -> EscalationPolicy | None:
    """The request's policy from ``promptroute.escalate`` (None: absent) and the config.

    ``true``/``false`` switch escalation on or off with the configured checks; an object turns
    it on and may override ``checks``, ``threshold`` and ``max_escalations``.
    Raises ApiError 422 naming the field for anything else.
    """
    base = EscalationPolicy(tuple(config.checks), config.threshold, config.max_escalations)
    if value is None:
        return base if config.enabled else None
    if isinstance(value, bool):
        return base if value else None
    where = "promptroute.escalate"
    if not isinstance(value, dict):
        raise _bad(
            where, "must be true, false or an object with checks, threshold, max_escalations"
        )
    for key in value:
        if key not in _POLICY_KEYS:
            raise _bad(
                f"{where}.{key}", f"unknown field (expected one of: {', '.join(_POLICY_KEYS)})"
            )
    checks = base.checks
    if "checks" in value:
        raw = value["checks"]
        if not isinstance(raw, list) or not raw:
            raise _bad(f"{where}.checks", "must be a non-empty list of check names")
        for i, name in enumerate(raw):
            if name not in ESCALATION_CHECKS:
                raise _bad(
                    f"{where}.checks[{i}]",
                    f"unknown check {name!r}; known: {', '.join(ESCALATION_CHECKS)}",
                )
        checks = tuple(c for c in ESCALATION_CHECKS if c in raw)  # always cheapest first
    threshold = base.threshold
    if "threshold" in value:
        t = value["threshold"]
        if isinstance(t, bool) or not isinstance(t, int | float) or not (0 < t < 1):
            raise _bad(f"{where}.threshold", "must be a number between 0 and 1 (exclusive)")
        threshold = float(t)
    most = base.max_escalations
    if "max_escalations" in value:
        m = value["max_escalations"]
        if isinstance(m, bool) or not isinstance(m, int) or not (1 <= m <= 3):
            raise _bad(f"{where}.max_escalations", "must be a whole number from 1 to 3")
        most = m
    return EscalationPolicy(checks, threshold, most)


def _message(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], Any]:
    """(the first choice's message, its finish_reason); empty when the body has none."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    if not isinstance(choice, dict):
        return {}, None
    message = choice.get("message")
    return (message if isinstance(message, dict) else {}), choice.get("finish_reason")


def answer_text(body: Mapping[str, Any]) -> str:
    """The first choice's text (content parts joined); "" when there is none."""
    content = _message(body)[0].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _json_check(text: str, response_format: Any) -> str | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind not in ("json_object", "json_schema"):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return "json:parse"
    if kind == "json_object":
        return None if isinstance(value, dict) else "json:parse"
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return None
    try:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        error = next(iter(cls(schema).iter_errors(value)), None)
    except Exception:  # noqa: BLE001 - a schema jsonschema cannot use (bad $ref, …)
        return None  # the client's schema is broken: the model is not to blame
    return None if error is None else "json:schema"


def _tool_args_check(message: Mapping[str, Any]) -> str | None:
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        return None
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        args = function.get("arguments") if isinstance(function, dict) else None
        try:
            parsed = json.loads(args) if isinstance(args, str) else None
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            return "tool_args"
    return None


def check_answer(
    body: Mapping[str, Any],
    payload: Mapping[str, Any],
    prompt: str,
    verifier: Verifier | None,
    policy: EscalationPolicy,
) -> Verdict:
    """Run `policy`'s checks on one reply `body` to the request `payload`, cheapest first."""
    message, finish = _message(body)
    text = answer_text(body)
    has_tools = isinstance(message.get("tool_calls"), list) and bool(message["tool_calls"])
    refusal = message.get("refusal")
    for check in policy.checks:
        if check == "length" and finish == "length":
            return Verdict("length")
        if check == "empty" and not text.strip() and not has_tools and not refusal:
            return Verdict("empty")
        if check == "refusal" and (
            (isinstance(refusal, str) and refusal.strip()) or _REFUSAL.match(text[:200])
        ):
            return Verdict("refusal")
        if check == "json" and not has_tools:
            reason = _json_check(text, payload.get("response_format"))
            if reason is not None:
                return Verdict(reason)
        if check == "tool_args" and has_tools:
            reason = _tool_args_check(message)
            if reason is not None:
                return Verdict(reason)
        if check == "verifier" and verifier is not None and text.strip():
            score = verifier.score(prompt, text)
            threshold = verifier.threshold if policy.threshold is None else policy.threshold
            if score < threshold:
                return Verdict(f"verifier:{score:.2f}<{threshold:.2f}", score)
            return Verdict(None, score)
    return Verdict(None)


def stronger_models(
    answered: str, ranking: Sequence[str], scores: Mapping[str, float], tried: set[str]
) -> list[str]:
    """The untried models of `ranking` whose predicted quality beats `answered`'s, in order."""
    base = scores.get(answered)
    if base is None or not math.isfinite(base):
        return []
    return [
        m for m in ranking if m not in tried and m != answered and scores.get(m, -math.inf) > base
    ]


def unstreamed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload for a buffered call: no streaming, so the whole answer can be checked."""
    return {k: v for k, v in payload.items() if k not in ("stream", "stream_options")}


async def sse_events(body: Mapping[str, Any]) -> AsyncIterator[bytes]:
    """A checked, complete answer as chat-completion chunk events (the buffered stream)."""
    base = {
        "id": body.get("id", ""),
        "object": "chat.completion.chunk",
        "created": body.get("created", 0),
        "model": body.get("model", ""),
    }
    choices = body.get("choices") if isinstance(body.get("choices"), list) else []
    deltas = []
    for i, choice in enumerate(choices):
        choice = choice if isinstance(choice, dict) else {}
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        delta = {k: v for k, v in message.items() if v is not None}
        if isinstance(delta.get("tool_calls"), list):  # stream deltas number their tool calls
            delta["tool_calls"] = [
                {**c, "index": j} if isinstance(c, dict) else c
                for j, c in enumerate(delta["tool_calls"])
            ]
        deltas.append(
            {
                "index": choice.get("index", i),
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
            }
        )
    yield _event({**base, "choices": deltas})
    if isinstance(body.get("usage"), dict):
        yield _event({**base, "choices": [], "usage": body["usage"]})
    yield b"data: [DONE]\n\n"


def _event(chunk: Mapping[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    )
