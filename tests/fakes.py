"""Test doubles shared by several test files (imported as `from fakes import FakeClock`)."""

from __future__ import annotations


class FakeClock:
    """A clock for injection (`clock=FakeClock()`): time moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
