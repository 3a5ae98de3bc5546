"""Progress while a run goes: a live tqdm bar on a terminal, a plain line every few seconds
otherwise (logs, CI, compose), nothing with `--report 0` off a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from loadgen.figures import RequestRecord
from loadgen.runner import LoadTest, Phase, offered


def figures_line(test: LoadTest, phase: Phase) -> str:
    done = sum(r.completed for r in phase.records)
    tokens = sum(r.sent.tokens for r in phase.records)
    blocking = sum(r.sent.blocking for r in phase.records)
    secs = max(time.perf_counter() - phase.started, 1e-9)
    errors = sum(len(r.errors) for r in phase.records)
    return (f"rate={offered(phase.rate)} done={done} in_flight={len(test.live)} "
            f"tok/s={tokens / secs:.0f} M={blocking / tokens if tokens else 0:.3f} errors={errors}")


class Progress:
    """Hooks itself into a LoadTest: `on_finish` moves the bar, `on_sample` prints lines."""

    def __init__(self, test: LoadTest, every_s: float, out: TextIO = sys.stderr,
                 bar: bool | None = None) -> None:
        self.test, self.every_s, self.out = test, every_s, out
        self.bar_on = out.isatty() if bar is None else bar
        self.bar = None
        self.phase: Phase | None = None
        self.last = time.monotonic()
        test.on_finish, test.on_sample = self.finished, self.sampled

    def finished(self, rec: RequestRecord) -> None:
        phase = self.test.phase
        if phase is None or not self.bar_on:
            return
        if phase is not self.phase:
            self._new_bar(phase)
        self.bar.update(1)
        self.bar.set_postfix_str(figures_line(self.test, phase), refresh=False)

    def sampled(self, phase: Phase) -> None:
        if self.bar_on or not self.every_s or time.monotonic() - self.last < self.every_s:
            return
        self.last = time.monotonic()
        print(f"[{time.perf_counter() - phase.started:6.1f}s] {figures_line(self.test, phase)}",
              file=self.out, flush=True)

    def _new_bar(self, phase: Phase) -> None:
        from tqdm import tqdm

        self.close()
        self.phase = phase
        self.bar = tqdm(total=self.test.cfg.num_prompts or None, file=self.out, unit="req",
                        desc=f"rate {offered(phase.rate)}", dynamic_ncols=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
