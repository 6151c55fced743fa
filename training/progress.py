"""Progress of long training and evaluation steps: a tqdm bar with ETA on a terminal, plain
timestamped lines elsewhere (CI logs, files), where a redrawn bar would be noise.

    with progress_bar("cross-validation", total=42, unit="fit") as advance:
        for job in jobs:
            ...
            advance(1)

`track(iterable, ...)` does the same for a loop. Output goes to stderr, like the phase lines.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import IO, Any, TypeVar

__all__ = ["PlainProgress", "featurise", "open_progress", "progress_bar", "track"]

T = TypeVar("T")
# Plain lines: one at the start, then at most one per interval, and one at the end.
PLAIN_INTERVAL_SECONDS = 15.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _amount(n: float, unit: str) -> str:
    if unit == "B":
        return f"{n / 2**20:.1f} MiB"
    return f"{int(n)} {unit}".rstrip()


class PlainProgress:
    """The non-terminal display: ``[HH:MM:SS] desc: done/total (p%), elapsed, ETA`` at most
    once per `interval`, and a last line when done.

    `clock` is injectable so that tests see exact lines without sleeping.
    """

    def __init__(
        self,
        desc: str,
        total: float | None,
        unit: str = "",
        *,
        stream: IO[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = PLAIN_INTERVAL_SECONDS,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.interval = interval
        self.done = 0.0
        self.start = clock()
        self.last = self.start  # nothing said at the start: a failing step ends with its error

    def _say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def _status(self) -> str:
        elapsed = self.clock() - self.start
        if not self.total:
            return f"{self.desc}: {_amount(self.done, self.unit)}, {_duration(elapsed)}"
        share = min(self.done / self.total, 1.0)
        text = (
            f"{self.desc}: {_amount(self.done, self.unit)}/{_amount(self.total, self.unit)} "
            f"({100 * share:.0f}%), {_duration(elapsed)}"
        )
        if 0 < share < 1:
            text += f", ETA {_duration(elapsed * (1 - share) / share)}"
        return text

    def update(self, n: float = 1) -> None:
        self.done += n
        if self.total and self.done >= self.total:
            return  # close() says it
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._say(self._status())

    def close(self) -> None:
        self._say(self._status() + " — done")


def open_progress(
    desc: str,
    total: float | None,
    unit: str = "",
    *,
    stream: IO[str] | None = None,
) -> Any:
    """A display with ``update(n)`` and ``close()``: tqdm on a terminal, `PlainProgress` else.

    For loops too long to re-indent under `progress_bar`; close it when the work is done.
    """
    out = stream if stream is not None else sys.stderr
    if out.isatty():
        from tqdm import tqdm

        scale = unit == "B"
        return tqdm(
            total=total,
            desc=desc,
            unit=unit or "it",
            unit_scale=scale,
            unit_divisor=1024 if scale else 1000,
            file=out,
            dynamic_ncols=True,
            mininterval=0.5,
        )
    return PlainProgress(desc, total, unit, stream=out)


@contextlib.contextmanager
def progress_bar(
    desc: str,
    total: float | None,
    unit: str = "",
    *,
    stream: IO[str] | None = None,
) -> Iterator[Callable[[float], None]]:
    """A bar with ETA on a terminal (tqdm), plain lines otherwise; yields ``advance(n)``.

    The closing line is written only when the block finishes without an exception.
    """
    display = open_progress(desc, total, unit, stream=stream)
    try:
        yield display.update
    except BaseException:
        if not isinstance(display, PlainProgress):
            display.close()
        raise
    display.close()


def track(items: Iterable[T], desc: str, total: int, unit: str = "", **kwargs: Any) -> Iterator[T]:
    """Yield `items`, advancing a `progress_bar` by one per item."""
    with progress_bar(desc, total, unit, **kwargs) as advance:
        for item in items:
            yield item
            advance(1)


def featurise(featurizer: Any, records: Sequence[Any], *, chunk: int = 2000) -> Any:
    """``featurizer.transform`` of the records' prompts (CSR), in chunks behind a progress bar.

    The transform is row by row, so the stacked chunks equal one call on all the records.
    """
    from scipy import sparse

    blocks = []
    with progress_bar("featurising", total=len(records), unit="prompts") as advance:
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            blocks.append(
                featurizer.transform(
                    [r.prompt for r in part], task_types=[r.task_type for r in part]
                )
            )
            advance(len(part))
    if not blocks:
        return featurizer.transform([], task_types=[]).tocsr()
    return sparse.vstack(blocks, format="csr")
