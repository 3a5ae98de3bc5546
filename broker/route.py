"""A placed session's route: who owns it, where it lives, and what the broker counts for it."""

from __future__ import annotations

from dataclasses import dataclass

from broker.admission import Waiting


@dataclass
class Route:
    owner: bytes  # the authenticated key (or plaintext routing id) that opened the session
    agent: bytes  # routing id to answer on (moves when the owner reconnects)
    worker: bytes
    progress: float  # last message of this session either way (the lease's clock)
    beat: float  # last heartbeat of its agent listing it (renews only while nobody waits)
    opened: Waiting | None = None  # the OPEN, kept until the worker answers (re-queued on BUSY)
    requests: int = 0  # REQUESTs forwarded and not yet answered by a HIDDEN
    frames: int = 0  # FRAMEs forwarded to the agent
    hiddens: int = 0  # HIDDENs forwarded to the agent
