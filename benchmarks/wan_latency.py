"""The paper's latency table on a network path: every mode under emulated round trips (a delay
proxy between the agents and the broker), one run, the same prompts and lengths for all.

Per RTT and mode: mean and p99 inter-token latency, mean and p99 end-to-end latency of a
session, M. Each blocking transmission waits one round trip, so ITL ≈ step + M·RTT: the slope
of mean ITL against RTT, fitted over the RTTs, is set beside M (`slope/M` near 1 means the
round trips are the whole cost), and spa's advantage over full (full's ITL / spa's) is shown
per RTT: it grows with the RTT when spa's M is below full's.

    .venv/bin/python benchmarks/wan_latency.py [--rtts 0,20,80] [--modes base,lst,full,choice,spa]
        [--sessions 4] [--tokens 24] [--repeats 1] [--backbone DIR --bundle DIR] [--json OUT]
    .venv/bin/python benchmarks/wan_latency.py --smoke   # seconds: RTT 0 and 20, 4 tokens
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
from common import models, prompts
from delay_proxy import DelayProxy

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle
from routing import aio
from routing.modes import Mode, parse_modes
from spa.stack import LocalStack, free_port


async def run_mode(agent: EdgeAgent, ps: list[str], tokens: int, mode: Mode) -> list[tuple]:
    """Sessions at once; per session (stats, end-to-end seconds)."""
    async def one(p):
        s = agent.generate(p, tokens, mode)
        t = asyncio.get_running_loop().time()
        async for _ in s:
            pass
        return s.stats, asyncio.get_running_loop().time() - t

    return await asyncio.gather(*(one(p) for p in ps))


def figures(runs: list[tuple]) -> dict:
    gaps = [g for s, _ in runs for g in s.inter_token_s]
    e2e = [t for _, t in runs]
    tokens = sum(s.tokens for s, _ in runs)
    return {"itl_mean_ms": float(np.mean(gaps)) * 1000, "itl_p99_ms": float(np.percentile(gaps, 99)) * 1000,
            "e2e_mean_ms": float(np.mean(e2e)) * 1000, "e2e_p99_ms": float(np.percentile(e2e, 99)) * 1000,
            "m": sum(s.blocking for s, _ in runs) / tokens, "tokens": tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtts", default="0,20,80", help="round trips to emulate, ms")
    ap.add_argument("--modes", default="base,lst,full,choice,spa")
    ap.add_argument("--sessions", type=int, default=4, help="concurrent sessions per mode")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--backbone")
    ap.add_argument("--bundle")
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="seconds: RTT 0 and 20 ms, 4 tokens")
    a = ap.parse_args()
    if a.smoke:
        a.rtts, a.sessions, a.tokens, a.repeats = "0,20", 2, 4, 1
    backbone, bundle = (Path(a.backbone), Path(a.bundle)) if a.bundle else models()
    edge = load_bundle(bundle)
    edge.eos_token_id = None  # every session runs to --tokens: equal lengths in every mode
    modes = [Mode.parse(m) for m in parse_modes(a.modes)]
    skipped = [m.value for m in modes if not edge.supports(m)]
    modes = [m for m in modes if edge.supports(m)]
    rtts = [float(x) for x in a.rtts.split(",")]
    ps = prompts(a.sessions)
    res: dict[float, dict[str, dict]] = {}
    with LocalStack(backbone, workers=1) as stack:
        async def go():
            for rtt in rtts:
                port = free_port()
                proxy = DelayProxy(port, "127.0.0.1", stack.agent_port, rtt / 2000)
                await proxy.start()
                agent = EdgeAgent(edge, f"tcp://127.0.0.1:{port}", keys=stack.agent_keys)
                await run_mode(agent, ps[:1], 2, modes[0])  # warm-up: the connection set up
                runs: dict[str, list] = {m.value: [] for m in modes}
                for _ in range(a.repeats):
                    for mode in modes:  # interleaved: drift hits every mode alike
                        runs[mode.value] += await run_mode(agent, ps, a.tokens, mode)
                await agent.close()
                await proxy.close()
                res[rtt] = {m: figures(r) for m, r in runs.items()}

        aio.run(go())
    print(f"{a.sessions} concurrent sessions × {a.tokens} tokens per mode, {a.repeats} repeats, "
          f"round trip added by a delay proxy between agents and broker"
          + (f"; bundle lacks {','.join(skipped)}" if skipped else ""))
    print("| RTT ms | mode | M | ITL mean ms | ITL p99 ms | E2E mean ms | E2E p99 ms |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for rtt in rtts:
        for mode, f in res[rtt].items():
            print(f"| {rtt:g} | {mode} | {f['m']:.3f} | {f['itl_mean_ms']:.1f} | {f['itl_p99_ms']:.1f} "
                  f"| {f['e2e_mean_ms']:.0f} | {f['e2e_p99_ms']:.0f} |")
    if len(rtts) > 1:
        print("\nmean ITL against RTT (least squares): the slope is the round trips paid per token")
        print("| mode | M | slope ms/ms | slope / M |\n|---|---:|---:|---:|")
        for mode in res[rtts[0]]:
            slope = float(np.polyfit(rtts, [res[r][mode]["itl_mean_ms"] for r in rtts], 1)[0])
            m = float(np.mean([res[r][mode]["m"] for r in rtts]))
            print(f"| {mode} | {m:.3f} | {slope:.3f} | " + (f"{slope / m:.2f} |" if m else "- |"))
    if "spa" in res[rtts[0]] and "full" in res[rtts[0]]:
        print("\nspa against full: full's mean ITL / spa's, and the ITL spa saves per token")
        for rtt in rtts:
            s, f = res[rtt]["spa"], res[rtt]["full"]
            print(f"  RTT {rtt:>4g} ms: {f['itl_mean_ms'] / s['itl_mean_ms']:.2f}× "
                  f"({f['itl_mean_ms'] - s['itl_mean_ms']:.1f} ms/token saved; M {s['m']:.3f} vs "
                  f"{f['m']:.3f}: expected ≈ {(f['m'] - s['m']) * rtt:.1f} ms from round trips)")
    if a.json:
        Path(a.json).write_text(json.dumps({str(k): v for k, v in res.items()}, indent=1))


if __name__ == "__main__":
    main()
