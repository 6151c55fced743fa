"""A fake OpenAI-compatible upstream on loopback, and a helper that serves any ASGI app in a thread.

    with FakeUpstream() as fake:
        fake.behave("claude-v1", "500")      # per upstream model name; default "ok"
        fake.url()                           # "http://127.0.0.1:<port>/v1"

Behaviours, for ``POST <any prefix>/chat/completions``:

    ok          200, a chat completion (server-sent events when the request says ``stream``)
    slow        nothing until `slow_seconds` pass or the fake stops (for client timeouts)
    500         500 with an OpenAI error body
    429         429 with ``Retry-After: <retry_after>``
    400 401 403 404 413 422   that status with an OpenAI error body
    malformed   200 whose body is not JSON (for a stream: ``application/json`` instead of SSE)
    empty       200 event stream that ends before its first event
    break       200 event stream that sends one chunk, then drops the connection
    dribble     200 whose body (or stream) comes one byte every `dribble_seconds`
    stall       200 event stream that sends its first chunk, then nothing until the fake stops
    endless     200 event stream that sends a chunk every `dribble_seconds` until the fake stops
    huge_usage  200 whose usage has a 400-digit prompt_tokens (in the last chunk when streaming)
    nan         200 whose body holds a bare NaN (in the first chunk when streaming)
    not_json    200 event stream whose first event's data is not JSON
    leak        400 whose error body echoes the request's Authorization header and another key
    error_midway  200 event stream: one chunk, then an error chunk that quotes a key, then ends
    bulky       200 whose body carries 64 KiB of padding

`reply(model, fn)` makes a non-streaming ``ok`` answer's content ``fn(request_body)`` for that
model (a fake judge reads the prompt it was sent and scores it).

Every request is kept in `requests` (path, headers, JSON body) so tests can see what was sent;
`on_request`, when set, is called as each request arrives (a test advances its fake clock there,
so that the call "takes" a known time).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["ANSWER", "FakeUpstream", "Received", "chunks", "completion", "serve_in_thread"]

ANSWER = ["The", " answer", " is", " 42."]
CREATED = 1_700_000_000


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def model(self) -> str:
        return self.body["model"]


class _Dropped(Exception):
    """Raised inside a streaming body so that the server drops the connection mid-response."""


@contextlib.contextmanager
def serve_in_thread(app: Any, *, lifespan: str = "off") -> Iterator[str]:
    """Serve `app` with uvicorn on a free loopback port; yields ``http://127.0.0.1:<port>``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan=lifespan,
        log_level="critical",
        ws="none",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


