"""The gateway's attempt loop: call the routed model, fall back down the ranking, record outcomes.

    for each model of the plan (the choice, then its fallbacks), at most `max_attempts` calls:
      no upstream configured            skipped (``model:no_upstream`` in the attempts header)
      a fallback whose breaker is open  skipped (``model:breaker_open``)
      connection error, timeout, 429,   the failure is recorded on the model's statistics and
      5xx, other unexpected status,     breaker, and the next model is tried — after waiting
      a body that is not JSON           out a Retry-After (≤ `max_retry_after_seconds`) when the
                                        next model shares the upstream that asked for it
      400 401 403 404 413 422           the request's own fault: returned to the client as is
      success                           returned, the body's `model` set to the catalog name

The request's outcome (the answer, or the last failure when every attempt failed) goes through
`serving.outcomes.Outcomes`, exactly as a `POST /feedback` would: statistics, breaker,
experiment and one decision-log row, with the latency, the real cost from the upstream's token
usage at catalog prices, and the model that answered. A streamed answer is passed through event
by event; it can fall back only until its first event has arrived, and its outcome is recorded
when the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from models.catalog import Catalog, estimate_tokens
from serving.bookkeeping import Feedback
from serving.config import GatewayConfig
from serving.errors import ApiError
from serving.gateway.upstreams import Upstream, Upstreams
from serving.health import Health
from serving.metrics import Metrics
from serving.outcomes import Outcomes

__all__ = ["CLIENT_ERRORS", "ChatPlan", "Gateway", "GatewayReply", "Sleep"]

_log = logging.getLogger("promptroute.gateway")

Sleep = Callable[[float], Awaitable[None]]

# Statuses that mean the request itself is wrong: another model would refuse it too.
CLIENT_ERRORS = frozenset({400, 401, 403, 404, 413, 422})
_MAX_EVENT_BYTES = 8 * 2**20  # one server-sent event; a stream that never ends one is broken
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class ChatPlan:
    """One chat completion to carry out.

    `models` is the routed choice followed by its fallbacks (a passthrough names one model);
    `payload` is the client's body without promptroute's extension field — its ``model`` is
    replaced by each upstream's model name; `prompt_tokens` is the estimate used when an
    upstream reports no usage. The decision `request_id` must be pending.
    """

    request_id: str
    models: tuple[str, ...]
    payload: Mapping[str, Any]
    stream: bool
    prompt_tokens: int


@dataclass(slots=True)
class GatewayReply:
    """What to send back: a JSON `body`, or a `stream` of server-sent events."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    media_type: str = _JSON
    stream: AsyncIterator[bytes] | None = None


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
    """A stream that answered 200 and delivered its first event; nothing was sent yet."""

    response: httpx.Response
    events: _SseEvents
    first: bytes


