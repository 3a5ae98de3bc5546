"""Stream replays (issue 8 semantics), against a scripted broker on a real ROUTER socket:
retryable errors and silence re-OPEN with prompt + accepted tokens after a jittered back-off,
BUSY is retried only during a replay, a re-fired position's REQUEST is counted once, and a
failure streak gives up at its attempt cap."""

from __future__ import annotations

import asyncio
import copy

import numpy as np
import pytest
import torch
import zmq
import zmq.asyncio

from edge_agent.agent import EdgeAgent, RetryPolicy, SessionError
from edge_agent.bundle import load_bundle
from routing.modes import Mode
from routing.protocol import decode, encode, msg
from routing.sampling import Sampling

FAST = RetryPolicy(first_delay_s=0.01, max_delay_s=0.04, max_attempts=4, deadline_s=10, silence_s=0.6)
SKIP = ("ACK", "HEARTBEAT", "CLOSE", "CORRECT")  # ignored unless waited for


@pytest.fixture(scope="module")
def edge(bundle_dir):
    e = load_bundle(bundle_dir)
    e.heads["add"].threshold = -1e9  # spa fires at every position
    return e


class Broker:
    """The broker's side of the wire, scripted by the test."""

    def __init__(self) -> None:
        self.sock = zmq.asyncio.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.peer = None

    async def expect(self, *types: str):
        while True:
            frames = await asyncio.wait_for(self.sock.recv_multipart(), 5)
            self.peer = frames[0]
            m = decode(frames[1:])
            if m.type.value in types:
                return m
            if m.type.value == "HEARTBEAT":  # a live broker answers: the path is alive
                await self.send(msg("HEARTBEAT", broker=b"scripted"))
            assert m.type.value in SKIP, f"unexpected {m.type} while waiting for {types}"

    async def send(self, m) -> None:
        await self.sock.send_multipart([self.peer] + encode(m))


