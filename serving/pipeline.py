"""The decision pipeline: from one normalised request to a chosen model, in eight stages.

    1 candidates   the request's `candidates`, else every catalog model (those the router has
                   learned scores for, and the others, which only rules, experiments,
                   `candidates` or the catalog-preference fallback below choose)
    2 capability   vision when the request has images; context window ≥ input tokens +
                   expected output tokens (the request's, else the artifact's per-model estimate)
    3 cost         estimated cost of this request ≤ `max_cost_usd`
    4 latency      latency ≤ `max_latency_ms`: the observed rolling percentile from feedback,
                   the catalog's estimate until something is observed
    5 breakers     models whose circuit is open are removed; a half-open one stays while it has
                   a free probe slot, and takes that slot if it is chosen
                   ── nothing left: 422 `no_eligible_model` listing every removal; with
                   `degraded_mode`, when open circuits were the only reason, the best-ranked of
                   those models instead, with `degraded: true` (stages 6 and 7 are skipped)
    6 rules        the first matching static rule pins a model (if still eligible; otherwise it
                   is noted as not applicable) or restricts the candidates (if the intersection
                   is not empty; otherwise noted as not applicable)
    7 experiments  the user's sticky variant pins a model (if eligible), a knob, or routes with
                   an alternative artifact (chosen up front: every stage then uses its models)
    8 classifier   the learned router ranks what remains by score − knob · cost / c_ref, where
                   the knob comes from the priority (quality, balanced, cost) or the request;
                   each score is first multiplied by the model's observed success rate once it
                   has `breakers.min_calls` outcomes in its window (a model failing half its
                   calls delivers half the quality) — except while its circuit is half-open,
                   when the probe, not the failures that opened it, should decide; priority
                   "speed" takes the models within `priorities.speed_tolerance` of the best
                   utility at the balanced knob and picks the one with the lowest observed latency.
                   Catalog models the router has no learned scores for follow the ranked ones in
                   catalog order; when only they are eligible (say an image request and no scored
                   model has vision), the first of them in the catalog's order is chosen, with
                   stage `catalog_preference` — the catalog lists models in order of preference

Exploration (``exploration.share`` > 0): a decision stage 8 made (no rule pin, no experiment,
not degraded) goes, with probability `share`, to one of the other eligible models with a closed
circuit — models without learned scores included — drawn uniformly; its stage is then
``exploration``. Every decision
carries the propensity of its model, which the decision log records for off-policy evaluation.

Every removal is recorded with the filter and a reason, and `reason.detail` says what decided.
Only per-request work happens here: the arrays the filters compare against were built when the
model was loaded (`serving.loaded_model.LoadedModel`).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from features.text import Prompt
from models.catalog import estimate_tokens
from models.router import Router, Scored, rounded
from serving.bookkeeping import Bookkeeping, PendingDecision
from serving.config import Priority, Settings
from serving.errors import ApiError
from serving.experiments import Assignment, Experiments
from serving.filters import (
    context_ok,
    cost_ok,
    describe_context,
    describe_cost,
    describe_latency,
    describe_vision,
    latency_ok,
    needed_tokens,
    vision_ok,
)
from serving.health import Health, HealthView
from serving.loaded_model import LoadedModel, ModelSlot
from serving.metrics import Metrics
from serving.redact import quote
from serving.rules import RuleSet

__all__ = ["Decision", "Pipeline", "RouteQuery"]

_log = logging.getLogger("promptroute.route")

Removed = dict[str, dict[str, str]]


@dataclass(slots=True)
class RouteQuery:
    """One validated routing request. `raw_prompt`/`raw_messages` are kept for the decision log.

    Not frozen only because a frozen dataclass costs microseconds to build; treat as read-only.
    """

    prompt: Prompt
    task_type: str | None = None
    candidates: Sequence[str] | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    expected_output_tokens: int | None = None
    priority: Priority | None = None
    knob: float | None = None
    user_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    raw_prompt: str | None = None
    raw_messages: list[Any] | None = None
    caller: str | None = None  # the client key's name; only that caller may give feedback


@dataclass(slots=True)
class Decision:
    """The pipeline's answer, as the /route response presents it (read-only by convention)."""

    request_id: str
    model: str
    fallbacks: tuple[str, ...]
    scores: dict[str, float]
    estimated_cost_usd: float
    stage: str
    detail: str
    removed: Removed
    experiment: Assignment | None
    router_version: str
    knob: float
    priority: str | None
    degraded: bool
    input_tokens: int
    # P(model) under the service's policy; None when exploration is off (deterministic policy).
    propensity: float | None = None
    explored_instead_of: str | None = None  # the router's own pick, when exploration chose
    estimated_cost_of_pick_usd: float | None = None

    def to_response(self) -> dict[str, Any]:
        experiment = self.experiment
        return {
            "request_id": self.request_id,
            "model": self.model,
            "fallbacks": list(self.fallbacks),
            "scores": self.scores,
            "estimated_cost_usd": self.estimated_cost_usd,
            "reason": {"stage": self.stage, "detail": self.detail, "removed": self.removed},
            "experiment": None
            if experiment is None
            else {"name": experiment.experiment, "variant": experiment.variant},
            "router_version": self.router_version,
            "knob": self.knob,
            "priority": self.priority,
            "degraded": self.degraded,
            "input_tokens": self.input_tokens,
        }


