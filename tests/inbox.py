"""What a raw agent socket receives, one message at a time: the broker coalesces a tick's FRAMEs
and HIDDENs for one connection into a BATCH, which a protocol-level test client splits as
`EdgeAgent` does."""

from __future__ import annotations

from collections import deque

import zmq

from routing.batch import split_batch
from routing.protocol import Message, MsgType, decode

_waiting: dict[zmq.Socket, deque[Message]] = {}


def next_message(sock: zmq.Socket, timeout_ms: int = 5000, tensors: bool = True) -> Message:
    """The next message for this socket (a BATCH's parts in order); AssertionError if none comes."""
    q = _waiting.setdefault(sock, deque())
    if not q:
        assert sock.poll(timeout_ms), "no answer from the broker"
        frames = sock.recv_multipart()
        m = decode(frames, tensors=tensors)
        q.extend(decode(p, tensors=tensors) for p in split_batch(m, frames)) if m.type is MsgType.BATCH \
            else q.append(m)
    return q.popleft()


def received(sock: zmq.Socket, timeout_ms: int = 2000, quiet_ms: int = 300) -> list[Message]:
    """Every session message a raw socket gets (BATCHes split, beats skipped): waits up to
    `timeout_ms` for the first, then until `quiet_ms` pass with nothing."""
    out: list[Message] = []
    while sock.poll(timeout_ms if not out else quiet_ms):
        frames = sock.recv_multipart()
        m = decode(frames, tensors=False)
        for part in split_batch(m, frames) if m.type is MsgType.BATCH else [frames]:
            m = decode(part, tensors=False)
            if m.type is not MsgType.HEARTBEAT:
                out.append(m)
    return out
