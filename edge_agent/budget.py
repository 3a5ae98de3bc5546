"""A per-session M budget: the device says "at most b blocking transmissions per token", and
its gate's threshold adapts online to meet it (issue 17 item 3).

Two parts, both on the running count the decoder already keeps (`Transmissions`):

* **a controller on τ** (in logit space, starting at the bundle's calibrated threshold): after
  every token, θ ← θ + η·(c − b), with c the transmissions that token cost (0, 1 for a REQUEST,
  2 with its CORRECT). It settles where the expected cost per token is b, so the side network
  is spent on the positions the classifier ranks highest *for this session*;
* **a band** on the running total S after T tokens: a position may fire only while
  S + 1 ≤ b·(T + 1) + slack, and fires anyway when S < b·(T + 1) − slack. So S stays within
  slack + 1 of b·T at every token: |M − b| ≤ (slack + 1)/T, 0.031 after 64 tokens at slack 1
  (for b ≤ 1: a forced REQUEST costs at least 1, so the total keeps up with b·T).

The decision depends only on the classifier's g for the position and the counts before it, so
the reference generator, the batched generator and the agent (which drive the same `Decoder`)
take the same decisions; a replayed position (re-OPEN after a failure) gets its first decision
again, whatever was counted since.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from routing.config import Tunables, tunable
from routing.modes import Mode
from routing.transmissions import Transmissions

if TYPE_CHECKING:
    from edge_agent.edge_model import EdgeModel

_CLAMP = 40.0  # logits beyond ±40 are saturated sigmoids in float64: compare them as equal


@dataclass
class BudgetConfig(Tunables):
    m_budget: float = tunable(0.0, 0.0, 1.0, "the session's M budget b: blocking transmissions "
                              "per token the gate adapts to (0 = none: the bundle's fixed τ)")
    budget_rate: float = tunable(0.5, 0.01, 5.0, "η: the gate's logit threshold moves by "
                                 "η·(cost − b) after each token")
    budget_slack: float = tunable(1.0, 0.5, 8.0, "transmissions the running total may stray from "
                                  "b·tokens before the band decides instead of the gate")


def _logit(g: float) -> float:
    if g <= 0.0:
        return -_CLAMP
    if g >= 1.0:
        return _CLAMP
    return max(-_CLAMP, min(_CLAMP, math.log(g) - math.log1p(-g)))


class BudgetGate:
    """One session's adaptive gate. `decide` is called once per frame, before `Decoder.frame`
    counts anything for that position (the decoder does this itself when it holds one)."""

    def __init__(self, cfg: BudgetConfig, threshold: float) -> None:
        if cfg.m_budget <= 0.0:
            raise ValueError("a BudgetGate needs an M budget > 0")
        self.budget, self.rate, self.slack = cfg.m_budget, cfg.budget_rate, cfg.budget_slack
        self.theta = max(-_CLAMP, min(_CLAMP, threshold))
        self._tokens = 0  # the count `theta` has been updated for
        self._blocking = 0
        self._last: tuple[int, bool, bool] | None = None  # (pos, fire, gate's wish), latest frame
        self.forced = 0  # decisions the band made against the gate (both ways)

    @classmethod
    def of(cls, cfg: BudgetConfig | None, edge: EdgeModel | None, mode: Mode) -> BudgetGate | None:
        """A session's budget gate, starting from the bundle's calibrated threshold; None without
        a budget or in a mode the classifier does not gate (base never transmits, lockstep modes
        always do). The agent, the reference and the batched generator all make it here."""
        if cfg is None or cfg.m_budget <= 0.0 or edge is None or not mode.gated:
            return None
        return cls(cfg, edge.head_for(mode).threshold)

    def decide(self, pos: int, g: float, stats: Transmissions) -> bool:
        if self._last is not None and self._last[0] == pos:
            return self._last[1]  # a replayed position: the first decision again
        if stats.tokens != self._tokens:  # the cost of the tokens since the last decision
            cost = stats.blocking - self._blocking
            if self._last is not None and self._last[1] != self._last[2]:
                cost = float(self._last[2])  # the band overrode the gate: the gate's own cost, so
                # its refusals do not pull τ further the wrong way (no wind-up)
            done = stats.tokens - self._tokens
            self.theta = max(-_CLAMP, min(_CLAMP, self.theta + self.rate * (cost - self.budget * done)))
            self._tokens, self._blocking = stats.tokens, stats.blocking
        want = _logit(g) > self.theta
        allowed = self.budget * (stats.tokens + 1)
        fire = want
        if want and stats.blocking + 1 > allowed + self.slack:
            fire = False
        elif not want and stats.blocking < allowed - self.slack:
            fire = True
        self.forced += fire != want
        self._last = (pos, fire, want)
        return fire