@dataclass(eq=False)
class Pipeline:
    """The decision, wired to exactly what it reads and changes.

    Reads: `settings`, the loaded model (`models`), the health view, `rules`, `experiments`'
    assignment. Changes, when a decision is committed: a half-open breaker's probe slot
    (`health`), the experiment's assignment count, the pending decision (`book`), `metrics`.
    """

    settings: Settings
    models: ModelSlot
    health: Health
    book: Bookkeeping
    experiments: Experiments
    rules: RuleSet
    metrics: Metrics
    # Exploration's draws; seeded from `exploration.seed` when None (tests inject their own).
    rng: random.Random | None = field(default=None)

    def __post_init__(self) -> None:
        self.has_experiments = any(e.enabled for e in self.settings.experiments)
        self.explore_share = self.settings.exploration.share
        if self.rng is None:
            self.rng = random.Random(self.settings.exploration.seed)

    async def route(self, query: RouteQuery) -> Decision:
        """Run the eight stages for `query`, commit the decision, and return it.

        Committing means: a half-open breaker of the chosen model takes a probe, the experiment
        counts the assignment, the decision waits in `book` for its feedback, and the metrics
        count it.

        Raises
        ------
        ApiError
            422 ``unknown_model`` for a candidate that is not routable (``field`` is
            ``candidates[i]``); 422 ``no_eligible_model`` with every removal when nothing is
            left.
        """
        started = time.perf_counter()
        decision, loaded = self.decide(query)
        await self.commit(decision, query, loaded, started)
        return decision

    def decide(self, query: RouteQuery) -> tuple[Decision, LoadedModel]:
        """Stages 1-8 without committing anything: the decision and the model that made it."""
        settings = self.settings
        # The experiment assignment is a pure function of (user, task type), made up front
        # because a variant may route with another artifact, whose models every stage then uses.
        assignment = (
            self.experiments.assign(user_id=query.user_id, task_type=query.task_type)
            if self.has_experiments
            else None
        )
        loaded = self.models.for_artifact(assignment.artifact if assignment is not None else None)
        router = loaded.router
        names = loaded.names
        at = loaded.catalog_index  # this router's models in the health view (catalog order)
        prompt = query.prompt
        view = self.health.view()
        removals = _Removals(names, self.metrics)
        notes: list[str] = []
        input_tokens = estimate_tokens(len(prompt.text))

        # 1. candidates
        mask = _candidates(loaded, query.candidates, removals)

        # 2-4 are one vectorised test each; reasons are worked out only for models they remove.
        checks = [
            *_capability(loaded, prompt, input_tokens, query.expected_output_tokens),  # 2.
            *_cost(loaded, input_tokens, query),  # 3.
            *_latency(view, at, query.max_latency_ms, settings.stats.latency_percentile),  # 4.
        ]
        if checks:
            mask = removals.apply_all(mask, checks)

        # 5. breakers
        mask, blocked = _breakers(self.health, view, loaded, mask, removals)
        degraded = False
        if not _count(mask):
            if settings.degraded_mode and _count(blocked):
                mask, degraded = blocked, True
            else:
                self.metrics.no_eligible.inc()
                raise _no_eligible(removals.reasons, len(loaded.universe))

        pinned: int | None = None
        stage = "degraded" if degraded else "classifier"
        experiment = None if degraded else assignment  # degraded answers stay out of experiments
        if not degraded:
            # 6. static rules
            pinned, mask = _rules(self.rules, loaded, query, input_tokens, mask, removals, notes)
            if pinned is not None:
                stage = "rule"
            # 7. experiments
            if experiment is not None:
                if pinned is None:
                    pinned, applied = _experiment(experiment, loaded, mask, notes)
                    if applied:
                        stage = "experiment"
                else:
                    notes.append(
                        f"experiment {experiment.experiment!r} variant {experiment.variant!r}: "
                        "not applied, a rule decided"
                    )

        # 8. the learned router ranks the models it has scores for; models without learned
        # scores come after them, in catalog order, and decide only when nothing else is left.
        knob, priority = _knob(settings, router, query, experiment)
        k = loaded.n_scored
        scored_mask = mask[:k]
        unscored, unscored_listed = loaded.unscored_tail(mask) if len(names) > k else _NO_TAIL
        scored: Scored | None = None
        n_ranked = 0  # the models the learned router ranked: the head of `ranking`
        if _count(scored_mask):
            scored = router.score(
                prompt,
                task_type=query.task_type,
                expected_output_tokens=query.expected_output_tokens,
                mask=scored_mask,
            )
            ranked = _reliability(view, loaded, scored, scored_mask, notes)
            order = router.rank(ranked, knob, scored_mask)
            if priority == "speed" and pinned is None:
                order, headline = _fastest_first(
                    router, ranked, order, knob, view.latency[at[:k]], settings
                )
            else:
                headline = (
                    f"{scored.strategy} head ranked {len(order)} eligible model(s) at knob {knob:g}"
                )
            n_ranked = len(order)
            ranking = order.tolist()
            if unscored:
                ranking += unscored
                notes.append(f"without learned scores, listed last: {unscored_listed}")
        else:
            ranking = list(unscored)
            headline = (
                f"no model with learned scores can take this request; {len(ranking)} model(s) "
                f"without learned scores are eligible, in the catalog's order of preference"
            )
            if pinned is None and not degraded:
                stage = "catalog_preference"
        chosen = ranking[0] if pinned is None else pinned
        propensity: float | None = None
        greedy: int | None = None
        if self.explore_share > 0.0:
            propensity = 1.0
            if pinned is None and not degraded and experiment is None:
                pick, propensity = self._explore(ranking, view, names)
                if pick is not None:
                    greedy, chosen = ranking[0], pick
                    stage = "exploration"
                    unknown = " (a model without learned scores)" if chosen >= k else ""
                    headline = (
                        f"exploration (share {self.explore_share:g}): {names[chosen]}{unknown} "
                        f"drawn at random instead of the router's pick {names[greedy]} ({headline})"
                    )
        own_pick = bool(ranking) and chosen == ranking[0]
        if own_pick:
            fallbacks = ranking[1:]
        else:
            fallbacks = [i for i in ranking if i != chosen]
        if degraded:
            headline = (
                "every model that passed the filters has an open circuit; degraded mode returns "
                f"the best-ranked of them ({headline})"
            )
        # A pinned model was decided by its rule or experiment, whose note says so.
        detail = "; ".join(notes if pinned is not None else [headline, *notes])
        shown = rounded(scored.score) if scored is not None else []

        def cost_of(i: int) -> float:
            if scored is not None and i < k:
                return float(scored.cost_usd[i])
            return float(loaded.estimate_cost(input_tokens, query.expected_output_tokens)[i])

        # The models with learned scores, in the answer's order: when the router's own pick
        # stands, exactly those it ranked.
        if own_pick and chosen < k:
            listed = ranking[:n_ranked]
        else:
            listed = [i for i in (chosen, *fallbacks) if i < k]
        name_of = names.__getitem__
        decision = Decision(
            request_id=_request_id(),
            model=names[chosen],
            fallbacks=tuple(map(name_of, fallbacks)),
            scores={names[i]: shown[i] for i in listed},
            estimated_cost_usd=cost_of(chosen),
            stage=stage,
            detail=detail,
            removed=removals.reasons,
            experiment=experiment,
            router_version=loaded.version,
            knob=float(knob),
            priority=priority,
            degraded=degraded,
            input_tokens=input_tokens,
            propensity=propensity,
            explored_instead_of=names[greedy] if greedy is not None else None,
            estimated_cost_of_pick_usd=cost_of(greedy) if greedy is not None else None,
        )
        return decision, loaded

    def _explore(
        self, ranking: list[int], view: HealthView, names: tuple[str, ...]
    ) -> tuple[int | None, float]:
        """(the explored model, or None to keep the router's pick; the chosen one's propensity).

        The alternatives are the other eligible models whose circuit is closed — models without
        learned scores included, which is how they gather outcomes — but not a half-open one:
        its probes are for finding out whether it recovered.
        """
        alternatives = [i for i in ranking[1:] if names[i] not in view.not_closed]
        if not alternatives:
            return None, 1.0
        share = self.explore_share
        assert self.rng is not None
        if self.rng.random() >= share:
            return None, 1.0 - share
        return alternatives[self.rng.randrange(len(alternatives))], share / len(alternatives)

    async def commit(
        self, decision: Decision, query: RouteQuery, loaded: LoadedModel, started: float
    ) -> None:
        """Take the chosen model's probe slot, count the assignment, remember the decision."""
        model = decision.model
        if model in self.health.view().not_closed:
            # A closed circuit has no slot to take; a half-open one hands out a probe. Losing
            # the race for the last slot still routes there (the filter saw it available).
            await self.health.take_slot(model)
        if decision.experiment is not None:
            self.experiments.record_assignment(decision.experiment)
        if decision.explored_instead_of is not None:
            self.metrics.explored(
                model, decision.estimated_cost_usd, decision.estimated_cost_of_pick_usd or 0.0
            )
        await self.remember(
            decision.request_id,
            model=model,
            fallbacks=decision.fallbacks,
            caller=query.caller,
            raw_prompt=query.raw_prompt,
            raw_messages=query.raw_messages,
            input_tokens=decision.input_tokens,
            task_type=query.task_type,
            router_version=loaded.version,
            experiment=decision.experiment,
            propensity=decision.propensity,
        )
        self.metrics.decision(
            model, decision.stage, time.perf_counter() - started, decision.estimated_cost_usd
        )
        if self.settings.log_prompts:
            _log.info(
                "route %s -> %s (%s): %r",
                decision.request_id,
                model,
                decision.stage,
                query.prompt.text[:2000],
                extra={"request_id": decision.request_id},
            )
        else:
            _log.debug(
                "route %s -> %s (%s)",
                decision.request_id,
                model,
                decision.stage,
                extra={"request_id": decision.request_id},
            )

    async def remember(
        self,
        request_id: str,
        *,
        model: str,
        raw_prompt: str | None,
        raw_messages: list[Any] | None,
        input_tokens: int,
        task_type: str | None,
        router_version: str,
        experiment: Assignment | None,
        fallbacks: tuple[str, ...] = (),
        caller: str | None = None,
        propensity: float | None = None,
    ) -> None:
        """Log a served decision and keep what its outcomes need until they arrive."""
        book = self.book
        keep_text = book.keeps_text  # no log, no reason to pass the prompt on
        await book.remember(
            request_id,
            PendingDecision(
                model=model,
                fallbacks=fallbacks,
                caller=caller,
                experiment=experiment,
                ts=book.wall_clock(),
                input_tokens=input_tokens,
                task_type=task_type,
                router_version=router_version,
                propensity=propensity,
            ),
            prompt=raw_prompt if keep_text and raw_messages is None else None,
            messages=raw_messages if keep_text else None,
        )


