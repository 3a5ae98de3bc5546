"""When a stream replays: the retry policy, a budget measured in time.

A session that meets a transient failure (an ERROR whose code is retryable, silence from its
worker, a dead or reset path to the broker) is re-OPENed with prompt + accepted tokens under a
new id after a jittered back-off (Petals-style replay: the output is the same token for token).
The failures in a row since the last new token form a *streak*; the streak gives up when it has
lasted `deadline_s` — long enough for a full pool to free a slot and for a broker to restart — or,
if `max_attempts` is set, after that many replays.

Which codes are transient is `routing.errors.RETRYABLE` (one definition, also the load tester's).
A refusal of an OPEN (BUSY, NO_WORKER) is replayed only while a replay is under way: a new
session's refusal is the caller's to handle.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from routing.config import Tunables, tunable
from routing.errors import RETRYABLE, ErrorCode

REFUSALS = frozenset({ErrorCode.BUSY, ErrorCode.NO_WORKER})  # an OPEN refused


def retryable(code: str, replaying: bool) -> bool:
    """Does an ERROR with `code` replay the session (`replaying`: a streak is under way)?"""
    return code in RETRYABLE and (replaying or code not in REFUSALS)


@dataclass
class RetryPolicy(Tunables):
    """When and how a session is replayed (re-OPENed with prompt + accepted tokens)."""

    first_delay_s: float = tunable(0.05, 0.001, 1.0, "first replay back-off (doubles, jittered)")
    max_delay_s: float = tunable(2.0, 0.01, 30.0, "the back-off doubles up to this")
    deadline_s: float = tunable(120.0, 1.0, 3600.0, "a failure streak gives up after this long "
                                "(the replay budget: a full pool, a broker restart)")
    max_attempts: int = tunable(0, 0, 10_000, "replays in a row without a new token; 0: no cap, "
                                "the time budget alone")
    silence_s: float = tunable(10.0, 0.1, 600.0, "a started session that hears nothing this long "
                               "replays (its worker may be dead)")

    def delay(self, attempt: int) -> float:
        """Jittered exponential back-off before replay `attempt` (1-based)."""
        cap = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
        return cap * (0.5 + 0.5 * random.random())


RETRY = RetryPolicy()


class GiveUp(Exception):
    """The failure streak ran out of budget (or attempts)."""


@dataclass
class Streak:
    """One session's failures in a row since its last new token."""

    policy: RetryPolicy
    failures: int = 0
    since: float = 0.0  # time.monotonic() of the streak's first failure

    @property
    def replaying(self) -> bool:
        return self.failures > 0

    def fail(self, now: float | None = None) -> float:
        """Count a failure; the back-off to wait before the replay, or GiveUp."""
        now = time.monotonic() if now is None else now
        self.failures += 1
        if self.failures == 1:
            self.since = now
        p = self.policy
        if (p.max_attempts and self.failures > p.max_attempts) or now - self.since > p.deadline_s:
            raise GiveUp(f"gave up after {self.failures - 1} replays in {now - self.since:.1f}s")
        return p.delay(self.failures)

    def progressed(self) -> None:
        """A new token: the streak is over."""
        self.failures = 0
