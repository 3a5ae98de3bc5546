"""A session on the cloud worker: its tokens, KV length and pages, epoch, acknowledged position,
ring, turn-taking and idle lease.

One writer per piece of state: every field of a Session is changed only by the methods below.
The scheduler decides who runs and calls them (it owns the block manager, whose free pages these
methods take and give back); the model runner only reads sessions.

Positions are indices in the full sequence (prompt + generated). FRAME(pos) carries the token
at `pos` and z of the state that predicted it; REQUEST(pos) asks for that state's per-layer
hidden states, kept in the ring (on the model's device) until the agent acknowledges past `pos`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cloud_worker.block_manager import BlockManager
from routing.modes import Mode
from routing.quant import WireDtype
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
    wire: WireDtype = WireDtype.FP16  # how its z and hidden states travel (routing/quant.py)
    grid: torch.Tensor | None = None  # (len(wire_layers) + 1, d) float32 on device: quantised wires
    kv_len: int = 0  # positions of `seq` whose K/V are in the cache
    block_table: list[int] = field(default_factory=list)  # KV pages, in order
    reservation: int = 0  # pages promised at admission
    epoch: int = 0
    acked: int = 0  # positions < acked are accepted by the agent
    waiting: int | None = None  # lockstep: the position whose TOKEN we wait for
    ring: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # pos -> wire tensors of (k, d), on device
    wasted: int = 0  # speculative tokens thrown away on rollback
    last_run: int = -1  # the scheduler step this session last ran in (fairness)
    waited: int = 0  # steps it has been runnable but not scheduled (fairness report)
    wait_since: float = 0.0  # monotonic time its current wait began
    heard_at: float = 0.0  # monotonic time of its agent's latest message (idle lease)

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
    def ships_hidden(self) -> bool:
        """Lockstep: every FRAME carries the wire layers."""
        return bool(self.wire_layers) and self.mode.lockstep

    # ------------------------------------------------------------- KV pages
    def reserve(self, blocks: BlockManager) -> None:
        """Admission: promise this session its worst case (max_len) of pages."""
        assert not self.block_table and not self.reservation
        self.reservation = blocks.reserve(self.max_len)

    def grow(self, blocks: BlockManager, tokens: int) -> None:
        """Pages for `tokens` tokens in the KV (within the reservation)."""
        need = blocks.blocks_for(tokens)
        if need > self.reservation:
            raise MemoryError(f"session needs {need} blocks but reserved {self.reservation}")
        if need > len(self.block_table):
            self.block_table.extend(blocks.take(need - len(self.block_table)))

    def release(self, blocks: BlockManager) -> None:
        """Closing: pages and reservation back to the manager, ring dropped."""
        blocks.give_back(self.block_table, self.reservation)
        self.block_table, self.reservation = [], 0
        self.ring.clear()

    # ------------------------------------------------------------- turns and lease
    def heard(self, now: float) -> None:
        """Its agent sent a message: the idle lease starts again."""
        self.heard_at = now

    def passed_over(self, now: float) -> None:
        """Runnable but not scheduled this step."""
        if not self.waited:
            self.wait_since = now
        self.waited += 1

    def scheduled(self, now: float) -> tuple[int, float]:
        """Runs this step: returns (steps, seconds) it waited for this turn."""
        waited = (self.waited, now - self.wait_since if self.waited else 0.0)
        self.waited = 0
        return waited

    # ------------------------------------------------------------- the step's results
    def advance(self, n: int, step: int) -> bool:
        """`n` more tokens went into the KV in scheduler step `step`; True when the row reached
        its last token (a FRAME)."""
        self.kv_len += n
        self.last_run = step
        return self.kv_len == len(self.seq)

    def emit(self, token: int, pos: int, states: list[torch.Tensor] | None = None) -> None:
        """After a FRAME for `pos`: keep its per-layer `states` for REQUESTs (gated), then decode
        on (gated) or wait for the agent's TOKEN (lockstep)."""
        if states is not None:
            self.ring[pos] = states
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