# ---------------------------------------------------------------------------------------------
# Stages and their helpers

_Check = tuple[np.ndarray, str, Callable[[int], str]]
_NO_TAIL: tuple[tuple[int, ...], str] = ((), "")
_NOT_BLOCKED = np.zeros(0, dtype=bool)  # no circuit open: nothing blocked, nothing to allocate
# How many models a mask keeps: C-level, where ``mask.any()`` goes through numpy's Python layer
# (~0.9 µs against ~0.2 µs, several times per decision).
_count = np.count_nonzero


class _Removals:
    """The models removed so far, each with the first filter that removed it and why."""

    __slots__ = ("names", "metrics", "reasons")

    def __init__(self, names: tuple[str, ...], metrics: Metrics) -> None:
        self.names = names
        self.metrics = metrics
        self.reasons: Removed = {}

    def apply(
        self, mask: np.ndarray, keep: np.ndarray, name: str, why: Callable[[int], str]
    ) -> np.ndarray:
        gone = mask & ~keep
        if not _count(gone):
            return mask
        where = np.flatnonzero(gone).tolist()
        for i in where:
            self.reasons[self.names[i]] = {"filter": name, "detail": why(i)}
        self.metrics.removed(name, len(where))
        return mask & keep

    def apply_all(self, mask: np.ndarray, checks: list[_Check]) -> np.ndarray:
        """`apply` each check in order, after one combined test for the common nothing-removed."""
        keep = checks[0][0]
        for other, _name, _why in checks[1:]:
            keep = keep & other
        if not _count(mask & ~keep):
            return mask
        for keep, name, why in checks:
            mask = self.apply(mask, keep, name, why)
        return mask


