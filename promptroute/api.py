"""The in-process API: route prompts without HTTP, with the same pipeline and answers as /route.

    >>> from promptroute import PromptRouter
    >>> router = PromptRouter.load("models/artifacts/mine")          # doctest: +SKIP
    >>> d = router.route("Prove that √2 is irrational.", priority="quality")  # doctest: +SKIP
    >>> d.model, d.fallbacks, d.reason                                 # doctest: +SKIP

A `PromptRouter` holds one loaded artifact and the same live parts the service holds in memory
(circuit breakers, rolling statistics, experiments, rules), so the decision it returns is the
one `POST /route` returns for the same request and configuration: the filters, breakers, rules,
experiments and the learned router, with fallbacks and the reason. Report outcomes with
`feedback` and the breakers and statistics learn from them as they do in the service.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from models.errors import PromptrouteError
from serving.bookkeeping import Feedback
from serving.config import Settings, load_settings
from serving.errors import ApiError, render_loc
from serving.pipeline import Decision
from serving.routes.route import build_query
from serving.schemas import FeedbackRequest, RouteRequest
from serving.service import Service

__all__ = ["Decision", "PromptRouter", "RoutingError"]

_T = TypeVar("_T")
Priority = Literal["quality", "balanced", "cost", "speed"]


class RoutingError(PromptrouteError):
    """A request the router refused, as /route would: `status`, `code`, `field`, details.

    ``code`` is one of /route's error codes (``invalid_request``, ``unknown_model``,
    ``no_eligible_model``, ``too_large``, ``unknown_request_id``…); `details` holds the extra
    fields of the error body (e.g. ``removed`` for ``no_eligible_model``).
    """

    def __init__(
        self, status: int, code: str, message: str, field: str | None, details: dict[str, Any]
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.field = field
        self.details = details

    @classmethod
    def from_api_error(cls, exc: ApiError) -> RoutingError:
        return cls(exc.status, exc.code, exc.message, exc.field, dict(exc.extra))


class PromptRouter:
    """A loaded router and its live state, for routing in this process.

    Build with `PromptRouter.load`. Thread-safe as the service is: the loaded model is
    immutable and the breakers and statistics take their own locks.
    """

    def __init__(self, service: Service) -> None:
        self._service = service

    @classmethod
    def load(
        cls,
        artifact: str | Path | None = None,
        *,
        config: str | Path | None = None,
        **settings: Any,
    ) -> PromptRouter:
        """Load and verify an artifact (default: the configured one, else the bundled default).

        Parameters
        ----------
        artifact : an artifact folder written by ``promptroute train``
        config : a service config YAML (rules, experiments, breakers, priorities…)
        **settings : top-level config keys that replace the file's (e.g. ``catalog=…``)

        Raises
        ------
        ArtifactError, ConfigError
            The artifact failed verification, or the config is invalid (the field is named).
        """
        if artifact is not None:
            settings["artifact"] = str(artifact)
        # Nothing is written or served from here: no decision log unless the config asks.
        loaded = load_settings(config, **settings)
        return cls(Service.load(loaded))

    @property
    def settings(self) -> Settings:
        return self._service.settings

    @property
    def version(self) -> str:
        """The loaded router's version (the artifact's ``router_version``)."""
        return self._service.models.current.version

    @property
    def models(self) -> tuple[str, ...]:
        """The models this router may route to, in catalog order."""
        routable = self._service.models.routable_names()
        return tuple(name for name in self._service.catalog.names if name in routable)

    # -- routing -------------------------------------------------------------------------------

    def route(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        candidates: Sequence[str] | None = None,
        max_cost_usd: float | None = None,
        max_latency_ms: float | None = None,
        expected_output_tokens: int | None = None,
        priority: Priority | None = None,
        knob: float | None = None,
        task_type: str | None = None,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Decision:
        """Choose the model for a prompt (or OpenAI chat `messages`), as POST /route does.

        The arguments are /route's body fields with the same validation. The `Decision` has
        the model, ranked fallbacks, scores, estimated cost, the reason (stage, detail, every
        removal) and ``to_response()``, the /route JSON body.

        Raises
        ------
        RoutingError
            With /route's status, code and field: invalid input (422), too large (413), an
            unknown candidate (422 ``unknown_model``), nothing eligible (422
            ``no_eligible_model``, the removals in ``details["removed"]``).
        """
        return _run(
            self.aroute(
                prompt,
                messages=messages,
                candidates=candidates,
                max_cost_usd=max_cost_usd,
                max_latency_ms=max_latency_ms,
                expected_output_tokens=expected_output_tokens,
                priority=priority,
                knob=knob,
                task_type=task_type,
                user_id=user_id,
                metadata=metadata,
            )
        )

    async def aroute(self, prompt: str | None = None, **fields: Any) -> Decision:
        """`route` for async callers (and the only form for a shared state backend)."""
        body = {"prompt": prompt, **fields}
        body = {key: value for key, value in body.items() if value is not None}
        request = _validated(RouteRequest, body)
        pipeline = self._service.pipeline
        try:
            return await pipeline.route(build_query(request, pipeline.settings.limits))
        except ApiError as exc:
            raise RoutingError.from_api_error(exc) from None

    def feedback(
        self,
        request_id: str,
        *,
        success: bool,
        model: str | None = None,
        latency_ms: float | None = None,
        quality: float | None = None,
        cost_usd: float | None = None,
        error_type: str | None = None,
    ) -> str:
        """Report how a routed call went, as POST /feedback does; the model it counted for.

        Raises
        ------
        RoutingError
            404 ``unknown_request_id`` (unknown, answered or expired), 422 for a bad field.
        """
        fields = {
            "request_id": request_id,
            "success": success,
            "model": model,
            "latency_ms": latency_ms,
            "quality": quality,
            "cost_usd": cost_usd,
            "error_type": error_type,
        }
        body = _validated(FeedbackRequest, {k: v for k, v in fields.items() if v is not None})
        try:
            _decision, counted = _run(self._service.outcomes.apply(Feedback(**body.model_dump())))
        except ApiError as exc:
            raise RoutingError.from_api_error(exc) from None
        return counted

    def explain(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        model: str | None = None,
        versus: str | None = None,
        top: int = 8,
    ) -> dict[str, Any]:
        """The dense features that moved `model`'s score above `versus`'s for this prompt.

        `model` defaults to the learned router's favourite at the artifact's knob (no filters)
        and `versus` to its runner-up; pass a decision's model and first fallback to explain
        that decision. Returns ``{"model", "versus", "top_features": [{"feature", "value",
        "contribution"}]}``.

        Raises
        ------
        RoutingError
            422 ``unknown_model`` when `model` or `versus` is not one of the router's models.
        """
        from features.text import normalize

        router = self._service.models.current.router
        scored = router.score(normalize(prompt=prompt, messages=messages))
        order = [int(i) for i in router.rank(scored, router.default_knob)]
        chosen = order[0] if model is None else _position(router.index, model, "model")
        if versus is not None:
            against: int | None = _position(router.index, versus, "versus")
        else:
            against = next((i for i in order if i != chosen), None) if model is None else None
        return {
            "model": router.models[chosen],
            "versus": router.models[against] if against is not None else None,
            "top_features": router.explain(scored, chosen, against, top=top),
        }

    def close(self) -> None:
        """Log pending decisions (when a decision log is configured) and close the log."""
        _run(self._service.close())

    def __enter__(self) -> PromptRouter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _position(index: Mapping[str, int], name: str, field: str) -> int:
    if name not in index:
        known = ", ".join(index)
        raise RoutingError(
            422, "unknown_model", f"{field}: unknown model {name!r}; known: {known}", field, {}
        )
    return index[name]


def _validated(model: type[_T], body: dict[str, Any]) -> _T:
    try:
        return model.model_validate(body)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        error = exc.errors()[0]
        where = render_loc(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        text = f"{where}: {message}" if where else message
        raise RoutingError(422, "invalid_request", text, where, {}) from None


def _run(coro: Coroutine[Any, Any, _T]) -> _T:
    """Drive a coroutine of the in-memory backends, which never wait, to its result."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError(
        "this state backend waits on I/O: call `await router.aroute(...)` from an event loop"
    )
