"""The broker's admission queue: OPENs that found every fitting worker full wait here.

Bounded three ways (count, bytes, per key) and in time (`queue_wait_s`); fair across agent keys
(the next OPEN placed is the head of the key that holds the fewest sessions, ties to the key
that has waited longest), FIFO within a key. BUSY is answered only when the queue itself is
full or an OPEN waited too long. The wait is part of the session's time to first token: the
agent's clock starts at its OPEN.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Waiting:
    """One queued OPEN: its frames as received (forwarded unchanged once placed)."""

    sid: bytes
    owner: bytes
    agent: bytes
    fingerprint: str
    frames: list
    size: int
    since: float
    refusals: int = 0  # times a worker refused it (BUSY) after the broker placed it


@dataclass
class AdmissionQueue:
    max_total: int
    max_per_key: int
    max_bytes: int
    per_key: OrderedDict[bytes, deque[Waiting]] = field(default_factory=OrderedDict)
    by_sid: dict[bytes, Waiting] = field(default_factory=dict)
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.by_sid)

    def __contains__(self, sid: bytes) -> bool:
        return sid in self.by_sid

    def waiting(self, owner: bytes) -> int:
        return len(self.per_key.get(owner, ()))

    def full_for(self, owner: bytes, size: int) -> str | None:
        """Why an OPEN of `size` bytes from `owner` cannot wait, or None when it can."""
        if len(self.by_sid) >= self.max_total:
            return f"the admission queue is full ({len(self.by_sid)} OPENs waiting)"
        if self.waiting(owner) >= self.max_per_key:
            return f"this agent has {self.waiting(owner)} OPENs waiting (the limit is {self.max_per_key})"
        if self.nbytes + size > self.max_bytes:
            return f"the admission queue holds {self.nbytes} bytes of OPENs (the limit is {self.max_bytes})"
        return None

    def push(self, w: Waiting, front: bool = False) -> None:
        """Queue `w` (at the head of its key's line when a worker refused it after placement)."""
        line = self.per_key.setdefault(w.owner, deque())
        line.appendleft(w) if front else line.append(w)
        self.by_sid[w.sid] = w
        self.nbytes += w.size

    def remove(self, sid: bytes) -> Waiting | None:
        w = self.by_sid.pop(sid, None)
        if w is not None:
            line = self.per_key[w.owner]
            line.remove(w)
            if not line:
                del self.per_key[w.owner]
            self.nbytes -= w.size
        return w

    def drop_owner(self, owner: bytes) -> list[Waiting]:
        return [self.remove(w.sid) for w in list(self.per_key.get(owner, ()))]

    def expired(self, deadline: float) -> list[Waiting]:
        """Every OPEN queued before `deadline` (removed)."""
        old = [w for line in self.per_key.values() for w in line if w.since < deadline]
        return [self.remove(w.sid) for w in old]

    def order(self, held: Callable[[bytes], int]) -> Iterator[Waiting]:
        """Heads of the keys' lines, fairest first: fewest sessions `held`, then longest wait."""
        heads = [line[0] for line in self.per_key.values()]
        yield from sorted(heads, key=lambda w: (held(w.owner), w.since))

    def place(self, held: Callable[[bytes], int], try_place: Callable[[Waiting], bool]) -> int:
        """Place queued OPENs while `try_place` finds room (it returns False when none fits the
        OPEN's backbone: that key's line waits; others may still fit). Returns how many."""
        placed = 0
        while self.by_sid:
            for w in self.order(held):
                if try_place(w):
                    self.remove(w.sid)
                    placed += 1
                    break
            else:
                return placed
        return placed