class FakeUpstream:
    """The fake server; use it as a context manager (it starts on enter, stops on exit)."""

    def __init__(
        self, *, slow_seconds: float = 5.0, retry_after: str = "2", dribble_seconds: float = 0.05
    ) -> None:
        self.slow_seconds = slow_seconds
        self.dribble_seconds = dribble_seconds
        self.retry_after = retry_after
        self._retry_after_default = retry_after
        self.usage: tuple[int, int] | None = (12, 7)
        self.on_request: Callable[[], None] | None = None
        self.requests: list[Received] = []
        self._behaviour: dict[str, str] = {}
        self._replies: dict[str, Callable[[dict[str, Any]], str]] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()
        self.origin = ""
        self.app = Starlette(
            routes=[Route("/{prefix:path}/chat/completions", self._chat, methods=["POST"])]
        )

    def __enter__(self) -> FakeUpstream:
        self.origin = self._stack.enter_context(serve_in_thread(self.app))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._stack.close()

    def url(self, prefix: str = "/v1") -> str:
        return self.origin + prefix

    def behave(self, model: str, behaviour: str) -> None:
        with self._lock:
            self._behaviour[model] = behaviour

    def reply(self, model: str, fn: Callable[[dict[str, Any]], str]) -> None:
        with self._lock:
            self._replies[model] = fn

    def reset(self) -> None:
        with self._lock:
            self._behaviour.clear()
            self._replies.clear()
            self.requests.clear()
            self.usage = (12, 7)
            self.on_request = None
            self.retry_after = self._retry_after_default

    def models_called(self) -> list[str]:
        with self._lock:
            return [r.model for r in self.requests]

    # -- the server side ------------------------------------------------------------------------

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        model = body.get("model", "")
        with self._lock:
            self.requests.append(Received(request.url.path, dict(request.headers), body))
            behaviour = self._behaviour.get(model, "ok")
            usage = self.usage
            hook = self.on_request
            reply = self._replies.get(model)
        if hook is not None:
            hook()
        stream = body.get("stream") is True
        if behaviour == "slow":
            deadline = time.monotonic() + self.slow_seconds
            while time.monotonic() < deadline and not self._stopping.is_set():
                await asyncio.sleep(0.01)
        if behaviour.isdigit():
            status = int(behaviour)
            headers = {"retry-after": self.retry_after} if status == 429 else None
            return JSONResponse(_error(status), status_code=status, headers=headers)
        if behaviour == "malformed":
            return Response(b'{"choices": [', media_type="application/json")
        if behaviour == "leak":
            echoed = request.headers.get("authorization", "")
            error = _error(400)
            error["error"]["message"] = (
                f"bad request; you sent '{echoed}', try key sk-live-0123456789abcdef instead"
            )
            return JSONResponse(error, status_code=400)
        if behaviour == "huge_usage":
            usage = (10**399, 7)
        if stream:
            events = _events(model, usage, behaviour, self._stopping)
            if behaviour == "dribble":
                events = self._dribble(b"".join([e async for e in events]))
            return StreamingResponse(events, media_type="text/event-stream")
        content = reply(body) if reply is not None else None
        body = completion(model, usage, content)
        if behaviour == "nan":
            body["choices"][0]["logprobs"] = math.nan
        if behaviour == "bulky":
            body["padding"] = "x" * 2**16
        if behaviour == "dribble":
            return StreamingResponse(
                self._dribble(json.dumps(body).encode()), media_type="application/json"
            )
        return Response(json.dumps(body).encode(), media_type="application/json")

    async def _dribble(self, data: bytes) -> AsyncIterator[bytes]:
        for i in range(len(data)):
            if self._stopping.is_set():
                return
            yield data[i : i + 1]
            await asyncio.sleep(self.dribble_seconds)


def completion(
    model: str, usage: tuple[int, int] | None, content: str | None = None
) -> dict[str, Any]:
    """The body the fake answers a non-streaming request with (`content`: default ANSWER)."""
    body: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "".join(ANSWER) if content is None else content,
                },
                "finish_reason": "stop",
            }
        ],
    }
    if usage is not None:
        body["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return body


def chunks(model: str, usage: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The chunks the fake streams, in order (before ``[DONE]``)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": text}) for text in ANSWER]
    out.append(chunk({}, "stop"))
    if usage is not None:
        last = chunk({})
        last["choices"] = []
        last["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
        out.append(last)
    return out


async def _events(
    model: str, usage: tuple[int, int] | None, behaviour: str, stopping: threading.Event
) -> AsyncIterator[bytes]:
    if behaviour == "empty":
        return
    if behaviour == "not_json":
        yield b"data: Hello! I am a plain-text answer.\n\n"
    for i, item in enumerate(chunks(model, usage)):
        if behaviour == "break" and i == 2:
            raise _Dropped("connection dropped on purpose")
        if behaviour == "stall" and i == 1:
            while not stopping.is_set():
                await asyncio.sleep(0.01)
            return
        if behaviour == "error_midway" and i == 1:
            error = {"error": {"message": "quota exceeded for key sk-live-0123456789abcdef"}}
            yield b"data: " + json.dumps(error).encode() + b"\n\n"
            return
        if behaviour == "endless" and i == 1:
            while not stopping.is_set():
                yield b"data: " + json.dumps(item).encode() + b"\n\n"
                await asyncio.sleep(0.05)
            return
        if behaviour == "nan" and i == 0:
            item["choices"][0]["logprobs"] = math.nan
        yield b"data: " + json.dumps(item).encode() + b"\n\n"
        await asyncio.sleep(0)
    yield b"data: [DONE]\n\n"


def _error(status: int) -> dict[str, Any]:
    return {
        "error": {
            "message": f"fake upstream error {status}",
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": None,
            "code": f"fake_{status}",
        }
    }
