"""Counting M: blocking edge↔cloud transmissions per generated token (DESIGN.md §4).

M counts the exchanges the token stream waits on: each REQUEST, each CORRECT, each lockstep
TOKEN, divided by generated tokens. Side usage and corrections are reported beside it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Transmissions:
    tokens: int = 0  # generated tokens (EOS included)
    side_used: int = 0  # positions where the side network produced the token's logits
    requests: int = 0  # REQUEST → HIDDEN exchanges
    corrections: int = 0  # CORRECT messages (side token ≠ backbone token)
    lockstep: int = 0  # lockstep TOKEN messages (lst, full)
    wasted: int = 0  # speculative tokens the worker decoded and threw away on rollback

    @property
    def blocking(self) -> int:
        return self.requests + self.corrections + self.lockstep

    @property
    def m(self) -> float:
        return self.blocking / self.tokens if self.tokens else 0.0

    @property
    def side_rate(self) -> float:
        return self.side_used / self.tokens if self.tokens else 0.0

    @property
    def correction_rate(self) -> float:
        return self.corrections / self.tokens if self.tokens else 0.0

    def __iadd__(self, other: Transmissions) -> Transmissions:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)
        return self

    def to_dict(self) -> dict:
        return {**asdict(self), "m": self.m, "side_rate": self.side_rate,
                "correction_rate": self.correction_rate}