def _at(values: np.ndarray | float, i: int) -> float:
    return float(values) if isinstance(values, float) else float(values[i])


_ID_BATCH = 256
_id_pool: list[str] = []


def _refill_ids() -> None:
    raw = bytearray(os.urandom(16 * _ID_BATCH))
    raw[6::16] = bytes((b & 0x0F) | 0x40 for b in raw[6::16])
    raw[8::16] = bytes((b & 0x3F) | 0x80 for b in raw[8::16])
    hexed = raw.hex()
    _id_pool.extend(hexed[i : i + 32] for i in range(0, len(hexed), 32))


# A worker forked from a process that had ids in stock must not hand out the same ones.
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_id_pool.clear)


def _request_id() -> str:
    # uuid.uuid4().hex without a UUID object (16 random bytes from the OS, version 4, RFC
    # variant), made 256 at a time: one os.urandom call costs as much as the rest of an id.
    while True:
        try:
            return _id_pool.pop()
        except IndexError:  # empty (another thread may have taken the last one meanwhile)
            _refill_ids()


def _candidates(
    loaded: LoadedModel, candidates: Sequence[str] | None, removals: _Removals
) -> np.ndarray:
    if candidates is None:
        return loaded.routable.copy()
    index = loaded.index
    keep = np.zeros(len(loaded.names), dtype=bool)
    for i, name in enumerate(candidates):
        j = index.get(name)
        if j is None or not loaded.routable[j]:
            known = sorted(loaded.universe)
            raise ApiError(
                422,
                "unknown_model",
                f"candidates[{i}]: unknown model {quote(name)}; routable: {', '.join(known)}",
                field=f"candidates[{i}]",
                known=known,
            )
        keep[j] = True
    return removals.apply(loaded.routable.copy(), keep, "candidates", _not_a_candidate)


