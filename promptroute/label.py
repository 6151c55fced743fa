"""`promptroute label`: replay prompts through the configured upstreams and grade the answers.

For each input row (a prompt or chat messages), every model of ``label.models`` is called
through its upstream (the service's upstream table, `serving.gateway.upstreams`), at most
``label.concurrency`` calls in flight; a 429, a 5xx, a timeout or a dropped connection is
retried ``label.retries`` times with exponential backoff. The answers are graded together (see
`promptroute.graders`) and one multi-outcome line is appended to the output, the form
`promptroute train` reads, with the measured cost (the upstream's ``usage`` × catalog prices),
the latency and the grader's identity::

    {"id": ..., "prompt": ..., "outcomes": {MODEL: {"quality", "cost_usd", "latency_ms",
     "input_tokens", "output_tokens"}}, "grader": {...}, "grading_cost_usd": ...}

Budget: before a prompt starts, its worst case (estimated input tokens and ``max_tokens`` out
for every model, plus the judge) is reserved against ``label.budget_usd``; a prompt that no
longer fits is not started, and the run stops there. Spending from earlier runs into the same
output counts too.

Resume: the output is the checkpoint. Each prompt's line is written whole once it is done, so
after an interruption the next run skips every id already in the file (a line cut short by a
crash is removed first) and goes on with the rest. A prompt whose calls all failed is not
written, so a later run tries it again; one whose grading failed is written with null
qualities and the reason, since its calls were paid for.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from features.text import PromptError, normalize
from models.catalog import Catalog, estimate_tokens
from models.errors import ConfigError, DataError
from promptroute.graders import (
    CallableGrader,
    GradeError,
    JudgeGrader,
    ReferenceGrader,
)
from promptroute.loopconfig import (
    CallableGraderConfig,
    JudgeGraderConfig,
    LabelConfig,
    ReferenceGraderConfig,
)
from serving.gateway.upstreams import Upstream

__all__ = ["LabelSummary", "Labeller", "read_prompt_rows", "sample_decision_log"]

_JUDGE_REPLY_TOKENS = 16  # per answer: "A: 7\n"


@dataclass
class LabelSummary:
    """What one run did; `stopped` says why it ended early (None when every row was done)."""

    rows: int = 0
    already_done: int = 0
    labelled: int = 0
    grade_failed: int = 0
    call_failed: int = 0
    not_started: int = 0
    spent_before_usd: float = 0.0
    spent_usd: float = 0.0
    stopped: str | None = None
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    text: str
    cost_usd: float
    latency_ms: float
    input_tokens: int | None
    output_tokens: int | None


class _CallError(Exception):
    pass


def row_id(row: Mapping[str, Any]) -> str:
    """The row's ``id``, or a hash of its prompt or messages (so resume works without ids)."""
    if row.get("id") is not None:
        return str(row["id"])
    payload = row.get("prompt") if row.get("prompt") is not None else row.get("messages")
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


def read_prompt_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a prompts JSONL file, each with a ``prompt`` string or chat ``messages``.

    Raises DataError with the file and line of the first bad row.
    """
    rows = []
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise DataError(str(path), None, f"cannot be read: {e.strerror or e}") from None
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as e:
            raise DataError(str(path), number, f"not valid JSON: {e}") from None
        if not isinstance(row, dict):
            raise DataError(str(path), number, "a line must be a JSON object")
        try:
            normalize(prompt=row.get("prompt"), messages=row.get("messages"))
        except PromptError as e:
            raise DataError(str(path), number, str(e)) from None
        rows.append(row)
    return rows


def sample_decision_log(rows: Iterable[Mapping[str, Any]], n: int, seed: int) -> list[dict]:
    """`n` rows (all if fewer) drawn reproducibly from a decision log's rows that kept their
    prompt text (rows in privacy mode hold only a hash and cannot be replayed)."""
    usable = [
        {k: r[k] for k in ("id", "prompt", "messages", "task_type") if r.get(k) is not None}
        for r in rows
        if r.get("prompt") is not None or r.get("messages") is not None
    ]
    if len(usable) <= n:
        return usable
    return random.Random(seed).sample(usable, n)


def _finish_partial_line(path: Path) -> None:
    """Cut a last line without its newline (an interrupted write); resume redoes that row."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with path.open("r+b") as f:
            f.truncate(keep)


def _already_done(path: Path) -> tuple[set[str], float]:
    """Ids in an earlier run's output and what that run spent."""
    done: set[str] = set()
    spent = 0.0
    if not path.exists():
        return done, spent
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
            done.add(str(row["id"]))
            spent += float(row.get("grading_cost_usd") or 0.0)
            for o in row.get("outcomes", {}).values():
                spent += float(o.get("cost_usd") or 0.0)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise DataError(
                str(path), number, "not a line `label` wrote; refusing to append"
            ) from None
    return done, spent


