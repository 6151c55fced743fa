"""One line per OpenAI-gateway request (/v1/…): who answered, how, how long, under which id.

    POST /v1/chat/completions 200 842.1ms model=gpt-4o attempts=gpt-4o:500,claude-3-5-sonnet:ok
    request_id=r-…

Written at INFO on the "promptroute.access" logger when the response has been sent (a stream
when it ends), from the response's ``x-promptroute-*`` headers; with ``log_format: json`` the
fields come as keys. Prompt text never appears. ``gateway_access_log: false`` turns it off;
uvicorn's ``access_log`` covers every endpoint instead.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["GatewayAccessLog"]

_log = logging.getLogger("promptroute.access")
_HEADERS = {
    b"x-promptroute-model": "model",
    b"x-promptroute-attempts": "attempts",
    b"x-promptroute-fallbacks": "fallbacks",
    b"x-promptroute-request-id": "request_id",
}


class GatewayAccessLog:
    """ASGI middleware: log one line for each request whose path starts with `prefix`."""

    def __init__(self, app: ASGIApp, prefix: str = "/v1/") -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        fields: dict[str, str] = {}
        logged = False

        def log() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            ms = (time.perf_counter() - started) * 1000
            shown = " ".join(
                f"{k}={fields[k]}" for k in _HEADERS.values() if fields.get(k) and k != "request_id"
            )
            rid = fields.get("request_id")
            _log.info(
                "%s %s %d %.1fms%s%s",
                scope["method"],
                scope["path"],
                status,
                ms,
                f" {shown}" if shown else "",
                f" request_id={rid}" if rid else "",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(ms, 1),
                    **fields,
                },
            )

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    key = _HEADERS.get(name.lower())
                    if key is not None:
                        fields[key] = value.decode("latin-1")
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log()

        try:
            await self.app(scope, receive, watch)
        finally:
            log()  # a failed or cut-off response is a line too
