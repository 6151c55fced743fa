"""The gateway's attempt loop: call the routed model, fall back down the ranking, record outcomes.

    for each model of the plan (the choice, then its fallbacks), at most `max_attempts` calls:
      no upstream configured            skipped (``model:no_upstream`` in the attempts header)
      a fallback whose breaker is open  skipped (``model:breaker_open``)
      connection error, 429, 5xx,       the failure is recorded on the model's statistics and
      other unexpected status,          breaker, and the next model is tried — after waiting
      401 403 404 (the gateway's own    out a Retry-After (≤ `max_retry_after_seconds`) when the
        key or model name is wrong),    next model shares the upstream that asked for it
      a deadline passed (``timeout``),
      a reply that fails validation
        (``malformed``, see below)
      400 413 422                       the request's own fault: returned to the client as is,
                                        anything credential-shaped in the body redacted
      success                           returned, the body's `model` set to the catalog name

An upstream's reply is checked like a caller's request: strict JSON (no NaN, no numbers past
what a float holds, bounded nesting), an object with a `choices` list, token usage (when
given) as integers in [0, MAX_TOKENS]. For a stream, every ``data:`` line but ``[DONE]`` must be
such a JSON object, and the first one must arrive within the attempt's deadline; comments
before it are kept and sent with it.

The request's outcome (the answer, or the last failure when every attempt failed) goes through
`serving.outcomes.Outcomes`, exactly as a `POST /feedback` would: statistics, breaker,
experiment and one decision-log row, with the latency, the real cost from the upstream's token
usage at catalog prices, and the model that answered. A streamed answer is passed through event
by event; it can fall back only until its first event has arrived. After that, a break, a
malformed event, a silence longer than `stream_idle_seconds` or a stream longer than
`stream_max_seconds` ends it with one error event, and the outcome is recorded when it ends.

With escalation on for a request (`ChatPlan.escalation`), the answer is checked and a stronger
model called when a check fails; see `serving.gateway.escalation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import httpx

from features.text import PromptError, normalize
from models.catalog import Catalog, estimate_tokens
from serving.bookkeeping import Feedback
from serving.config import GatewayConfig
from serving.errors import ApiError
from serving.gateway.escalation import (
    EscalationPolicy,
    answer_text,
    check_answer,
    sse_events,
    stronger_models,
    unstreamed,
)
from serving.gateway.upstreams import Upstream, Upstreams
from serving.health import Health
from serving.metrics import Metrics
from serving.outcomes import Outcomes
from serving.redact import redact_bytes, redact_json

__all__ = [
    "CLIENT_ERRORS",
    "MAX_TOKENS",
    "PROVIDER_ERRORS",
    "ChatPlan",
    "Gateway",
    "GatewayReply",
    "Sleep",
]

_log = logging.getLogger("promptroute.gateway")

Sleep = Callable[[float], Awaitable[None]]

# Statuses that mean the request itself is wrong: another model would refuse it too.
CLIENT_ERRORS = frozenset({400, 413, 422})
# Statuses about the gateway's own credentials or config (a revoked key, a renamed model): the
# caller did nothing wrong, so they fall back and count against the model like a 5xx.
PROVIDER_ERRORS = frozenset({401, 403, 404})
# Token counts beyond this are not usage but garbage (400-digit numbers overflowed the cost).
MAX_TOKENS = 10**9
_MAX_REPLY_DEPTH = 64
_MAX_EVENT_BYTES = 8 * 2**20  # one server-sent event; a stream that never ends one is broken
_MAX_REPLY_BYTES = 32 * 2**20  # one non-streamed reply (or error body): beyond it, malformed
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """One chat completion to carry out.

    `models` is the routed choice followed by its fallbacks (a passthrough names one model);
    `payload` is the client's body without promptroute's extension field — its ``model`` is
    replaced by each upstream's model name; `prompt_tokens` is the estimate used when an
    upstream reports no usage. The decision `request_id` must be pending.
    `escalation` turns on verify-and-escalate for this request; `scores` are the router's
    per-model scores, which say which model is stronger.
    """

    request_id: str
    models: tuple[str, ...]
    payload: Mapping[str, Any]
    stream: bool
    prompt_tokens: int
    caller: str | None = None  # the client key's name; the gateway's outcome comes from it
    escalation: EscalationPolicy | None = None
    scores: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Leg:
    """One answered call of a request: who answered, how long it took, what it cost."""

    model: str
    latency_ms: float
    cost_usd: float
    usage: tuple[int, int]


@dataclass(slots=True)
class GatewayReply:
    """What to send back: a JSON `body`, or a `stream` of server-sent events."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    media_type: str = _JSON
    stream: AsyncIterator[bytes] | None = None
    answer: dict[str, Any] | None = None  # the parsed body of a non-streamed success
    leg: Leg | None = None


