"""A session on the cloud worker: its tokens, KV length and pages, epoch, acknowledged position
and ring. The session owns its state changes; the scheduler only decides who runs.

Positions are indices in the full sequence (prompt + generated). FRAME(pos) carries the token
at `pos` and z of the state that predicted it; REQUEST(pos) asks for that state's per-layer
hidden states, kept in the ring (on the model's device) until the agent acknowledges past `pos`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

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
    kv_len: int = 0  # positions of `seq` whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)  # KV pages, in order
    reservation: int = 0  # pages promised at admission
    epoch: int = 0
    acked: int = 0  # positions < acked are accepted by the agent
    waiting: int | None = None  # lockstep: the position whose TOKEN we wait for
    ring: dict[int, torch.Tensor] = field(default_factory=dict)  # pos -> (k, d) fp16, on device
    wasted: int = 0  # speculative tokens thrown away on rollback
    last_run: int = -1  # the scheduler step this session last ran in (fairness)
    waited: int = 0  # steps it has been runnable but not scheduled (fairness report)
    wait_since: float = 0.0  # monotonic time its current wait began

    def __post_init__(self) -> None:
        self.acked = self.n_prompt

    @property
    def max_len(self) -> int:
        """The longest this session's sequence can get (its KV reservation)."""
        return self.n_prompt + self.max_new_tokens

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

    @property
    def gated(self) -> bool:
        """Decodes ahead and keeps per-layer states in the ring for REQUESTs."""
        return bool(self.wire_layers) and not self.mode.lockstep

    @property
    def ships_hidden(self) -> bool:
        """Lockstep: every FRAME carries the wire layers."""
        return bool(self.wire_layers) and self.mode.lockstep

    def new_tokens(self) -> list[int]:
        return self.seq[self.kv_len :]

    # ------------------------------------------------------------- state changes
    def advance(self, n: int) -> bool:
        """`n` more tokens went into the KV; True when the row reached its last token (a FRAME)."""
        self.kv_len += n
        return self.kv_len == len(self.seq)

    def emit(self, token: int, pos: int) -> None:
        """After a FRAME for `pos`: decode on (gated) or wait for the agent's TOKEN (lockstep)."""
        if self.mode.lockstep:
            self.waiting = pos
        else:
            self.seq.append(token)

    def take_token(self, pos: int, token: int) -> None:
        """Lockstep TOKEN(pos, token): the agent's choice goes into the sequence."""
        self.seq.append(token)
        self.waiting = None
        self.ack(pos)

    def ack(self, pos: int) -> None:
        self.acked = max(self.acked, pos + 1)
        for p in [p for p in self.ring if p < self.acked]:
            del self.ring[p]

    def rollback(self, pos: int, token: int) -> None:
        """CORRECT(pos, token): drop everything from pos on, put `token` there, bump epoch.
        The KV keeps its pages: rolling back is a length change."""
        self.wasted += len(self.seq) - pos
        del self.seq[pos:]
        self.seq.append(token)
        self.kv_len = min(self.kv_len, pos)
        for p in [p for p in self.ring if p >= pos]:
            del self.ring[p]
        self.epoch += 1
        self.ack(pos)  # the agent corrects in order: everything up to pos is accepted
