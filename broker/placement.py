"""Where a session goes: the workers the broker knows and the capacity it can check.

A worker announces a capacity in READY; the broker believes it only up to
`worker_capacity_max`, counts the sessions it placed itself, lowers its estimate when the worker
refuses an OPEN (BUSY: its KV budget is smaller than announced) and raises it again by one per
session the worker finishes. A worker that leaves placed OPENs unanswered gets no more than
`BrokerConfig.worker_unanswered_max` of them (a worker that claims much and serves nothing takes
little). The next
session goes to the fitting worker with the most free slots (least loaded as a tie-break).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerInfo:
    identity: bytes
    fingerprint: str
    claimed: int  # what its READY announced, capped by config
    expiry: float
    key: bytes = b""  # its CURVE public key (Z85), b"" on a plaintext broker
    estimate: int = 0  # slots the broker believes in (≤ claimed)
    sessions: set[bytes] = field(default_factory=set)  # placed by us and not yet freed
    unanswered: set[bytes] = field(default_factory=set)  # placed OPENs without an answer yet

    def __post_init__(self) -> None:
        self.estimate = self.estimate or self.claimed

    @property
    def free(self) -> int:
        return self.estimate - len(self.sessions)

    def refused(self) -> None:
        """The worker answered BUSY to a placed OPEN: it holds fewer than we thought."""
        self.estimate = max(1, len(self.sessions) - 1)

    def finished(self) -> None:
        """A session ended on it: a refusal's lowered estimate grows back a slot at a time."""
        self.estimate = min(self.claimed, self.estimate + 1)


def pick(workers: list[WorkerInfo], fingerprint: str, unanswered_max: int) -> WorkerInfo | None:
    """The fitting worker with the most free slots, or None when every fitting one is full or
    holds `unanswered_max` placed OPENs it has not answered yet."""
    best = None
    for w in workers:
        if w.fingerprint != fingerprint or w.free <= 0 or len(w.unanswered) >= unanswered_max:
            continue
        if best is None or (w.free, -len(w.sessions) / w.estimate) > (best.free, -len(best.sessions) / best.estimate):
            best = w
    return best
