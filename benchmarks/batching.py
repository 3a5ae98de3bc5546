"""Continuous batching: aggregate tokens/s with 16 concurrent sessions vs 1, one run.

    .venv/bin/python benchmarks/batching.py [--sessions 16] [--tokens 64] [--repeats 3] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import median, models, prompts

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle
from routing import aio
from spa.stack import LocalStack


async def aggregate(agent: EdgeAgent, ps: list[str], tokens: int, mode: str) -> float:
    async def one(p):
        s = agent.generate(p, tokens, mode, window=tokens)
        async for _ in s:
            pass
        return s.stats.tokens

    t0 = time.perf_counter()
    n = sum(await asyncio.gather(*(one(p) for p in ps)))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="base")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 sessions of 4 tokens, once")
    a = ap.parse_args()
    if a.smoke:
        a.sessions, a.tokens, a.repeats = 2, 4, 1
    backbone, bundle = models()
    edge = load_bundle(bundle)
    edge.eos_token_id = None  # no EOS: every session runs to --tokens, equal work per session
    ps = prompts(a.sessions)
    with LocalStack(backbone, workers=1) as stack:
        async def run():
            agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)
            await aggregate(agent, ps[:2], 8, a.mode)  # warm-up
            one, many = [], []
            for _ in range(a.repeats):  # interleaved, so drift hits both alike
                one.append(await aggregate(agent, ps[:1], a.tokens, a.mode))
                many.append(await aggregate(agent, ps, a.tokens, a.mode))
            await agent.close()
            return one, many

        one, many = aio.run(run())
    print(f"mode={a.mode} tokens/session={a.tokens} repeats={a.repeats}")
    print(f"1 session:  median {median(one):8.1f} tokens/s  {[round(x) for x in one]}")
    print(f"{a.sessions} sessions: median {median(many):8.1f} tokens/s  {[round(x) for x in many]}")
    print(f"ratio: {median(many) / median(one):.2f}x")


if __name__ == "__main__":
    main()