def _z(seed: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(d).astype(np.float16) * 3


def _wire(seed: int, edge, d: int) -> np.ndarray:
    k = len(edge.wire_layers(Mode.SPA))
    return np.random.default_rng(seed + 100).standard_normal((k, d)).astype(np.float16)


def test_replays_count_each_request_once(edge):
    d = edge.d_model
    side = {p: edge.side_token(Mode.SPA, torch.from_numpy(_z(p, d)),
                               torch.from_numpy(_wire(p, edge, d)), Sampling(), p) for p in (3, 4, 5)}

    async def go():
        b = Broker()
        agent = EdgeAgent(edge, f"tcp://127.0.0.1:{b.port}")
        agent.retry = FAST
        stream = agent.generate([5, 6, 7], 3, "spa")
        consumer = asyncio.ensure_future(_drain(stream))
        try:
            o = await b.expect("OPEN")
            assert o["prompt"] == [5, 6, 7] and o["max_new_tokens"] == 3
            await b.send(msg("FRAME", [_z(3, d)], session=o.session, pos=3, epoch=0, token=11))
            r = await b.expect("REQUEST")
            assert (r.session, r["pos"], r["epoch"]) == (o.session, 3, 0)
            await b.send(msg("ERROR", code="WORKER_LOST", detail="gone", session=o.session))
            o2 = await b.expect("OPEN")  # the replay, under a new id
            assert o2.session != o.session and o2["prompt"] == [5, 6, 7]
            await b.send(msg("ERROR", code="BUSY", detail="full", session=o2.session))
            o3 = await b.expect("OPEN")  # BUSY during a replay is retried
            await b.send(msg("FRAME", [_z(3, d)], session=o3.session, pos=3, epoch=0, token=11))
            r = await b.expect("REQUEST")  # the same position fires again: sent, not counted
            await b.send(msg("HIDDEN", [_wire(3, edge, d)], session=o3.session, pos=3, epoch=0))
            # then silence: the worker may be dead without an ERROR
            o4 = await b.expect("OPEN")
            assert o4["prompt"] == [5, 6, 7] + stream.tokens[:1] and o4["max_new_tokens"] == 2
            await b.send(msg("ERROR", code="UNKNOWN_SESSION", detail="?", session=o4.session))
            o5 = await b.expect("OPEN")
            await b.send(msg("ERROR", code="BROKER_RESTARTED", detail="new broker"))  # no session
            o6 = await b.expect("OPEN")
            epoch = 0
            for pos in (4, 5):
                await b.send(msg("FRAME", [_z(pos, d)], session=o6.session, pos=pos, epoch=epoch,
                                 token=11))
                r = await b.expect("REQUEST")
                assert (r["pos"], r["epoch"]) == (pos, epoch)
                await b.send(msg("HIDDEN", [_wire(pos, edge, d)], session=o6.session, pos=pos,
                                 epoch=epoch))
                if side[pos] != 11:
                    c = await b.expect("CORRECT")
                    assert (c["pos"], c["token"]) == (pos, side[pos])
                    epoch += 1
            return await asyncio.wait_for(consumer, 5), [o.session, o2.session, o3.session,
                                                         o4.session, o5.session, o6.session]
        finally:
            consumer.cancel()
            await agent.close()
            b.sock.close(0)

    stream, sids = asyncio.run(asyncio.wait_for(go(), 30))
    assert len(set(sids)) == 6
    s = stream.stats
    assert s.replays == 5 and len(stream.tokens) == 3
    assert s.requests == 3  # positions 3, 4, 5: the repeat at 3 is not counted
    assert s.m == (3 + s.corrections) / 3
    assert stream.tokens == [side[p] for p in (3, 4, 5)] and stream.paths == ["side"] * 3


async def _drain(stream):
    async for _ in stream:
        pass
    return stream


def test_errors_that_are_not_retryable_and_the_attempt_cap(edge):
    async def go(first_code: str, then: str | None):
        b = Broker()
        agent = EdgeAgent(copy.copy(edge), f"tcp://127.0.0.1:{b.port}")
        agent.retry = FAST
        consumer = asyncio.ensure_future(_drain(agent.generate([5, 6], 2, "base")))
        try:
            o = await b.expect("OPEN")
            await b.send(msg("ERROR", code=first_code, detail="x", session=o.session))
            opens = 1
            while then is not None and not consumer.done():
                try:
                    o = await asyncio.wait_for(b.expect("OPEN"), 1)
                except TimeoutError:
                    break
                opens += 1
                await b.send(msg("ERROR", code=then, detail="y", session=o.session))
            with pytest.raises(SessionError) as err:
                await asyncio.wait_for(consumer, 5)
            return err.value.code, opens
        finally:
            await agent.close()
            b.sock.close(0)

    assert asyncio.run(go("BAD_POSITION", None)) == ("BAD_POSITION", 1)
    assert asyncio.run(go("BUSY", None)) == ("BUSY", 1)  # a first OPEN refused: not a replay
    # WORKER_LOST again and again: the first OPEN plus max_attempts replays, then it gives up
    assert asyncio.run(go("WORKER_LOST", "WORKER_LOST")) == ("WORKER_LOST", 1 + FAST.max_attempts)


def test_backoff_is_jittered_and_capped():
    p = RetryPolicy(first_delay_s=0.05, max_delay_s=2.0)
    for attempt, cap in [(1, 0.05), (2, 0.1), (3, 0.2), (7, 2.0), (12, 2.0)]:
        ds = [p.delay(attempt) for _ in range(50)]
        assert all(cap / 2 <= x <= cap for x in ds) and len(set(ds)) > 1


def test_device_runtime_imports_no_cloud_code():
    """The edge agent (and the bundle it loads) must not need the cloud worker's code."""
    import subprocess
    import sys

    code = ("import sys, edge_agent.agent, edge_agent.bundle, edge_agent.decoding; "
            "print(sorted(m for m in sys.modules if m.startswith(('cloud_worker', 'broker'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=True)
    assert out.stdout.strip() == "[]"