def _capability(
    loaded: LoadedModel, prompt: Prompt, input_tokens: int, expected_output: int | None
) -> list[_Check]:
    checks: list[_Check] = []
    if prompt.images:
        images = prompt.images
        checks.append(
            (vision_ok(loaded.vision, images), "capability", lambda i: describe_vision(images))
        )
    # Most prompts fit every window: one scalar test settles that before any array work.
    if expected_output is None:
        if input_tokens <= loaded.min_context_slack:
            return checks
        out: np.ndarray | float = loaded.output_tokens
    else:
        if input_tokens + expected_output <= loaded.min_context_window:
            return checks
        out = float(expected_output)
    window = loaded.context_window

    def why(i: int) -> str:
        return describe_context(input_tokens, _at(out, i), window[i])

    checks.append((context_ok(window, needed_tokens(input_tokens, out)), "capability", why))
    return checks


def _cost(loaded: LoadedModel, input_tokens: int, query: RouteQuery) -> list[_Check]:
    budget = query.max_cost_usd
    if budget is None:
        return []
    cost = loaded.estimate_cost(input_tokens, query.expected_output_tokens)
    return [(cost_ok(cost, budget), "cost", lambda i: describe_cost(cost[i], budget))]


def _latency(
    live: HealthView, at: np.ndarray, ceiling: float | None, percentile: float
) -> list[_Check]:
    if ceiling is None:
        return []
    latency, observed = live.latency[at], live.observed[at]

    def why(i: int) -> str:
        return describe_latency(latency[i], ceiling, percentile if observed[i] else None)

    return [(latency_ok(latency, ceiling), "latency", why)]


