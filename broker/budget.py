"""A token bucket per agent key: how many ERROR answers the broker queues for one key.

A key that sends garbage and never reads would otherwise have the broker queue an answer per
message on every connection it opens. Beyond its budget an answer is dropped and counted
(`spa_broker_dropped_total{reason="error_budget"}`), never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_KEYS = 65_536  # buckets kept; the idlest (full) ones are forgotten first


@dataclass
class Budgets:
    rate: float  # tokens per second
    burst: float
    buckets: dict[bytes, list[float]] = field(default_factory=dict)  # key -> [tokens, time]

    def take(self, key: bytes, now: float) -> bool:
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) >= MAX_KEYS:
                self._forget(now)
            b = self.buckets[key] = [self.burst, now]
        b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if b[0] < 1:
            return False
        b[0] -= 1
        return True

    def _forget(self, now: float) -> None:
        full = [k for k, (t, at) in self.buckets.items() if t + (now - at) * self.rate >= self.burst]
        for k in full or list(self.buckets)[: len(self.buckets) // 2]:
            del self.buckets[k]