@dataclass(slots=True)
class _Attempt:
    model: str
    label: str  # "ok", an HTTP status, "timeout", "network_error", "malformed", "no_upstream", …
    called: bool = True


class _Failed(Exception):
    """An attempt that failed in a way another model might not: try the next one."""

    def __init__(self, label: str, outcome: str, retry_after: float | None = None) -> None:
        super().__init__(label)
        self.label = label
        self.outcome = outcome  # a `serving.metrics.UPSTREAM_OUTCOMES` value
        self.retry_after = retry_after


@dataclass(slots=True)
class _Refused:
    """The upstream refused the request itself (a `CLIENT_ERRORS` status)."""

    status: int
    body: bytes
    media_type: str


@dataclass(slots=True)
class _Opened:
    """A stream that answered 200 and delivered its first data event; nothing was sent yet.

    `first` is that event as it will be sent (after any comments that came before it), and
    `tally` what it said.
    """

    response: httpx.Response
    events: _SseEvents
    first: bytes
    tally: _StreamTally


@dataclass(slots=True)
class _StreamTally:
    """What the relayed events said: usage if the last chunk carried it, else the text seen."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chars: int = 0
    error: bool = False
    data_events: int = 0  # JSON chunks seen
    done_before_data: bool = False  # "[DONE]" came before any chunk


class Gateway:
    """Carry out `ChatPlan`s against the configured upstreams.

    Parameters
    ----------
    upstreams : the resolved upstreams and their pooled client (closed by `aclose`)
    config : the `gateway` config section
    outcomes : where each request's outcome goes (as a ``POST /feedback`` would)
    health : breakers and statistics: fallbacks take a breaker slot, failed attempts count
    catalog : prices, for the cost of the tokens an upstream reports
    metrics : upstream attempt counters
    clock, wall_clock : monotonic seconds for latency; unix seconds for Retry-After dates
    sleep : how a Retry-After is waited out (``asyncio.sleep``; a fake in tests)
    """

    def __init__(
        self,
        upstreams: Upstreams,
        config: GatewayConfig,
        *,
        outcomes: Outcomes,
        health: Health,
        catalog: Catalog,
        metrics: Metrics,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.upstreams = upstreams
        self.config = config
        self.outcomes = outcomes
        self.health = health
        self.catalog = catalog
        self.metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        self.sleep = sleep

    async def aclose(self) -> None:
        await self.upstreams.aclose()

    @property
    def has_upstreams(self) -> bool:
        """Whether any model can be called at all (the config has an ``upstreams:`` section)."""
        return bool(self.upstreams.table)

    def callable_models(self, names: Sequence[str]) -> list[str]:
        """The models of `names` that have an upstream, in order."""
        return [name for name in names if name in self.upstreams]

    async def complete(
        self, plan: ChatPlan, *, settle_success: bool = True, settle_failure: bool = True
    ) -> GatewayReply:
        """Try the plan's models in order; the reply, or ApiError 502 listing every attempt.

        With `settle_success` False a success is not recorded as the request's outcome (the
        caller settles it); with `settle_failure` False the last failure is recorded on the
        model's health only, as earlier failures are.
        """
        if plan.escalation is not None and settle_success:
            return await self._complete_escalating(plan, plan.escalation)
        attempts: list[_Attempt] = []
        failure: tuple[str, float, str] | None = None  # recorded once it is known not to be last
        wait: tuple[str, float] | None = None  # a Retry-After: (base_url, seconds)
        calls = 0
        for position, model in enumerate(plan.models):
            if calls >= self.config.max_attempts:
                break
            upstream = self.upstreams.get(model)
            if upstream is None:
                attempts.append(_Attempt(model, "no_upstream", called=False))
                continue
            # The routed choice took its breaker's probe slot in the pipeline; a fallback takes
            # one now, and is skipped if its circuit opened since the decision.
            if position > 0 and not await self.health.take_slot(model):
                attempts.append(_Attempt(model, "breaker_open", called=False))
                continue
            if failure is not None:
                await self.health.record_outcome(failure[0], success=False, latency_ms=failure[1])
                failure = None
            if wait is not None and wait[0] == upstream.base_url:
                await self.sleep(wait[1])
            wait = None
            calls += 1
            started = self.clock()
            try:
                # The whole attempt, not each read: an upstream dribbling a byte at a time
                # would otherwise hold the request for as long as it likes.
                with anyio.move_on_after(upstream.deadline) as deadline:
                    if plan.stream:
                        result: Any = await self._open_stream(upstream, plan)
                    else:
                        result = await self._call(upstream, plan)
                if deadline.cancelled_caught:
                    raise _Failed("timeout", "timeout")
            except _Failed as failed:
                latency = _ms(self.clock() - started)
                self.metrics.upstream_attempt(model, failed.outcome)
                attempts.append(_Attempt(model, failed.label))
                failure = (model, latency, failed.label)
                after = failed.retry_after
                if after is not None and after <= self.config.max_retry_after_seconds:
                    wait = (upstream.base_url, after)
                continue
            if isinstance(result, _Refused):
                self.metrics.upstream_attempt(model, "client_error")
                attempts.append(_Attempt(model, str(result.status)))
                # Not the model's fault, so not recorded against it; the decision stays pending
                # and is logged unlabelled when it expires, like a /route without feedback.
                headers = _headers(plan.request_id, model, attempts)
                return GatewayReply(result.status, headers, result.body, result.media_type)
            attempts.append(_Attempt(model, "ok"))
            headers = _headers(plan.request_id, model, attempts)
            if isinstance(result, _Opened):
                relay = self._relay(plan, upstream, result, started)
                return GatewayReply(200, headers, media_type="text/event-stream", stream=relay)
            self.metrics.upstream_attempt(model, "ok")
            body, usage = result
            body["model"] = model
            leg = Leg(model, _ms(self.clock() - started), self._cost(model, usage), usage)
            if settle_success:
                await self._settle(
                    plan,
                    model,
                    success=True,
                    latency_ms=leg.latency_ms,
                    cost_usd=leg.cost_usd,
                    usage=usage,
                    response=answer_text(body),
                )
            return GatewayReply(200, headers, _dumps(body), answer=body, leg=leg)
        if failure is not None:
            model, latency, label = failure
            if settle_failure:
                await self._settle(plan, model, success=False, latency_ms=latency, error_type=label)
            else:
                await self.health.record_outcome(model, success=False, latency_ms=latency)
        raise _all_failed(plan.request_id, attempts, called=calls)

    # -- verify and escalate --------------------------------------------------------------------

    async def _complete_escalating(self, plan: ChatPlan, policy: EscalationPolicy) -> GatewayReply:
        """Answer, check, and call a stronger model while a check fails (at most
        `policy.max_escalations` times); the request's outcome sums every answered call."""
        started = self.clock()
        buffered = replace(plan, payload=unstreamed(plan.payload), stream=False, escalation=None)
        prompt = _prompt_text(plan.payload)
        reply = await self.complete(buffered, settle_success=False)
        if reply.leg is None or reply.answer is None:  # the upstream refused the request itself
            return reply
        attempts = [reply.headers["x-promptroute-attempts"]]
        escalated: list[tuple[Leg, str]] = []
        tried = {reply.leg.model}
        verdict_header = "passed"
        while True:
            leg, answer = reply.leg, reply.answer
            assert leg is not None and answer is not None
            verdict = check_answer(
                answer, buffered.payload, prompt, self._verifier(leg.model), policy
            )
            if verdict.passed:
                if verdict.score is not None:
                    verdict_header = f"passed:verifier:{verdict.score:.2f}"
                break
            reason = verdict.reason or ""
            if len(escalated) >= policy.max_escalations:
                verdict_header = f"{reason};max_escalations"
                break
            targets = stronger_models(leg.model, plan.models, plan.scores, tried)
            if not targets:
                verdict_header = f"{reason};no_stronger_model"
                break
            self.metrics.escalation(leg.model, reason.partition(":")[0])
            try:
                stronger: GatewayReply | None = await self.complete(
                    replace(buffered, models=tuple(targets)),
                    settle_success=False,
                    settle_failure=False,
                )
            except ApiError as exc:
                attempts.append((exc.headers or {}).get("x-promptroute-attempts", ""))
                stronger = None
            if stronger is None or stronger.leg is None or stronger.answer is None:
                verdict_header = f"{reason};escalation_failed"
                break
            # The discarded answer's upstream worked: its breaker and latency see a success.
            await self.health.record_outcome(leg.model, success=True, latency_ms=leg.latency_ms)
            attempts[-1] = _relabel_last(attempts[-1], leg.model, "escalated")
            attempts.append(stronger.headers["x-promptroute-attempts"])
            escalated.append((leg, reason))
            tried.add(stronger.leg.model)
            reply = stronger
        final, answer = reply.leg, reply.answer
        assert final is not None and answer is not None
        extra_cost = sum(leg.cost_usd for leg, _ in escalated)
        if escalated:
            self.metrics.escalation_cost(extra_cost)
        await self._settle(
            plan,
            final.model,
            success=True,
            latency_ms=_ms(self.clock() - started),
            cost_usd=final.cost_usd + extra_cost,
            usage=final.usage,
            response=answer_text(answer),
            escalations=[
                {
                    "model": leg.model,
                    "reason": reason,
                    "cost_usd": leg.cost_usd,
                    "latency_ms": leg.latency_ms,
                }
                for leg, reason in escalated
            ],
        )
        headers = {
            **reply.headers,
            "x-promptroute-attempts": ",".join(a for a in attempts if a),
            "x-promptroute-verdict": verdict_header,
        }
        if escalated:
            headers["x-promptroute-escalated"] = ",".join(reason for _, reason in escalated)
        if plan.stream:
            return GatewayReply(
                200, headers, media_type="text/event-stream", stream=sse_events(answer)
            )
        return GatewayReply(200, headers, _dumps(answer), answer=answer, leg=final)

    def _verifier(self, model: str) -> Any:
        """The loaded artifact's answer verifier for `model`, or None."""
        slot = getattr(self.outcomes, "models", None)
        router = getattr(getattr(slot, "current", None), "router", None)
        return getattr(router, "verifiers", {}).get(model)

    # -- one call ------------------------------------------------------------------------------

    def _request(self, upstream: Upstream, plan: ChatPlan) -> httpx.Request:
        payload = {**plan.payload, "model": upstream.upstream_model}
        return self.upstreams.client.build_request(
            "POST",
            upstream.url,
            content=_dumps(payload),
            headers={**upstream.headers, "content-type": _JSON, "accept": _accept(plan)},
            timeout=upstream.timeout,
        )

    async def _call(
        self, upstream: Upstream, plan: ChatPlan
    ) -> tuple[dict[str, Any], tuple[int, int] | None] | _Refused:
        """A non-streaming call: (body, (prompt, completion) tokens or None) or a refusal."""
        with _network_failures():
            response = await self.upstreams.client.send(self._request(upstream, plan), stream=True)
        try:
            content = await _read_capped(response)
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        status = response.status_code
        if status in CLIENT_ERRORS:
            return self._refused(response, content)
        if not 200 <= status < 300:
            raise _status_failure(response, self.wall_clock())
        body = _strict_json(content)
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise _Failed("malformed", "malformed")
        return body, _usage(body.get("usage")) or _estimated(plan, body)

    def _refused(self, response: httpx.Response, content: bytes) -> _Refused:
        # Relayed to the caller: a provider may echo the key it was sent, so redact it.
        body = redact_bytes(content, self.upstreams.secrets)
        return _Refused(response.status_code, body, _media_type(response))

    async def _open_stream(self, upstream: Upstream, plan: ChatPlan) -> _Opened | _Refused:
        """Open a stream and wait for its first event, so that a failure can still fall back."""
        with _network_failures():
            response = await self.upstreams.client.send(self._request(upstream, plan), stream=True)
        handed_over = False
        try:
            status = response.status_code
            if status in CLIENT_ERRORS or not 200 <= status < 300:
                content = await _read_capped(response)
                if status in CLIENT_ERRORS:
                    return self._refused(response, content)
                raise _status_failure(response, self.wall_clock())
            if _media_type(response).split(";")[0].strip() != "text/event-stream":
                raise _Failed("malformed", "malformed")
            events = _SseEvents(response.aiter_bytes())
            tally = _StreamTally()
            first = b""
            while True:  # comments (keep-alives) may come first; the first data event decides
                with _network_failures():
                    event = await events.next()
                if event is None:
                    raise _Failed("malformed", "malformed")
                forwarded = _forward(event, upstream.model, tally, self.upstreams.secrets)
                first += forwarded
                if tally.data_events:
                    break
            if tally.done_before_data:  # "[DONE]" and no answer: nothing usable
                raise _Failed("malformed", "malformed")
            if tally.error:  # the upstream's own error chunk: try the next model
                raise _Failed("error_event", "server_error")
            handed_over = True
            return _Opened(response, events, first, tally)
        finally:
            if not handed_over:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

    async def _relay(
        self, plan: ChatPlan, upstream: Upstream, opened: _Opened, started: float
    ) -> AsyncIterator[bytes]:
        """Pass the events on as they arrive; record the outcome when the stream ends."""
        model = upstream.model
        tally = opened.tally
        outcome = "cancelled"  # unless the loop below ends: the client went away
        error_type = outcome
        ends = anyio.current_time() + upstream.stream_max
        try:
            yield opened.first
            try:
                while True:
                    wait = min(upstream.stream_idle, ends - anyio.current_time())
                    # Only the wait is inside the scope: a cancel scope must not span a yield.
                    with anyio.move_on_after(max(wait, 0.0)) as idle:
                        event = await opened.events.next()
                    if idle.cancelled_caught:
                        raise _Failed("timeout", "timeout")
                    if event is None:
                        break
                    yield _forward(event, model, tally, self.upstreams.secrets)
                outcome = error_type = "stream_error" if tally.error else "ok"
            except _Failed as failed:
                _log.warning("stream from %s failed after it started: %s", model, failed.label)
                outcome, error_type = failed.outcome, failed.label
            except httpx.HTTPError as exc:
                _log.warning("stream from %s broke after it started: %r", model, exc)
                outcome = error_type = "stream_error"
        finally:
            self.metrics.upstream_attempt(model, outcome)
            with anyio.CancelScope(shield=True):
                await opened.response.aclose()
        latency = _ms(self.clock() - started)
        if outcome == "ok":
            usage = (
                (tally.prompt_tokens, tally.completion_tokens)
                if tally.prompt_tokens is not None and tally.completion_tokens is not None
                else (plan.prompt_tokens, estimate_tokens(tally.chars))
            )
            cost = self._cost(model, usage)
            await self._settle(
                plan, model, success=True, latency_ms=latency, cost_usd=cost, usage=usage
            )
            return
        if not tally.error:  # the upstream's own error event was passed on already
            yield _error_event(model, error_type)
        await self._settle(plan, model, success=False, latency_ms=latency, error_type=error_type)

    # -- recording outcomes --------------------------------------------------------------------

    async def _settle(
        self,
        plan: ChatPlan,
        model: str,
        *,
        success: bool,
        latency_ms: float,
        cost_usd: float | None = None,
        error_type: str | None = None,
        usage: tuple[int, int] | None = None,
        response: str | None = None,
        escalations: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Record the request's outcome as its feedback (with token usage for the log; the
        answer text too when the decision log keeps texts)."""
        book = getattr(self.outcomes, "book", None)
        keep_text = bool(getattr(book, "keeps_text", False))
        feedback = Feedback(
            request_id=plan.request_id,
            success=success,
            model=model,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
            error_type=error_type,
            input_tokens=usage[0] if usage else None,
            output_tokens=usage[1] if usage else None,
            caller=plan.caller,
            response=response if keep_text else None,
            escalations=tuple(dict(e) for e in escalations),
        )
        try:
            await self.outcomes.apply(feedback)
        except ApiError:
            # The decision left the pending store meanwhile (evicted as too old, or the store
            # was full); it was logged then. The model's outcome still counts.
            _log.warning(
                "request %s: the decision expired before its outcome; recorded on %s only",
                plan.request_id,
                model,
            )
            await self.health.record_outcome(model, success=success, latency_ms=latency_ms)

    def _cost(self, model: str, usage: tuple[int, int]) -> float:
        return self.catalog[model].cost_usd(*usage)


# ---------------------------------------------------------------------------------------------
# Usage


def _usage(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens; None when not reported; `_Failed` malformed when garbage."""
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise _Failed("malformed", "malformed")
    counts = []
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is not None and not _count(value):
            raise _Failed("malformed", "malformed")
        counts.append(value)
    prompt, completion, _total = counts
    if prompt is None or completion is None:
        return None
    return prompt, completion


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKENS


def _strict_json(raw: bytes | str) -> Any:
    """An upstream's JSON, held to what a caller's must be; `_Failed` malformed otherwise."""
    try:
        value = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # bad JSON, NaN/Infinity, over 4300 digits, too deep
        raise _Failed("malformed", "malformed") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > _MAX_REPLY_DEPTH:
                raise _Failed("malformed", "malformed")
            stack.extend(
                (v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)
            )
        elif isinstance(item, float) and not math.isfinite(item):  # 1e400 parses as inf
            raise _Failed("malformed", "malformed")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _estimated(plan: ChatPlan, body: dict[str, Any]) -> tuple[int, int]:
    chars = 0
    for choice in body["choices"]:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
    return plan.prompt_tokens, estimate_tokens(chars)


# ---------------------------------------------------------------------------------------------
# HTTP details


@contextlib.contextmanager
def _network_failures() -> Iterator[None]:
    """Turn httpx's transport errors into `_Failed`."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise _Failed("timeout", "timeout") from exc
    except httpx.TransportError as exc:
        raise _Failed("network_error", "network_error") from exc
    except httpx.DecodingError as exc:
        raise _Failed("malformed", "malformed") from exc


async def _read_capped(response: httpx.Response) -> bytes:
    """The whole body of a reply opened as a stream; `_Failed` malformed past _MAX_REPLY_BYTES
    (an upstream cannot make the gateway hold an unbounded body in memory)."""
    chunks: list[bytes] = []
    size = 0
    with _network_failures():
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > _MAX_REPLY_BYTES:
                raise _Failed("malformed", "malformed")
            chunks.append(chunk)
    return b"".join(chunks)


def _status_failure(response: httpx.Response, now: float) -> _Failed:
    status = response.status_code
    if status == 429:
        outcome = "rate_limited"
    elif status in PROVIDER_ERRORS:
        outcome = "provider_error"
    else:
        outcome = "server_error" if status >= 500 else "http_error"
    return _Failed(str(status), outcome, _retry_after(response.headers, now))


def _retry_after(headers: httpx.Headers, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    value = headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - now
        except (TypeError, ValueError):
            return None
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def _media_type(response: httpx.Response) -> str:
    return response.headers.get("content-type", _JSON)


def _accept(plan: ChatPlan) -> str:
    return "text/event-stream" if plan.stream else _JSON


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000.0, 3)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _prompt_text(payload: Mapping[str, Any]) -> str:
    """The last user turn, which the verifier reads as the question."""
    try:
        return normalize(messages=payload.get("messages")).last_user
    except PromptError:
        return ""


def _relabel_last(attempts: str, model: str, label: str) -> str:
    head, _, last = attempts.rpartition(",")
    if last.startswith(f"{model}:"):
        last = f"{model}:{label}"
    return f"{head},{last}" if head else last


def _headers(request_id: str, model: str | None, attempts: list[_Attempt]) -> dict[str, str]:
    headers = {
        "x-promptroute-request-id": request_id,
        "x-promptroute-attempts": ",".join(f"{a.model}:{a.label}" for a in attempts),
        "x-promptroute-fallbacks": ",".join(a.model for a in attempts[1:] if a.called),
    }
    if model is not None:
        headers["x-promptroute-model"] = model
    return headers


def _all_failed(request_id: str, attempts: list[_Attempt], *, called: int) -> ApiError:
    listed = ", ".join(f"{a.model}: {a.label}" for a in attempts)
    if called:
        message = f"every upstream attempt failed ({listed})"
    else:
        message = f"no routed model could be called ({listed})"
    return ApiError(
        502,
        "upstream_failed",
        message,
        headers=_headers(request_id, None, attempts),
        request_id=request_id,
        attempts=[{"model": a.model, "outcome": a.label} for a in attempts],
    )


_STREAM_ERROR_CODES = {"timeout": "stream_timeout", "malformed": "stream_malformed"}


def _error_event(model: str, error_type: str) -> bytes:
    what = {
        "timeout": "stopped sending within its deadline",
        "malformed": "sent an invalid event",
    }.get(error_type, "failed")
    error = {
        "error": {
            "message": f"the upstream of {model} {what} while streaming its answer",
            "type": "upstream_error",
            "param": None,
            "code": _STREAM_ERROR_CODES.get(error_type, "stream_interrupted"),
        }
    }
    return b"data: " + _dumps(error) + b"\n\n"


# ---------------------------------------------------------------------------------------------
# Server-sent events


class _SseEvents:
    """Split an SSE byte stream into events (the text between blank lines), CRLF made LF."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self._ended = False

    async def next(self) -> bytes | None:
        """The next non-empty event without its blank line, or None at the end."""
        while True:
            cut = self._buffer.find(b"\n\n")
            if cut >= 0:
                event, self._buffer = self._buffer[:cut], self._buffer[cut + 2 :]
                if event.strip(b"\n"):
                    return event
                continue
            if self._ended:
                event, self._buffer = self._buffer.strip(b"\n"), b""
                return event or None
            if len(self._buffer) > _MAX_EVENT_BYTES:
                raise _Failed("malformed", "malformed")
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                continue
            # A CR ending one chunk and the LF starting the next meet here, so both are caught.
            self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")