def _breakers(
    health: Health, view: HealthView, loaded: LoadedModel, mask: np.ndarray, removals: _Removals
) -> tuple[np.ndarray, np.ndarray]:
    """(mask without unavailable models, the models removed for their breaker alone; an
    empty array when no circuit is open or half-open)."""
    if not view.not_closed:  # a closed circuit is always available: nothing to ask
        return mask, _NOT_BLOCKED
    blocked = np.zeros_like(mask)
    for name in tuple(view.not_closed):
        i = loaded.index.get(name)
        if i is not None and mask[i]:
            blocked[i] = not health.is_available(name)
    names = loaded.names
    mask = removals.apply(mask, ~blocked, "breaker", lambda i: _describe_breaker(health, names[i]))
    return mask, blocked


def _reliability(
    live: HealthView, loaded: LoadedModel, scored: Scored, mask: np.ndarray, notes: list[str]
) -> Scored:
    """`scored` with each score times the model's observed success rate (when it has one)."""
    if not live.any_unreliable:
        return scored
    k = loaded.n_scored
    factor = live.factor[loaded.catalog_index[:k]]
    for name in tuple(live.not_closed):  # a half-open model is judged by its probe
        i = loaded.index.get(name)
        if i is not None and i < k:
            factor[i] = 1.0
    scaled = mask[:k] & (factor < 1.0)
    if not _count(scaled):
        return scored
    names = loaded.names
    listed = ", ".join(f"{names[i]} ×{factor[i]:.2f}" for i in np.flatnonzero(scaled))
    notes.append(f"scores scaled by observed success rate: {listed}")
    return replace(scored, score=scored.score * factor)


def _not_a_candidate(_i: int) -> str:
    return "not in the request's candidates"


def _describe_breaker(health: Health, model: str) -> str:
    if health.breaker_state(model).value == "open":
        return "circuit breaker is open (recent calls failed); retried after its cooldown"
    return "circuit breaker is half-open and its probe slots are taken"


