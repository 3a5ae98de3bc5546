"""What an agent does with what the broker sends: BATCHes of FRAMEs (the broker coalesces a
tick's messages per connection, issue 15 part 2) are split in order, and nothing a broker or a
man in the middle could send — a bad part inside a BATCH, a BATCH of garbage, loose garbage —
ends the agent's receive path or reaches a session it is not for (property-based)."""

from __future__ import annotations

import asyncio
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.agent import EdgeAgent
from routing.batch import encode_batch
from routing.protocol import MsgType, encode, msg


class Inbox:
    """Stands in for a Stream: records what the agent hands over."""

    wire_label = "fp16"

    def __init__(self) -> None:
        self.got: list = []

    def deliver(self, m, nbytes: int) -> None:
        self.got.append((m.type, m["pos"] if m.type is MsgType.FRAME else None))


def frame(sid: bytes, pos: int) -> list:
    return encode(msg(MsgType.FRAME, [np.zeros(4, np.float16)], session=sid, pos=pos, epoch=0, token=1))


_junk = st.lists(st.binary(max_size=40), min_size=1, max_size=3)
_part = st.one_of(st.tuples(st.just("frame"), st.integers(0, 2), st.integers(1, 1000)),
                  st.tuples(st.just("junk"), _junk))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(_part, min_size=1, max_size=12), loose=st.lists(_junk, max_size=3))
def test_batches_split_in_order_and_garbage_spoils_nothing(edge, parts, loose):
    async def run() -> None:
        agent = EdgeAgent(edge, "tcp://127.0.0.1:9")  # never sends: nothing to connect to
        try:
            sids = [os.urandom(16) for _ in range(3)]
            inboxes = [Inbox() for _ in sids]
            agent.sessions.update(zip(sids, inboxes, strict=True))
            encoded = [frame(sids[p[1]], p[2]) if p[0] == "frame" else p[1] for p in parts]
            agent._receive(encode_batch(encoded))
            for frames in loose:
                agent._receive(frames)
            agent._receive(encode_batch([encode_batch(encoded[:1]), *encoded]))  # a BATCH inside
            for k, box in enumerate(inboxes):
                want = [(MsgType.FRAME, p[2]) for p in parts if p[0] == "frame" and p[1] == k]
                assert box.got[:len(want)] == want  # the first BATCH: in order, nothing else
                assert box.got[len(want):] in ([], want)  # the nested one: its valid parts or none
        finally:
            await agent.close()

    asyncio.run(run())