class _Budget:
    """Reservations against a cap: a prompt starts only if its worst case still fits.

    A reservation that does not fit while others are in flight waits for them to settle (they
    usually cost far less than their worst case); it fails only when nothing is in flight.
    """

    def __init__(self, cap: float, spent: float) -> None:
        self.cap = cap
        self.spent = spent
        self.reserved = 0.0
        self.in_flight = 0
        self._settled = asyncio.Condition()

    async def reserve(self, amount: float) -> bool:
        async with self._settled:
            while self.spent + self.reserved + amount > self.cap:
                if self.in_flight == 0:
                    return False
                await self._settled.wait()
            self.reserved += amount
            self.in_flight += 1
            return True

    async def settle(self, reserved: float, actual: float) -> None:
        async with self._settled:
            self.reserved -= reserved
            self.spent += actual
            self.in_flight -= 1
            self._settled.notify_all()


class Labeller:
    """Calls, grades and writes; see the module docstring.

    Parameters
    ----------
    config : the ``label`` section.
    upstreams : catalog model → resolved upstream (`serving.gateway.upstreams.resolve_upstreams`).
    catalog : prices for the cost of each call.
    transport : replaces the network (tests); `sleep` and `clock` are injectable the same way.
    """

    def __init__(
        self,
        config: LabelConfig,
        upstreams: Mapping[str, Upstream],
        catalog: Catalog,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.perf_counter,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.upstreams = dict(upstreams)
        self.catalog = catalog
        self.transport = transport
        self.sleep = sleep
        self.clock = clock
        needed = list(config.models)
        if isinstance(config.grader, JudgeGraderConfig):
            needed.append(config.grader.model)
        for where, m in [("label.models", m) for m in config.models] + [
            ("label.grader.model", m) for m in needed[len(config.models) :]
        ]:
            if m not in catalog:
                raise ConfigError(
                    where, f"unknown model {m!r}; add it to the catalog with its prices"
                )
            if m not in self.upstreams:
                known = ", ".join(sorted(self.upstreams)) or "none"
                raise ConfigError(where, f"model {m!r} has no upstream; configured: {known}")
        self._client: httpx.AsyncClient | None = None
        self._calls: asyncio.Semaphore | None = None
        g = config.grader
        if isinstance(g, ReferenceGraderConfig):
            self.grader: Any = ReferenceGrader(g)
        elif isinstance(g, CallableGraderConfig):
            self.grader = CallableGrader(g)
        else:
            self.grader = JudgeGrader(g, self._judge, seed=seed)

    # -- calls ---------------------------------------------------------------------------------
    async def _call(self, model: str, messages: list[Any], max_tokens: int) -> _Answer:
        assert self._client is not None and self._calls is not None
        up = self.upstreams[model]
        body = {"model": up.upstream_model, "messages": messages, "max_tokens": max_tokens}
        last = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                await self.sleep(self.config.backoff_seconds * 2 ** (attempt - 1))
            async with self._calls:
                t0 = self.clock()
                try:
                    resp = await self._client.post(
                        up.url, json=body, headers=dict(up.headers), timeout=up.timeout
                    )
                except httpx.TimeoutException:
                    last = "timeout"
                    continue
                except httpx.TransportError as e:
                    last = f"connection error ({type(e).__name__})"
                    continue
                latency = (self.clock() - t0) * 1000.0
            if resp.status_code == 429 or resp.status_code >= 500:
                last = f"HTTP {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise _CallError(f"HTTP {resp.status_code}")
            return self._answer(model, messages, resp, latency)
        raise _CallError(f"{last} after {self.config.retries + 1} attempt(s)")

    def _answer(
        self, model: str, messages: list[Any], resp: httpx.Response, latency: float
    ) -> _Answer:
        try:
            data = resp.json()
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError
        except (ValueError, KeyError, IndexError, TypeError):
            raise _CallError("malformed response (no choices[0].message.content)") from None
        usage = data.get("usage") if isinstance(data, dict) else None
        try:
            inp, out = int(usage["prompt_tokens"]), int(usage["completion_tokens"])
        except (TypeError, KeyError, ValueError):
            raise _CallError("response has no usage, so its cost cannot be measured") from None
        return _Answer(text, self.catalog[model].cost_usd(inp, out), latency, inp, out)

    async def _judge(self, messages: list[dict[str, str]]) -> tuple[str, float]:
        assert isinstance(self.config.grader, JudgeGraderConfig)
        model = self.config.grader.model
        try:
            answer = await self._call(model, messages, _JUDGE_REPLY_TOKENS * 26)
        except _CallError as e:
            raise GradeError(f"judge {model}: {e}") from None
        return answer.text, answer.cost_usd

    # -- one prompt ----------------------------------------------------------------------------
    def _worst_case(self, text: str) -> float:
        inp = estimate_tokens(len(text))
        mt = self.config.max_tokens
        total = sum(self.catalog[m].cost_usd(inp, mt) for m in self.config.models)
        if isinstance(self.config.grader, JudgeGraderConfig):
            n = len(self.config.models)
            judge_in = inp + n * mt + estimate_tokens(len(self.config.grader.template))
            total += self.catalog[self.config.grader.model].cost_usd(
                judge_in, n * _JUDGE_REPLY_TOKENS
            )
        return total

    async def _one(self, row: dict[str, Any], summary: LabelSummary) -> dict[str, Any] | None:
        prompt = normalize(prompt=row.get("prompt"), messages=row.get("messages"))
        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        results = await asyncio.gather(
            *(self._call(m, messages, self.config.max_tokens) for m in self.config.models),
            return_exceptions=True,
        )
        answers: dict[str, _Answer] = {}
        errors: dict[str, str] = {}
        for m, r in zip(self.config.models, results, strict=True):
            if isinstance(r, _CallError):
                errors[m] = str(r)
                summary.errors[str(r)] = summary.errors.get(str(r), 0) + 1
            elif isinstance(r, BaseException):
                raise r
            else:
                answers[m] = r
        spent = sum(a.cost_usd for a in answers.values())
        if not answers:
            summary.call_failed += 1
            return {"_spent": spent}
        grade_cost, grade_error = 0.0, None
        qualities: dict[str, float | None]
        try:
            qualities, grade_cost = await self.grader.grade(
                prompt.text, {m: a.text for m, a in answers.items()}, row
            )
        except GradeError as e:
            grade_error, grade_cost = str(e), e.cost_usd
            qualities = dict.fromkeys(answers)
            summary.grade_failed += 1
        out: dict[str, Any] = {"id": row_id(row)}
        if row.get("messages") is not None:
            out["messages"] = row["messages"]
        else:
            out["prompt"] = row["prompt"]
        for key in ("task", "task_type"):
            if row.get(key) is not None:
                out[key] = row[key]
        out["outcomes"] = {
            m: {
                "quality": qualities[m],
                "cost_usd": a.cost_usd,
                "latency_ms": round(a.latency_ms, 3),
                "input_tokens": a.input_tokens,
                "output_tokens": a.output_tokens,
            }
            for m, a in answers.items()
        }
        out["grader"] = self.grader.identity
        out["grading_cost_usd"] = grade_cost
        if grade_error is not None:
            out["grade_error"] = grade_error
        if errors:
            out["call_errors"] = errors
        out["_spent"] = spent + grade_cost
        return out

    # -- the run -------------------------------------------------------------------------------
    async def run(
        self,
        rows: Sequence[dict[str, Any]],
        out_path: str | Path,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> LabelSummary:
        """Label `rows` into `out_path` (appending; ids already there are skipped)."""
        path = Path(out_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _finish_partial_line(path)
        done, spent_before = _already_done(path)
        summary = LabelSummary(rows=len(rows), spent_before_usd=spent_before)
        todo = [r for r in rows if row_id(r) not in done]
        summary.already_done = len(rows) - len(todo)
        budget = _Budget(self.config.budget_usd, spent_before)
        self._calls = asyncio.Semaphore(self.config.concurrency)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for r in todo:
            queue.put_nowait(r)
        finished = 0
        stop = asyncio.Event()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

        async def worker() -> None:
            nonlocal finished
            while not stop.is_set():
                try:
                    row = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                text = normalize(prompt=row.get("prompt"), messages=row.get("messages")).text
                worst = self._worst_case(text)
                if not await budget.reserve(worst):
                    stop.set()
                    summary.stopped = (
                        f"budget: ${budget.spent:.4f} of ${budget.cap:g} spent; the next prompt "
                        f"could cost up to ${worst:.4f}"
                    )
                    queue.put_nowait(row)
                    return
                line = await self._one(row, summary)
                actual = line.pop("_spent") if line else 0.0
                await budget.settle(worst, actual)
                if line and "outcomes" in line:
                    data = (json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n").encode()
                    os.write(fd, data)  # one write per line: a crash leaves whole lines
                    summary.labelled += 1
                finished += 1
                if progress is not None:
                    progress(finished, len(todo))

        try:
            async with httpx.AsyncClient(
                transport=self.transport, timeout=None, follow_redirects=False
            ) as client:
                self._client = client
                n_workers = min(self.config.concurrency, max(len(todo), 1))
                await asyncio.gather(*(worker() for _ in range(n_workers)))
        finally:
            os.close(fd)
            self._client = None
        summary.not_started = queue.qsize()
        summary.spent_usd = budget.spent - spent_before
        return summary
