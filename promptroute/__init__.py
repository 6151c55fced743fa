"""promptroute's front door: the `promptroute` command and the in-process Python API. Imports
every other package; nothing imports it.

    >>> from promptroute import PromptRouter                                # doctest: +SKIP
    >>> router = PromptRouter.load("models/artifacts/mine")                # doctest: +SKIP
    >>> router.route("Write a haiku about the sea.", priority="cost").model  # doctest: +SKIP

The API is loaded on first use, so that `promptroute --help` does not import the service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptroute.api import Decision, PromptRouter, RoutingError

__all__ = ["Decision", "PromptRouter", "RoutingError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from promptroute import api

        return getattr(api, name)
    raise AttributeError(f"module 'promptroute' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