@dataclass(slots=True)
class _StreamTally:
    """What the relayed events said: usage if the last chunk carried it, else the text seen."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    chars: int = 0
    error: bool = False


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

    def callable_models(self, names: Sequence[str]) -> list[str]:
        """The models of `names` that have an upstream, in order."""
        return [name for name in names if name in self.upstreams]

    async def complete(self, plan: ChatPlan) -> GatewayReply:
        """Try the plan's models in order; the reply, or ApiError 502 listing every attempt."""
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
                if plan.stream:
                    result: Any = await self._open_stream(upstream, plan)
                else:
                    result = await self._call(upstream, plan)
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
                relay = self._relay(plan, model, result, started)
                return GatewayReply(200, headers, media_type="text/event-stream", stream=relay)
            self.metrics.upstream_attempt(model, "ok")
            body, usage = result
            body["model"] = model
            await self._settle(
                plan,
                model,
                success=True,
                latency_ms=_ms(self.clock() - started),
                cost_usd=self._cost(model, usage),
                usage=usage,
            )
            return GatewayReply(200, headers, _dumps(body))
        if failure is not None:
            model, latency, label = failure
            await self._settle(plan, model, success=False, latency_ms=latency, error_type=label)
        raise _all_failed(plan.request_id, attempts, called=calls)

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
            response = await self.upstreams.client.send(self._request(upstream, plan))
        status = response.status_code
        if status in CLIENT_ERRORS:
            return _Refused(status, response.content, _media_type(response))
        if not 200 <= status < 300:
            raise _status_failure(response, self.wall_clock())
        try:
            body = json.loads(response.content)
        except ValueError:
            raise _Failed("malformed", "malformed") from None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise _Failed("malformed", "malformed")
        return body, _usage(body.get("usage")) or _estimated(plan, body)

    async def _open_stream(self, upstream: Upstream, plan: ChatPlan) -> _Opened | _Refused:
        """Open a stream and wait for its first event, so that a failure can still fall back."""
        with _network_failures():
            response = await self.upstreams.client.send(self._request(upstream, plan), stream=True)
        handed_over = False
        try:
            status = response.status_code
            if status in CLIENT_ERRORS or not 200 <= status < 300:
                with _network_failures():
                    await response.aread()
                if status in CLIENT_ERRORS:
                    return _Refused(status, response.content, _media_type(response))
                raise _status_failure(response, self.wall_clock())
            if _media_type(response).split(";")[0].strip() != "text/event-stream":
                raise _Failed("malformed", "malformed")
            events = _SseEvents(response.aiter_bytes())
            with _network_failures():
                first = await events.next()
            if first is None:
                raise _Failed("malformed", "malformed")
            handed_over = True
            return _Opened(response, events, first)
        finally:
            if not handed_over:
                with anyio.CancelScope(shield=True):
                    await response.aclose()

    async def _relay(
        self, plan: ChatPlan, model: str, opened: _Opened, started: float
    ) -> AsyncIterator[bytes]:
        """Pass the events on as they arrive; record the outcome when the stream ends."""
        tally = _StreamTally()
        outcome = "cancelled"  # unless the loop below ends: the client went away
        try:
            yield _forward(opened.first, model, tally)
            try:
                while (event := await opened.events.next()) is not None:
                    yield _forward(event, model, tally)
                outcome = "stream_error" if tally.error else "ok"
            except (httpx.HTTPError, _Failed) as exc:
                _log.warning("stream from %s broke after it started: %r", model, exc)
                outcome = "stream_error"
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
            yield _error_event(model)
        await self._settle(plan, model, success=False, latency_ms=latency, error_type=outcome)

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
    ) -> None:
        """Record the request's outcome as its feedback (with token usage for the log)."""
        feedback = Feedback(
            request_id=plan.request_id,
            success=success,
            model=model,
            latency_ms=latency_ms,
            cost_usd=cost_usd,
            error_type=error_type,
            input_tokens=usage[0] if usage else None,
            output_tokens=usage[1] if usage else None,
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
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if _count(prompt) and _count(completion):
        return prompt, completion
    return None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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


def _status_failure(response: httpx.Response, now: float) -> _Failed:
    status = response.status_code
    outcome = "rate_limited" if status == 429 else "server_error" if status >= 500 else "http_error"
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


def _error_event(model: str) -> bytes:
    error = {
        "error": {
            "message": f"the upstream of {model} failed while streaming its answer",
            "type": "upstream_error",
            "param": None,
            "code": "stream_interrupted",
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


def _forward(event: bytes, model: str, tally: _StreamTally) -> bytes:
    """The event as sent on: a JSON chunk gets `model` set to the catalog name; usage and text
    are tallied. Anything else (comments, ``[DONE]``, other fields) passes unchanged."""
    lines = event.split(b"\n")
    data = [i for i, line in enumerate(lines) if line.startswith(b"data:")]
    if len(data) == 1:
        raw = lines[data[0]][5:]
        raw = raw[1:] if raw.startswith(b" ") else raw
        if raw.strip() != b"[DONE]":
            try:
                chunk = json.loads(raw)
            except ValueError:
                chunk = None
            if isinstance(chunk, dict):
                _tally(chunk, tally)
                if "model" in chunk:
                    chunk["model"] = model
                    lines[data[0]] = b"data: " + _dumps(chunk)
    return b"\n".join(lines) + b"\n\n"


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
