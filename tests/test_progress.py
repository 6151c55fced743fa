"""Progress display: plain lines with counts and ETA off a terminal, a tqdm bar on one."""

from __future__ import annotations

import io
import re

import numpy as np
from fakes import FakeClock

from features.extractor import PromptFeaturizer
from features.text import normalize
from training.progress import PlainProgress, featurise, progress_bar, track

STAMP = r"\[\d\d:\d\d:\d\d\] "


def test_plain_lines_say_done_total_share_and_eta() -> None:
    out, clock = io.StringIO(), FakeClock(0.0)
    display = PlainProgress("cross-validation", 40, "models", stream=out, clock=clock, interval=15)
    clock.advance(10)
    display.update(10)  # within the interval: no line
    clock.advance(10)
    display.update(10)  # 20 s, half done: ETA 20 s
    clock.advance(20)
    display.update(20)
    display.close()
    lines = out.getvalue().splitlines()
    assert [re.sub(STAMP, "", line) for line in lines] == [
        "cross-validation: 20 models/40 models (50%), 20s, ETA 20s",
        "cross-validation: 40 models/40 models (100%), 40s — done",
    ]
    assert all(re.match(STAMP, line) for line in lines)


def test_bytes_are_shown_in_mib() -> None:
    out = io.StringIO()
    with progress_bar("loading logs", total=3 * 2**20, unit="B", stream=out) as advance:
        advance(3 * 2**20)
    assert (
        out.getvalue().splitlines()[-1].endswith("loading logs: 3.0 MiB/3.0 MiB (100%), 0s — done")
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_with_eta() -> None:
    out = _Terminal()
    assert list(track(range(5), "fitting", total=5, unit="models", stream=out)) == [0, 1, 2, 3, 4]
    text = out.getvalue()
    assert "\r" in text and "fitting: 100%" in text and "5/5" in text
    assert "<" in text  # tqdm's "elapsed<remaining"


def test_featurise_in_chunks_equals_one_transform() -> None:
    class R:
        def __init__(self, text: str, task: str | None) -> None:
            self.prompt, self.task_type = normalize(prompt=text), task

    records = [R(f"prompt number {i} about {'code' if i % 2 else 'maths'}", None) for i in range(7)]
    featurizer = PromptFeaturizer(n_hash_features=2**10).fit([])
    out = io.StringIO()
    import training.progress as progress

    original = progress.sys.stderr
    progress.sys.stderr = out
    try:
        chunked = featurise(featurizer, records, chunk=3)
    finally:
        progress.sys.stderr = original
    whole = featurizer.transform([r.prompt for r in records], task_types=[None] * 7).tocsr()
    assert chunked.shape == whole.shape
    np.testing.assert_array_equal(chunked.toarray(), whole.toarray())
    assert "featurising: 7 prompts/7 prompts (100%)" in out.getvalue()
