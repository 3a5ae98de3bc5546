"""Bytes on the air per generated token, per mode and wire dtype (issue 22), and the edge's CPU time
per side token.

1. Served: a local stack (broker + 1 worker, CPU) and an edge agent run the same prompts in each
   mode with --wire-dtype fp16, int8, int4; bytes edge←cloud and edge→cloud per generated token
   are the agent's own counts of every message (headers and tensor frames, OPEN included).
2. SmolLM2's shape (d = 576, 30 layers, every layer on the wire): the exact encoded size of a
   FRAME, a lockstep FRAME and a HIDDEN built by the contract's codec from states quantised by
   routing/quant.py, and the spa figure at a request rate r (bytes/token = FRAME + r·HIDDEN).
3. CPU time of one side token (dequantise + side network + lm_head) per dtype at that shape.

    .venv/bin/python benchmarks/wire_bytes.py --backbone DIR --bundle DIR [--prompts 8 --tokens 32]
    .venv/bin/python benchmarks/wire_bytes.py --smoke     # the tests' tiny backbone (env SPA_BENCH_*)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from routing import quant  # noqa: E402
from routing.protocol import encode, msg  # noqa: E402
from routing.quant import WireDtype  # noqa: E402

WIRES = [w.value for w in WireDtype]


def served(backbone: str, bundle: str, prompts: int, tokens: int, modes: list[str]) -> dict:
    from edge_agent.agent import EdgeAgent
    from edge_agent.bundle import load_bundle
    from lab.data import load_examples  # noqa: F401  (the stack's data path is not needed)
    from spa.stack import LocalStack

    edge = load_bundle(bundle)
    rng = np.random.default_rng(0)
    vocab = edge.lm_head.out_features
    ps = [rng.integers(5, vocab, size=int(rng.integers(8, 24))).tolist() for _ in range(prompts)]
    out: dict = {}
    with LocalStack(backbone, workers=1, log_dir=Path(os.environ.get("TMPDIR", "/tmp"))) as stack:
        async def run(mode: str, wire: str):
            agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)

            async def one(p):
                s = agent.generate(p, tokens, mode, wire_dtype=wire)
                async for _ in s:
                    pass
                return s

            try:
                return await asyncio.gather(*(one(p) for p in ps))
            finally:
                await agent.close()

        for mode in modes:
            for wire in WIRES:
                streams = asyncio.run(run(mode, wire))
                n = sum(len(s.tokens) for s in streams)
                out[(mode, wire)] = {
                    "down": sum(s.stats.bytes_down for s in streams) / n,
                    "up": sum(s.stats.bytes_up for s in streams) / n,
                    "m": sum(s.stats.requests + s.stats.corrections + s.stats.lockstep
                             for s in streams) / n,
                    "requests": sum(s.stats.requests for s in streams) / n, "tokens": n}
    return out


def shape_bytes(d: int, k: int, rate: float) -> dict:
    """Encoded bytes of the messages edge←cloud for a backbone of width d with k wire layers."""
    g = torch.Generator().manual_seed(0)
    z, h = torch.randn(d, generator=g), torch.randn(k, d, generator=g) * 3
    grid = quant.channel_scales(torch.cat([h, z[None]])[:, None].abs() + 1)[:, :]  # (k+1, d)
    sid = os.urandom(16)
    res = {}
    for w in WireDtype:
        tz = [t.numpy() for t in quant.encode(z, grid[-1], w)]
        th = [t.numpy() for t in quant.encode(h, grid[:-1], w)]
        size = lambda m: sum(len(memoryview(f).cast("B")) for f in encode(m))  # noqa: E731
        frame = size(msg("FRAME", tz, session=sid, pos=1000, epoch=0, token=30000))
        lock = size(msg("FRAME", tz + th, session=sid, pos=1000, epoch=0, token=30000))
        hidden = size(msg("HIDDEN", th, session=sid, pos=1000, epoch=0))
        res[w.value] = {"frame": frame, "frame_lockstep": lock, "hidden": hidden,
                        "spa": frame + rate * hidden}
    return res


def side_time(d: int, n_layers: int, reps: int) -> dict:
    """CPU seconds per side token (one at a time): unwire (dequantise) + side network + lm_head."""
    from edge_agent.edge_model import EdgeModel
    from edge_agent.side_network import SideConfig
    from routing.modes import Mode

    torch.manual_seed(0)
    head = torch.nn.Linear(d, 49152 if d == 576 else 2048, bias=False)
    edge = EdgeModel(head, "x" * 64, n_layers)
    edge.new_head("add", SideConfig(d, n_layers))
    layers = edge.wire_layers(Mode.SPA)
    hidden = torch.randn(len(layers) + 1, d)
    edge.grid = torch.ones(n_layers + 1, d)
    edge.grid[layers + [n_layers]] = quant.channel_scales(hidden[:, None].abs() + 1)
    out = {}
    with torch.inference_mode():
        for w in WireDtype:
            tz = [t.numpy() for t in quant.encode(hidden[-1], edge.chan(None), w)]
            th = [t.numpy() for t in quant.encode(hidden[:-1], edge.chan(layers), w)]
            for i in range(reps + 2):
                if i == 2:
                    started = time.perf_counter()
                z = edge.unwire(tz, w, Mode.SPA, None)
                states = edge.unwire(th, w, Mode.SPA, layers)
                edge.side_logits(Mode.SPA, z[None], states[None]).argmax(-1)
            out[w.value] = (time.perf_counter() - started) / reps
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default=os.environ.get("SPA_BENCH_BACKBONE"))
    ap.add_argument("--bundle", default=os.environ.get("SPA_BENCH_BUNDLE"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--modes", default="spa,full,base")
    ap.add_argument("--rate", type=float, default=0.62, help="REQUESTs per token for the SmolLM2 row")
    ap.add_argument("--reps", type=int, default=20, help="side tokens timed per dtype")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 prompts of 6 tokens, spa only")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.smoke:
        args.prompts, args.tokens, args.modes, args.reps = 2, 6, "spa", 5
    if args.backbone and args.bundle:
        rows = served(args.backbone, args.bundle, args.prompts, args.tokens, args.modes.split(","))
        print(f"served on CPU ({args.prompts} prompts × {args.tokens} tokens): bytes per generated token")
        print(f"{'mode':6} {'wire':5} {'down':>9} {'up':>8} {'M':>6} {'fp16/this':>10}")
        for (mode, wire), r in rows.items():
            ratio = rows[(mode, "fp16")]["down"] / r["down"]
            print(f"{mode:6} {wire:5} {r['down']:9.1f} {r['up']:8.1f} {r['m']:6.3f} {ratio:9.2f}×")
    else:
        print("no --backbone/--bundle: served rows skipped")
    print(f"\nSmolLM2 shape (d=576, 30 wire layers), encoded bytes edge←cloud; spa at r={args.rate}")
    s = shape_bytes(576, 30, args.rate)
    for w, r in s.items():
        print(f"{w:5} FRAME {r['frame']:6d}  lockstep FRAME {r['frame_lockstep']:6d}  HIDDEN {r['hidden']:6d}  "
              f"spa/token {r['spa']:8.1f}  full/token {r['frame_lockstep']:6d}  "
              f"fp16/this spa {s['fp16']['spa'] / r['spa']:.2f}× full "
              f"{s['fp16']['frame_lockstep'] / r['frame_lockstep']:.2f}×")
    t = side_time(576, 30, args.reps)
    print("\nCPU time per side token (1 thread; dequantise + side network + lm_head, SmolLM2 shape):")
    print("  " + "  ".join(f"{w} {v * 1e3:.2f} ms" for w, v in t.items()))


if __name__ == "__main__":
    main()
