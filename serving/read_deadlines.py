"""Deadlines for reading a request, so that stalled connections cannot pile up (slow loris).

uvicorn times out only the idle gap between two requests on a kept-alive connection, and that
timer stops at the first byte of the next request. A client that opens a connection and sends
nothing, or sends a header line every few seconds, or promises a body and never sends it, keeps
its connection (and, for the body, a task) forever. Two deadlines close that:

    header deadline   `header_protocol(seconds)`: a uvicorn HTTP protocol class whose
                      connections must deliver a complete request head within `seconds` of
                      opening (or of the previous response) — else 408 and closed.
                      `HeaderDeadlineProtocol` is the same class by import string
                      (``serving.read_deadlines:HeaderDeadlineProtocol``), for uvicorn's worker
                      processes; its `header_timeout` is set in each worker
    body deadline     `BodyDeadline`: ASGI middleware; the whole body must arrive within
                      `seconds` of the head — else 408 (``Connection: close``) and closed

Bytes trickling in do not extend either deadline: each is for the whole head or body.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from typing import Any

from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["BodyDeadline", "BodyTimeout", "HeaderDeadlineProtocol", "header_protocol"]

_DEFAULT_HEADER_SECONDS = 10.0


def _raw_408(code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode("utf-8")
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        "connection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def _default_base() -> type:
    # uvicorn's "auto" picks httptools when it is installed (it is a dependency), else h11.
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools is a dependency
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    return HttpToolsProtocol


def header_protocol(seconds: float, *, base: type | None = None) -> type:
    """A uvicorn HTTP protocol class (for ``uvicorn.Config(http=...)``) with a header deadline.

    `base` is one of uvicorn's HTTP protocols; by default httptools', as uvicorn would pick.
    """
    return type(
        "HeaderDeadlineProtocol",
        (_with_head_deadline(base or _default_base()),),
        {"header_timeout": seconds},
    )


def _with_head_deadline(base: type) -> type:
    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        # uvicorn's protocols share these names: `cycle` is the request being served (set when
        # a head is complete), `on_response_complete` runs when its response has been sent.
        header_timeout = _DEFAULT_HEADER_SECONDS

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._head_timer: asyncio.TimerHandle | None = None
            super().connection_made(transport)
            self._arm_head_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_deadline()  # the next request's head, on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def _arm_head_deadline(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            if self.transport.is_closing():
                return
            waiting_after = self.cycle  # the head has arrived once `cycle` is a newer one
            self._head_timer = self.loop.call_later(
                self.header_timeout, self._head_deadline_passed, waiting_after
            )

        def _head_deadline_passed(self, waiting_after: Any) -> None:
            self._head_timer = None
            current = self.cycle
            head_arrived = current is not waiting_after or (
                current is not None and not current.response_complete
            )
            if head_arrived or self.transport.is_closing():
                return
            message = f"the request head did not arrive within {self.header_timeout:g} s"
            self.transport.write(_raw_408("header_timeout", message))
            self.transport.close()

    return HeaderDeadlineProtocol


# By import string, for uvicorn's worker processes (a class made at run time cannot be sent to
# them); `serving.server.worker_app` sets its `header_timeout` from the settings.
HeaderDeadlineProtocol = _with_head_deadline(_default_base())


class BodyTimeout(StarletteHTTPException):
    """The body did not arrive within its deadline (408).

    An HTTPException, so that FastAPI's body reader re-raises it to the error handlers instead
    of turning it into a generic 400; ``Connection: close`` so that the server closes the
    connection rather than wait for the rest of the body.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408,
            f"the request body did not arrive within {seconds:g} s",
            headers={"connection": "close"},
        )


class _Sweeper:
    """Cancels the body reads of one event loop that outlive their deadline.

    A read registers its task and deadline; the registry is looked at every `period` seconds,
    and only while some read is waiting, so a deadline fires up to `period` late. A timer per
    read (tried first) cost ~9 µs of every /route in the app, anyio's cancel scope ~25 µs;
    the small body of a typical request is there at once, and a dict entry in and out is all
    it pays here.
    """

    def __init__(self, period: float) -> None:
        # No reference to the loop itself: it is the key this sweeper is kept under (weakly).
        self.period = period
        self.reads: dict[asyncio.Task, list] = {}  # task -> [deadline, fired]
        self.handle: asyncio.TimerHandle | None = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for task, entry in list(self.reads.items()):
            if entry[0] <= now:
                entry[1] = True
                del self.reads[task]
                task.cancel()
        self.handle = loop.call_later(self.period, self._tick) if self.reads else None

    async def receive_by(self, ends: float, receive: Callable, seconds: float) -> dict:
        """`receive()`, or `BodyTimeout` when it has not returned by loop time `ends` (give or
        take `period`). A deadline already past still lets a message that is there at once
        through: a request that waited for a busy loop is not refused for it."""
        task = asyncio.current_task()
        assert task is not None
        entry = [ends, False]
        self.reads[task] = entry
        if self.handle is None:
            self.handle = asyncio.get_running_loop().call_later(self.period, self._tick)
        try:
            return await receive()
        except asyncio.CancelledError:
            if not entry[1]:
                raise
            if hasattr(task, "uncancel"):  # Python ≥ 3.11: this cancellation is ours, spent
                task.uncancel()
            raise BodyTimeout(seconds) from None
        finally:
            if not entry[1]:
                del self.reads[task]


class BodyDeadline:
    """ASGI middleware: the whole request body must arrive within `seconds` of its head.

    Only reads of the body are timed; once it is complete (or the client left), `receive`
    passes through, so a streamed response waiting for a disconnect is not cut short.
    """

    def __init__(self, app: Callable, seconds: float) -> None:
        self.app = app
        self.seconds = seconds
        # How late a deadline may fire: a tenth of it, at most 100 ms.
        self.period = min(0.1, seconds / 10)
        self._sweepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        sweeper = self._sweepers.get(loop)
        if sweeper is None:
            sweeper = self._sweepers[loop] = _Sweeper(self.period)
        ends = loop.time() + self.seconds
        done = False
        started = False

        async def timed() -> dict:
            nonlocal done
            if done:
                return await receive()
            message = await sweeper.receive_by(ends, receive, self.seconds)
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed, watch)
        except BodyTimeout as exc:
            if started:
                raise
            body = json.dumps({"error": {"code": "body_timeout", "message": exc.detail}})
            payload = body.encode("utf-8")
            await send(
                {
                    "type": "http.response.start",
                    "status": 408,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode("ascii")),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload})
