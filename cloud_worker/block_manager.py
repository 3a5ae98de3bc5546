"""Paged KV blocks (vLLM's PagedAttention bookkeeping, nano-vllm's `BlockManager` shape).

The KV cache is one tensor of `num_blocks` pages of `block_size` token slots, allocated once.
A session holds a block table (page ids, in order); token `t` of the session lives in slot
`table[t // block_size] * block_size + t % block_size`. Admission reserves a session's worst case
(prompt + max_new_tokens) so a running session never runs out of pages: a worker that is full
answers BUSY at OPEN instead of failing mid-generation. Rolling back is a length change on the
session; its pages stay reserved for it and are overwritten as it decodes again.

The scheduler owns the block manager (admission); the manager owns the free pages and the count
of reserved ones, the session its own table (`Session.reserve/grow/release`). Free pages are a
stack (LIFO): a new session gets the pages the last one gave back, so the cache memory the
process touches stays its working set instead of creeping over the whole (lazily paged) tensor.

Block 0 is never handed out: slot 0 stays zero (what padded reads see), slot 1 takes the writes of
padded rows in a captured CUDA graph.
"""

from __future__ import annotations

import numpy as np

ZERO_SLOT = 0  # read by padded attention positions; never written
SCRATCH_SLOT = 1  # written by padded rows of a captured decode step


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 2:
            raise ValueError(f"KV cache of {num_blocks} blocks: need at least 2")
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.free_ids: list[int] = list(range(num_blocks - 1, 0, -1))  # a stack; pops 1, 2, 3, …
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

    def reserve(self, tokens: int) -> int:
        """Promise the pages of a session of at most `tokens` tokens; returns how many."""
        n = self.blocks_for(tokens)
        if self.reserved + n > self.num_blocks - 1:
            raise MemoryError(f"KV budget: {self.free_tokens} tokens free, {tokens} asked")
        self.reserved += n
        return n

    def take(self, n: int) -> list[int]:
        """`n` free pages, the most recently given back first (within a reservation)."""
        if n > len(self.free_ids):
            raise MemoryError(f"{n} pages asked, {len(self.free_ids)} free")  # a reservation bug
        taken = self.free_ids[-n:][::-1] if n else []
        del self.free_ids[len(self.free_ids) - n :]
        return taken

    def give_back(self, pages: list[int], reservation: int) -> None:
        """A session's pages and its reservation, returned; its first page is the next taken."""
        self.free_ids.extend(reversed(pages))
        self.reserved -= reservation


def token_slots(table: list[int], block_size: int, start: int, n: int) -> list[int]:
    """Cache slots of tokens start … start+n-1 of a session with this block table."""
    return [table[t // block_size] * block_size + t % block_size for t in range(start, start + n)]


def table_slots(table: list[int], block_size: int, n: int) -> np.ndarray:
    """Cache slots of tokens 0 … n-1 of a session with this block table, as an int64 array."""
    t = np.asarray(table, dtype=np.int64)
    return (t[:, None] * block_size + np.arange(block_size)).reshape(-1)[:n]
