"""One Redis connection for the shared state, with group commit and fault handling.

Every write the shared implementations make goes through `RedisStore.call` (awaited) or
`RedisStore.send` (not awaited): the commands queued while the event loop is busy are sent
together, as one pipeline, by one flusher. So a /route whose decision, experiment tally and
probe slot all change shared state costs one round trip, and under load one round trip serves
many requests.

Faults: a round trip that fails or takes longer than `timeout_seconds` marks the store
*degraded*; from then on calls fail at once with `StateUnavailable` (the callers fall back to
local state: no request waits on a dead Redis) and a monitor pings Redis every `retry_seconds`.
When it answers, the store is healthy again and the `on_resume` hooks run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from serving.config import StateConfig
from serving.metrics import Metrics
from serving.shared import scripts

__all__ = ["RedisStore", "StateUnavailable", "now_arg"]

_log = logging.getLogger("promptroute.state")

_SCRIPTS = {
    "breaker": scripts.BREAKER,
    "snapshot": scripts.SNAPSHOT,
    "remember": scripts.REMEMBER,
    "expire": scripts.EXPIRE,
    "claim": scripts.CLAIM,
    "feedback": scripts.FEEDBACK,
    "tally": scripts.TALLY_OUTCOME,
    "tallies": scripts.TALLIES,
}

_Op = tuple[str, Sequence[str], Sequence[Any], "asyncio.Future[Any] | None"]


class StateUnavailable(Exception):
    """Redis did not answer in time, or is known to be down; the caller uses local state."""


class RedisStore:
    """The shared state's connection: group-committed script calls, degraded mode, resume."""

    def __init__(
        self,
        config: StateConfig,
        *,
        metrics: Metrics,
        client: Redis | None = None,
    ) -> None:
        assert config.url is not None
        self.config = config
        self.prefix = config.prefix
        self._metrics = metrics
        self._client = client or Redis.from_url(
            config.url,
            socket_timeout=config.timeout_seconds,
            socket_connect_timeout=config.connect_timeout_seconds,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait: fall back instead
            health_check_interval=0,
        )
        self._shas = {
            name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SCRIPTS.items()
        }
        self._queue: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._resume_hooks: list[Callable[[], Awaitable[None] | None]] = []
        self._closed = False
        self.degraded = False
        self.last_error: str | None = None
        metrics.track_state(lambda: self.degraded)

    def key(self, *parts: str) -> str:
        """A key under this store's prefix."""
        return ":".join((self.prefix, *parts))

    def on_resume(self, hook: Callable[[], Awaitable[None] | None]) -> None:
        """Run `hook` each time Redis answers again after a fault."""
        self._resume_hooks.append(hook)

    async def start(self) -> None:
        """Load the scripts; a Redis that does not answer starts the store degraded."""
        try:
            await asyncio.wait_for(self._load_scripts(), self.config.connect_timeout_seconds * 4)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._fault(exc)

    # -- calls -----------------------------------------------------------------------------

    def call(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        """Queue one script call for the next round trip; its reply, or `StateUnavailable`."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.degraded or self._closed:
            future.set_exception(StateUnavailable(self.last_error or "closed"))
            return future
        self._enqueue((script, keys, args, future))
        return future

    def send(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> None:
        """Queue one script call whose reply nobody waits for (a fault drops it, counted)."""
        if self.degraded or self._closed:
            self._metrics.state_dropped.inc()
            return
        self._enqueue((script, keys, args, None))

    def _enqueue(self, op: _Op) -> None:
        self._queue.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        # Let every request that is ready to run queue its commands first: one pipeline for all.
        await asyncio.sleep(0)
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                await self._run(batch)
            except Exception as exc:  # a bug, not a fault: no caller may wait forever on it
                _log.exception("shared-state batch failed")
                for *_, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(StateUnavailable(f"batch failed: {exc}"))

    async def _run(self, batch: list[_Op]) -> None:
        try:
            replies = await asyncio.wait_for(self._execute(batch), self.config.timeout_seconds)
            missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            if missing:  # Redis restarted (or flushed its scripts): load them, run those again
                await self._load_scripts()
                again = await asyncio.wait_for(
                    self._execute([batch[i] for i in missing]), self.config.timeout_seconds
                )
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._fault(exc)
            error = StateUnavailable(self.last_error or "redis fault")
            for *_, future in batch:
                if future is not None and not future.done():
                    future.set_exception(error)
                elif future is None:
                    self._metrics.state_dropped.inc()
            return
        for (name, *_rest, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, Exception):
                # A script error is a bug, not a fault: say so loudly, fall back all the same.
                _log.error("shared-state script %s failed: %s", name, reply)
                reply = StateUnavailable(f"script {name} failed: {reply}")
                if future is not None and not future.done():
                    future.set_exception(reply)
            elif future is not None and not future.done():
                future.set_result(reply)

    async def _execute(self, batch: list[_Op]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for name, keys, args, _future in batch:
            pipe.evalsha(self._shas[name], len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))

    async def _load_scripts(self) -> None:
        pipe = self._client.pipeline(transaction=False)
        for src in _SCRIPTS.values():
            pipe.script_load(src)
        await pipe.execute()

    # -- faults ----------------------------------------------------------------------------

    def _fault(self, exc: BaseException) -> None:
        self._metrics.state_errors.inc()
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if not self.degraded:
            self.degraded = True
            _log.warning("shared state degraded (%s); serving from local state", self.last_error)
        if self._monitor is None or self._monitor.done():
            with contextlib.suppress(RuntimeError):  # no running loop: start() will retry
                self._monitor = asyncio.get_running_loop().create_task(self._recover())

    async def _recover(self) -> None:
        while self.degraded and not self._closed:
            await asyncio.sleep(self.config.retry_seconds)
            try:
                await asyncio.wait_for(self._client.ping(), self.config.timeout_seconds)
                await asyncio.wait_for(self._load_scripts(), self.config.timeout_seconds * 4)
            except (RedisError, OSError, asyncio.TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                continue
            self.degraded = False
            self.last_error = None
            _log.warning("shared state resumed: Redis answers again")
            for hook in self._resume_hooks:
                try:
                    result = hook()
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    _log.exception("a resume hook failed")

    async def close(self) -> None:
        """Send what is queued, stop the monitor, close the connections. Safe to call twice."""
        if self._closed:
            return
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flusher, self.config.timeout_seconds * 2)
        self._closed = True
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
        with contextlib.suppress(Exception):
            await self._client.aclose()

    def status(self) -> dict[str, Any]:
        """For /readyz: the backend, and whether it is degraded (with the last error)."""
        out: dict[str, Any] = {"backend": "redis", "degraded": self.degraded}
        if self.degraded and self.last_error:
            out["error"] = self.last_error[:200]
        return out


def now_arg(clock: Callable[[], float]) -> str:
    """The caller's clock as a script argument."""
    return repr(float(clock()))
