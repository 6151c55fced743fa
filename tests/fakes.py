"""Test doubles and helpers shared by several test files (`from fakes import FakeClock`)."""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

from starlette.exceptions import StarletteDeprecationWarning

with warnings.catch_warnings():
    # starlette asks for the httpx2 fork and warns once on import; plain httpx works the same.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

__all__ = ["FakeClock", "LiveServer", "TestClient", "offline_page"]


class FakeClock:
    """A clock for injection (`clock=FakeClock()`): time moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LiveServer:
    """A real uvicorn server for `app` in a background thread on a free 127.0.0.1 port."""

    def __init__(self, app: Any, *, graceful_shutdown_seconds: float = 10) -> None:
        import uvicorn

        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=graceful_shutdown_seconds,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:  # a real server: wait for its socket
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: the lifespan drains pending decisions."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        assert not self.thread.is_alive()


def offline_page(browser: Any, base_url: str) -> tuple[Any, list[str]]:
    """A new page that may load only from `base_url`; returns it and the refused URLs.

    Everything else (a CDN, fonts, telemetry) is aborted and recorded, so a test can assert
    that the page works in a network with no way out.
    """
    refused: list[str] = []
    page = browser.new_page(viewport={"width": 1440, "height": 1000})

    def guard(route: Any) -> None:
        url = route.request.url
        if url.startswith(base_url) or url.startswith("data:"):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    page.route("**/*", guard)
    return page, refused