def _rules(
    rules: RuleSet,
    loaded: LoadedModel,
    query: RouteQuery,
    input_tokens: int,
    mask: np.ndarray,
    removals: _Removals,
    notes: list[str],
) -> tuple[int | None, np.ndarray]:
    if not len(rules):
        return None, mask
    outcome = rules.match(
        text=query.prompt.text,
        task_type=query.task_type,
        metadata=query.metadata,
        input_tokens=input_tokens,
    )
    if outcome is None:
        return None, mask
    if outcome.model is not None:
        i = loaded.index.get(outcome.model)
        if i is not None and mask[i]:
            notes.insert(0, f"rule {outcome.rule!r} pins {outcome.model}")
            return i, mask
        notes.append(
            f"rule {outcome.rule!r} pins {outcome.model}, which is not eligible for this "
            "request; not applied"
        )
        return None, mask
    assert outcome.candidates is not None
    keep = loaded.mask_of(outcome.candidates)
    if not _count(mask & keep):
        notes.append(
            f"rule {outcome.rule!r} restricts candidates to {', '.join(outcome.candidates)}, "
            "none of which is eligible for this request; not applied"
        )
        return None, mask
    listed = ", ".join(outcome.candidates)
    notes.append(f"rule {outcome.rule!r} restricted candidates to {listed}")
    restricted = f"rule {outcome.rule!r} restricts candidates to {listed}"
    mask = removals.apply(mask, keep, "rule", lambda _i: restricted)
    return None, mask


def _experiment(
    a: Assignment, loaded: LoadedModel, mask: np.ndarray, notes: list[str]
) -> tuple[int | None, bool]:
    """(pinned model index or None, whether the variant changed how this request is routed)."""
    where = f"experiment {a.experiment!r} variant {a.variant!r}"
    if a.model is not None:
        i = loaded.index.get(a.model)
        if i is not None and mask[i]:
            notes.append(f"{where} pins {a.model}")
            return i, True
        notes.append(f"{where} pins {a.model}, which is not eligible for this request; not applied")
        return None, False
    if a.knob is not None:
        notes.append(f"{where} sets the knob to {a.knob:g}")
        return None, True
    if a.artifact is not None:
        notes.append(f"{where} routes with artifact {a.artifact} (router {loaded.version})")
        return None, True
    notes.append(f"{where} (control: the normal router)")
    return None, False


def _knob(
    settings: Settings, router: Router, query: RouteQuery, experiment: Assignment | None
) -> tuple[float, str | None]:
    """The knob and the priority it came from (None when the request gave a knob)."""
    priority: str | None
    if query.knob is not None:
        knob, priority = query.knob, None
    else:
        priority = query.priority or settings.default_priority
        p = settings.priorities
        if priority == "quality":
            knob = p.quality
        elif priority == "cost":
            knob = p.cost
        else:  # balanced, and speed's utility
            knob = p.balanced if p.balanced is not None else router.default_knob
    if experiment is not None and experiment.knob is not None:
        knob = experiment.knob
    return float(knob), priority


def _fastest_first(
    router: Router,
    ranked: Any,
    order: np.ndarray,
    knob: float,
    latency: np.ndarray,
    settings: Settings,
) -> tuple[np.ndarray, str]:
    tolerance = settings.priorities.speed_tolerance
    utility = router.utility(ranked.score, ranked.cost_usd, knob)
    best = utility[order[0]]
    near = order[utility[order] >= best - tolerance]
    # Stable sort: equal latency keeps the utility order.
    fast = near[np.argsort(latency[near], kind="stable")]
    rest = order[utility[order] < best - tolerance]
    headline = (
        f"priority speed: lowest latency among {len(near)} model(s) within {tolerance:g} of "
        f"the best utility at knob {knob:g} ({len(order)} eligible)"
    )
    return np.concatenate([fast, rest]), headline


def _no_eligible(removed: Removed, routable: int) -> ApiError:
    by_filter: dict[str, int] = {}
    for reason in removed.values():
        by_filter[reason["filter"]] = by_filter.get(reason["filter"], 0) + 1
    summary = ", ".join(f"{n} by {f}" for f, n in by_filter.items())
    return ApiError(
        422,
        "no_eligible_model",
        f"no model can take this request: all {routable} routable model(s) were removed "
        f"({summary})",
        removed=removed,
    )
