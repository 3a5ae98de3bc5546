"""A lost path heals (issue 20): between the agent and a live stack (broker + worker processes)
sits an in-process asyncio TCP proxy that can turn into a black hole — every current connection
kept open, every byte dropped, as a phone changing networks or an expired NAT mapping does — or
reset every connection. The agent notices within a few seconds (its heartbeats go unanswered),
reconnects on a new socket and replays; a reset costs about one heartbeat, not the silence
timeout. Every session still equals the reference generator token for token, M included."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest

from edge_agent.agent import AgentConfig, EdgeAgent
from lab.reference import ReferenceGenerator
from spa.stack import LocalStack

MAX_NEW = 40


class Proxy:
    """127.0.0.1:port → target. `blackhole()`: current connections stay open and every byte is
    dropped (new connections pass). `reset()`: current connections are aborted with RST."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.conns: list[dict] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, down_r, down_w) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            down_w.close()
            return
        c = {"dead": False, "writers": (down_w, up_w)}
        self.conns.append(c)
        await asyncio.gather(self._pump(down_r, up_w, c), self._pump(up_r, down_w, c),
                             return_exceptions=True)

    @staticmethod
    async def _pump(r, w, c) -> None:
        while data := await r.read(1 << 16):
            if not c["dead"]:
                w.write(data)
                await w.drain()
        if not c["dead"]:
            w.close()

    def blackhole(self) -> None:
        for c in self.conns:
            c["dead"] = True
        self.conns = []

    def reset(self) -> None:
        for c in self.conns:
            for w in c["writers"]:
                sock = w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.transport.abort()
        self.conns = []

    def close(self) -> None:
        self.blackhole()
        if self.server is not None:
            self.server.close()


@pytest.fixture(scope="module")
def stack(backbone_dir, tmp_path_factory):
    with LocalStack(backbone_dir, workers=1, log_dir=tmp_path_factory.mktemp("path")) as s:
        yield s


async def _through_fault(stack, edge, prompts, fault: str):
    """Sessions through the proxy; after 40 pieces the fault; (streams, gaps, agent, t_fault)."""
    proxy = await Proxy(stack.agent_port).start()
    agent = EdgeAgent(edge, f"tcp://127.0.0.1:{proxy.port}", keys=stack.agent_keys, cfg=AgentConfig())
    streams = [agent.generate(p, MAX_NEW, "spa") for p in prompts]
    seen, t_fault, stamps = [0], [0.0], []

    async def consume(s):
        async for _ in s:
            stamps.append(time.monotonic())
            seen[0] += 1
            if seen[0] == 40:
                t_fault[0] = time.monotonic()
                proxy.blackhole() if fault == "blackhole" else proxy.reset()
        return s

    try:
        done = await asyncio.wait_for(asyncio.gather(*(consume(s) for s in streams)), 60)
        after = agent.generate(prompts[0], MAX_NEW, "spa")  # the same agent serves on
        await consume(after)
        return done + [after], stamps, agent, t_fault[0]
    finally:
        await agent.close()
        proxy.close()


def _stall(stamps: list[float], t_fault: float) -> float:
    """The longest wait for a piece after the fault."""
    stamps = sorted(stamps)
    return max(b - a for a, b in zip(stamps, stamps[1:], strict=False) if b > t_fault)


def _check(backbone, edge, prompts, streams):
    ref = ReferenceGenerator(backbone, edge)
    for p, s in zip(prompts + prompts[:1], streams, strict=True):
        r = ref.generate(p, MAX_NEW, "spa")
        assert s.tokens == r.tokens and s.paths == r.paths
        assert s.stats.m == r.stats.m


def test_black_hole_is_noticed_and_healed(stack, backbone, edge, prompts):
    streams, stamps, agent, t_fault = asyncio.run(_through_fault(stack, edge, prompts[:8], "blackhole"))
    _check(backbone, edge, prompts[:8], streams)
    assert sum(s.stats.replays for s in streams) > 0
    # ZeroMQ's heartbeat drops the dead connection (or the agent's own backstop, a new socket):
    # a few seconds, not the silence timeout (before: every session TIMEOUT at 41 s)
    assert _stall(stamps, t_fault) < AgentConfig().dead_after_s + 3.0, _stall(stamps, t_fault)


def test_reset_costs_about_a_heartbeat(stack, backbone, edge, prompts):
    streams, stamps, agent, t_fault = asyncio.run(_through_fault(stack, edge, prompts[:8], "reset"))
    _check(backbone, edge, prompts[:8], streams)
    assert sum(s.stats.replays for s in streams) > 0
    assert _stall(stamps, t_fault) < AgentConfig().heartbeat_s + 1.5, _stall(stamps, t_fault)  # before: 10 s
