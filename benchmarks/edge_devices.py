"""How many simulated spa devices one process on one core carries (issue 16 item 4).

N devices in this process (one EdgeAgent, one socket, the edge compute batched across them and
off the event loop), each generating spa sessions back to back against a local stack (broker +
one worker, tiny backbone). The process is pinned to one core after the stack has started (the
stack keeps every core). Each N runs twice, interleaved:

- `real`: the device's own classifier, side network and lm_head (`EdgeCompute`);
- `free`: the same answers looked up from the `real` run (keyed by z's bytes): the same messages
  and M, the edge's compute costing nothing. A miss (z differs in its last bit) is computed.

Printed per N: sessions/s, tokens/s, this process's CPU (share of its one core), M, and real as
a share of free. Goal: >= 200 devices at >= 90%.

    .venv/bin/python benchmarks/edge_devices.py [--devices 50,100,200,400] [--seconds 20]
    .venv/bin/python benchmarks/edge_devices.py --smoke     # seconds: the test suite runs it
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from common import models, prompts

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle
from edge_agent.edge_batch import EdgeCompute
from spa.stack import LocalStack


class FreeCompute(EdgeCompute):
    """The answers `real` gave, looked up by (kind, mode, z bytes, pos): no compute."""

    def __init__(self, edge, book: dict) -> None:
        super().__init__(edge, inline=True)
        self.book, self.misses = book, 0

    def gate(self, mode, z):
        if mode.gate != "classifier":
            return super().gate(mode, z)
        hit = self.book.get(("gate", mode, z.tobytes()))
        if hit is None:
            self.misses += 1
            return super().gate(mode, z)
        return hit

    def side(self, mode, z, wire, sampling, pos):
        hit = self.book.get(("side", mode, z.tobytes(), pos))
        if hit is None:
            self.misses += 1
            return super().side(mode, z, wire, sampling, pos)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(hit)
        return fut


class RecordingCompute(EdgeCompute):
    """EdgeCompute that writes every answer into `book`."""

    def __init__(self, edge, book: dict) -> None:
        super().__init__(edge)
        self.book = book

    def _compute(self, asks):
        answers, seconds = super()._compute(asks)
        for a, ans in zip(asks, answers, strict=True):
            key = ("gate", a.mode, a.z.tobytes()) if a.kind == "gate" else (
                "side", a.mode, a.z.tobytes(), a.pos)
            self.book[key] = ans
        return answers, seconds


async def load(agent: EdgeAgent, texts: list[str], devices: int, seconds: float,
               max_new: int) -> dict:
    stop = time.monotonic() + seconds
    sessions = tokens = blocking = 0

    async def device(k: int) -> None:
        nonlocal sessions, tokens, blocking
        n = 0
        while time.monotonic() < stop:
            s = agent.generate(texts[(k + n) % len(texts)], max_new, "spa")
            n += 1
            async for _ in s:
                pass
            sessions += 1
            tokens += s.stats.tokens
            blocking += s.stats.blocking

    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(device(k) for k in range(devices)))
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    return {"sessions_s": sessions / wall, "tokens_s": tokens / wall, "cpu": cpu / wall,
            "m": blocking / max(1, tokens), "sessions": sessions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="50,100,200,400")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tokens", type=int, default=32, help="max new tokens per session")
    ap.add_argument("--smoke", action="store_true", help="8 devices for 2 s: seconds in all")
    a = ap.parse_args()
    if a.smoke:
        a.devices, a.seconds, a.tokens = "8", 2.0, 12
    counts = [int(x) for x in a.devices.split(",")]
    backbone, bundle = models()
    edge = load_bundle(bundle)
    texts = prompts(32)
    import torch

    torch.set_num_threads(1)
    cap = str(max(counts) + 16)
    stack = LocalStack(backbone, workers=1, max_sessions=int(cap),
                       broker_args=("--max-agent-sessions", cap, "--queue-per-key", cap)).start(timeout=600)
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # this process: one core

        async def run() -> list[tuple]:
            rows = []
            for n in counts:
                book: dict = {}
                rec = RecordingCompute(edge, book)
                agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys, compute=rec)
                await load(agent, texts, min(n, 8), min(2.0, a.seconds), a.tokens)  # warm-up
                real = await load(agent, texts, n, a.seconds, a.tokens)
                await agent.close()
                rec.close()
                free_compute = FreeCompute(edge, book)
                agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys,
                                  compute=free_compute)
                free = await load(agent, texts, n, a.seconds, a.tokens)
                await agent.close()
                rows.append((n, real, free, free_compute.misses, rec.rows / max(1, rec.batches)))
            return rows

        rows = asyncio.run(run())
    finally:
        stack.stop()
    print(f"spa devices in one process on one core; tiny backbone, {a.tokens} tokens a session, "
          f"{a.seconds:g} s per run")
    print(f"{'devices':>7} {'edge':>5} {'sessions/s':>10} {'tokens/s':>9} {'CPU':>5} {'M':>5} "
          f"{'real/free':>9} {'rows/batch':>10}")
    for n, real, free, misses, per_batch in rows:
        share = real["tokens_s"] / free["tokens_s"] if free["tokens_s"] else float("nan")
        print(f"{n:>7} {'real':>5} {real['sessions_s']:>10.1f} {real['tokens_s']:>9.0f} "
              f"{real['cpu']:>5.0%} {real['m']:>5.2f} {share:>9.0%} {per_batch:>10.1f}")
        print(f"{n:>7} {'free':>5} {free['sessions_s']:>10.1f} {free['tokens_s']:>9.0f} "
              f"{free['cpu']:>5.0%} {free['m']:>5.2f} {'':>9} {f'{misses} misses':>10}")


if __name__ == "__main__":
    main()
