"""A stream's accounting: what it cost and how fast it went, in its stats and in the metrics.

M, side usage and corrections are counted by the `Decoder` (the state machine the reference
generator drives too); this adds what only a live stream knows — time to first token,
inter-token latency, bytes each way, stale frames, replays — and mirrors every count into the
Prometheus metrics (`monitoring/metrics.py`) with the label children resolved once per stream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge_agent.decoding import Step
from monitoring import metrics
from routing.protocol import MsgType
from routing.transmissions import Transmissions


@dataclass
class SessionStats(Transmissions):
    ttft_s: float = 0.0
    inter_token_s: list[float] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    stale_frames: int = 0
    replays: int = 0  # re-opens after a retryable error, silence or a lost path
    m_budget: float | None = None  # the session's M budget b (None: the bundle's fixed τ)
    budget_forced: int = 0  # decisions the budget's band made against the gate

    @property
    def budget_gap(self) -> float | None:
        """M − b for a session under a budget (None without one or before a token)."""
        return None if self.m_budget is None or not self.tokens else self.m - self.m_budget

    def to_dict(self) -> dict:
        return {**super().to_dict(), "budget_gap": self.budget_gap}


class Accounting:
    """One stream's counters; `stats` is what the caller reads."""

    def __init__(self, mode: str, wire_dtype: str = "fp16", clock=time.perf_counter) -> None:
        self.stats = SessionStats()
        self.clock = clock
        self.t0 = self.last = clock()
        m = metrics
        self._tokens = {p: m.TOKENS.labels(mode, p, wire_dtype) for p in ("base", "side")}
        self._blocking = {k: m.BLOCKING.labels(mode, k) for k in ("request", "correct", "lockstep")}
        self._ttft, self._itl = m.TTFT.labels(mode), m.ITL.labels(mode)
        self._stale, self._side = m.STALE_FRAMES.labels(mode), m.SIDE_COMPUTE.labels(mode)
        self._mode = mode

    def opened(self) -> None:
        metrics.ACTIVE_SESSIONS.labels("agent").inc()

    def closed(self, outcome: str) -> None:
        metrics.SESSIONS_FINISHED.labels(self._mode, outcome).inc()
        if self.stats.budget_gap is not None:
            metrics.BUDGET_GAP.labels(self._mode).observe(abs(self.stats.budget_gap))
        metrics.ACTIVE_SESSIONS.labels("agent").dec()

    def up(self, nbytes: int) -> None:
        self.stats.bytes_up += nbytes

    def down(self, nbytes: int) -> None:
        self.stats.bytes_down += nbytes

    def stale(self) -> None:
        self.stats.stale_frames += 1
        self._stale.inc()

    def replay(self) -> None:
        self.stats.replays += 1
        metrics.REPLAYS.inc()

    def requested(self, counted: bool) -> None:
        if counted:
            self._blocking["request"].inc()

    def round_trip(self, seconds: float) -> None:
        metrics.EDGE_RTT.observe(seconds)

    def side_compute(self, seconds: float) -> None:
        self._side.observe(seconds)

    def error(self, code: str) -> None:
        metrics.ERRORS.labels("agent", code).inc()

    def token(self, step: Step) -> None:
        """A token is out: its path, the message that went with it, and its timing."""
        if step.send is MsgType.TOKEN:
            self._blocking["lockstep"].inc()
        elif step.send is MsgType.CORRECT:
            self._blocking["correct"].inc()
        self._tokens[step.path].inc()
        now = self.clock()
        if self.stats.tokens == 1:  # the Decoder counted it already
            self.stats.ttft_s = now - self.t0
            self._ttft.observe(now - self.t0)
        else:
            self.stats.inter_token_s.append(now - self.last)
            self._itl.observe(now - self.last)
        self.last = now
