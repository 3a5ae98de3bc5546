"""The point of SPA, measured: mean inter-token latency of `spa` vs `lst` over an emulated WAN
(a delay proxy adding a fixed round trip between agents and broker), one run, same prompts.
The expected ratio is about M_spa (plus the worker's step time).

    .venv/bin/python benchmarks/wan_latency.py [--rtt-ms 20] [--sessions 8] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics

from common import models, prompts
from delay_proxy import DelayProxy

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle
from routing import aio
from spa.stack import LocalStack, free_port


async def run_mode(agent: EdgeAgent, ps: list[str], tokens: int, mode: str):
    import asyncio

    async def one(p):
        s = agent.generate(p, tokens, mode)
        async for _ in s:
            pass
        return s.stats

    return await asyncio.gather(*(one(p) for p in ps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rtt-ms", type=float, default=20.0)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    backbone, bundle = models()
    edge = load_bundle(bundle)
    edge.eos_token_id = -1  # equal lengths
    ps = prompts(a.sessions)
    with LocalStack(backbone, workers=1) as stack:
        async def go():
            port = free_port()
            proxy = DelayProxy(port, "127.0.0.1", stack.agent_port, a.rtt_ms / 2000)
            await proxy.start()
            agent = EdgeAgent(edge, f"tcp://127.0.0.1:{port}", keys=stack.agent_keys)
            await run_mode(agent, ps[:2], 4, "spa")  # warm-up, connection set up
            res = {"spa": [], "lst": []}
            for _ in range(a.repeats):
                for mode in res:
                    res[mode] += await run_mode(agent, ps, a.tokens, mode)
            await agent.close()
            await proxy.close()
            return res

        res = aio.run(go())
    print(f"emulated round trip {a.rtt_ms:.0f} ms, {a.sessions} concurrent sessions × {a.tokens} tokens, "
          f"{a.repeats} repeats")
    itl = {}
    for mode, stats in res.items():
        gaps = [g for s in stats for g in s.inter_token_s]
        m = sum(s.blocking for s in stats) / sum(s.tokens for s in stats)
        itl[mode] = statistics.fmean(gaps)
        print(f"{mode:>4}: mean ITL {itl[mode] * 1000:7.2f} ms  median {statistics.median(gaps) * 1000:7.2f} ms"
              f"  M {m:.3f}  TTFT median {statistics.median(s.ttft_s for s in stats) * 1000:.1f} ms")
    print(f"ratio spa/lst mean ITL: {itl['spa'] / itl['lst']:.3f}")


if __name__ == "__main__":
    main()