def _forward(event: bytes, model: str, tally: _StreamTally, secrets: Sequence[str] = ()) -> bytes:
    """The event as sent on, its data checked: `_Failed` malformed unless it is ``[DONE]`` or
    one strict JSON object. A chunk gets `model` set to the catalog name, an error chunk its
    credentials redacted; usage and text are tallied. An event without data (a comment)
    passes unchanged."""
    lines = event.split(b"\n")
    data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
    if not data:
        return event + b"\n\n"
    # Several data lines make one value, joined by newlines (the SSE rule).
    raw = b"\n".join(_field_value(lines[i]) for i in data)
    if raw.strip() == b"[DONE]":
        tally.done_before_data = tally.done_before_data or not tally.data_events
        return event + b"\n\n"
    chunk = _strict_json(raw)
    if not isinstance(chunk, dict):
        raise _Failed("malformed", "malformed")
    _tally(chunk, tally)
    tally.data_events += 1
    if "error" in chunk:  # relayed to the caller: a provider's message may quote a key
        chunk = redact_json(chunk, secrets)
    if "model" in chunk:
        chunk["model"] = model
    # Sent re-encoded, on one data line where the first one was: what goes out is what was
    # checked, byte for byte.
    kept = [line for i, line in enumerate(lines) if i not in data[1:]]
    kept[data[0]] = b"data: " + _dumps(chunk)
    return b"\n".join(kept) + b"\n\n"


def _field_value(line: bytes) -> bytes:
    raw = line[5:]
    return raw[1:] if raw.startswith(b" ") else raw


def _tally(chunk: dict[str, Any], tally: _StreamTally) -> None:
    if "error" in chunk:
        tally.error = True
    usage = _usage(chunk.get("usage"))
    if usage is not None:
        tally.prompt_tokens, tally.completion_tokens = usage
    choices = chunk.get("choices")
    if isinstance(choices, list):
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                tally.chars += len(content)
