"""Paged KV blocks (vLLM's PagedAttention bookkeeping, nano-vllm's `BlockManager` shape).

The KV cache is one tensor of `num_blocks` pages of `block_size` token slots, allocated once.
A session owns a block table (page ids, in order); token `t` of the session lives in slot
`table[t // block_size] * block_size + t % block_size`. Admission reserves a session's worst case
(prompt + max_new_tokens) so a running session never runs out of pages: a worker that is full
answers BUSY at OPEN instead of failing mid-generation. Rolling back is a length change on the
session; its pages stay reserved for it and are overwritten as it decodes again.

Block 0 is never handed out: slot 0 stays zero (what padded reads see), slot 1 takes the writes of
padded rows in a captured CUDA graph.
"""

from __future__ import annotations

from collections import deque

import numpy as np

ZERO_SLOT = 0  # read by padded attention positions; never written
SCRATCH_SLOT = 1  # written by padded rows of a captured decode step


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"KV cache of {num_blocks} blocks: need at least 2")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_ids: deque[int] = deque(range(1, num_blocks))  # block 0: zero / scratch page
        self.reserved = 0  # blocks promised to admitted sessions (allocated or not)

    @property
    def capacity_tokens(self) -> int:
        """Tokens that fit in the cache (all pages but the scratch page)."""
        return (self.num_blocks - 1) * self.block_size

    @property
    def free_tokens(self) -> int:
        """Tokens not yet promised to any session: the admission budget."""
        return (self.num_blocks - 1 - self.reserved) * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def can_admit(self, tokens: int) -> bool:
        return self.reserved + self.blocks_for(tokens) <= self.num_blocks - 1

    def admit(self, table: list[int], tokens: int) -> int:
        """Reserve the pages for a session of at most `tokens` tokens; returns the reservation."""
        n = self.blocks_for(tokens)
        if self.reserved + n > self.num_blocks - 1:
            raise MemoryError(f"KV budget: {self.free_tokens} tokens free, {tokens} asked")
        assert not table
        self.reserved += n
        return n

    def ensure(self, table: list[int], reservation: int, tokens: int) -> None:
        """Grow `table` to hold `tokens` tokens (within the session's reservation)."""
        need = self.blocks_for(tokens)
        if need > reservation:
            raise MemoryError(f"session needs {need} blocks but reserved {reservation}")
        while len(table) < need:
            table.append(self.free_ids.popleft())

    def free(self, table: list[int], reservation: int) -> None:
        """Return a session's pages and its reservation."""
        self.free_ids.extend(table)
        table.clear()
        self.reserved -= reservation

    def slots(self, table: list[int], start: int, n: int) -> list[int]:
        """Cache slots of tokens start … start+n-1 of a session."""
        bs = self.block_size
        return [table[t // bs] * bs + t % bs for t in range(start, start + n)]

    def all_slots(self, table: list[int], n: int) -> np.ndarray:
        """Cache slots of tokens 0 … n-1 of a session, as an int64 array."""
        t = np.asarray(table, dtype=np.int64)
        return (t[:, None] * self.block_size + np.arange(self.block_size)).reshape(-1)[:n]
