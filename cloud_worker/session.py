"""A session on the cloud worker: its tokens, KV, epoch, acknowledged position and ring.

Positions are indices in the full sequence (prompt + generated). FRAME(pos) carries the token
at `pos` and z of the state that predicted it; REQUEST(pos) asks for that state's per-layer
hidden states, kept in the ring until the agent acknowledges past `pos`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cloud_worker.batch_runner import KV, crop
from routing.modes import Mode
from routing.sampling import Sampling


@dataclass
class Session:
    id: bytes
    seq: list[int]  # prompt + generated (speculative included)
    n_prompt: int
    max_new_tokens: int
    mode: Mode
    window: int  # decode at most this many tokens past the last acknowledged position
    sampling: Sampling
    eos: int | None
    wire_layers: list[int]
    kv: KV | None = None
    kv_len: int = 0  # positions of `seq` in the KV
    epoch: int = 0
    acked: int = 0  # positions < acked are accepted by the agent
    waiting: int | None = None  # lockstep: the position whose TOKEN we wait for
    ring: dict[int, np.ndarray] = field(default_factory=dict)  # pos -> (k, d) fp16
    wasted: int = 0  # speculative tokens thrown away on rollback

    def __post_init__(self) -> None:
        self.acked = self.n_prompt

    @property
    def generated(self) -> int:
        return len(self.seq) - self.n_prompt

    @property
    def stopped(self) -> bool:
        """Reached max_new_tokens or EOS: decode no further unless a CORRECT rolls back."""
        return self.generated >= self.max_new_tokens or (
            self.generated > 0 and self.seq[-1] == self.eos)

    @property
    def runnable(self) -> bool:
        if self.waiting is not None or self.stopped:
            return False
        return self.mode.lockstep or len(self.seq) - self.acked < self.window

    def new_tokens(self) -> list[int]:
        return self.seq[self.kv_len :]

    def ack(self, pos: int) -> None:
        self.acked = max(self.acked, pos + 1)
        for p in [p for p in self.ring if p < self.acked]:
            del self.ring[p]

    def rollback(self, pos: int, token: int) -> None:
        """CORRECT(pos, token): drop everything from pos on, put `token` there, bump epoch."""
        self.wasted += len(self.seq) - pos
        del self.seq[pos:]
        self.seq.append(token)
        if self.kv is not None and self.kv_len > pos:
            self.kv = crop(self.kv, pos)
            self.kv_len = pos
        for p in [p for p in self.ring if p >= pos]:
            del self.ring[p]
        self.epoch += 1
        self.ack(pos)  # the agent corrects in order: everything up to pos is accepted
