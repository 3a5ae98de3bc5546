"""Bytes on the air per generated token, per mode and wire dtype (issue 22), and the edge's CPU time
per side token.

1. Served: a local stack (broker + 1 worker, CPU) and an edge agent run the same prompts in each
   mode with --wire-dtype fp16, int8, int4; bytes edge←cloud and edge→cloud per generated token
   are the agent's own counts of every message (headers and tensor frames, OPEN included).
2. SmolLM2's shape (d = 576, 30 layers, every layer on the wire): the exact encoded size of a
   FRAME, a lockstep FRAME and a HIDDEN built by the contract's codec from states quantised by
   routing/quant.py, and the spa figure at a request rate r (bytes/token = FRAME + r·HIDDEN).
3. CPU time of one side token (dequantise + side network + lm_head) per dtype at that shape.
4. The edge at run time with its weights fp32 or int8 (the bundle as given, loaded fp32; and an
   int8-stored copy of it loaded `resident="int8"`): each loaded in a fresh process, measured as
   (a) the RSS delta of `load_bundle` (bundle + edge kit + tokenizer; /proc/self/status VmRSS
   after importing torch and the agent's modules, against after loading) and (b) the bytes of
   the torch storages the loaded model holds (private side networks and classifiers; the kit's
   lm_head), and the CPU time (process_time, 1 thread) per side token of that loaded bundle in
   spa mode (side network + lm_head on fp16 states).

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


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _storage_bytes(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def measure_loaded(bundle: str, resident: str, reps: int) -> dict:
    """In this (fresh) process: load `bundle` keeping weights `resident`; RSS delta, storage
    bytes, CPU seconds per spa side token."""
    from edge_agent.bundle import load_bundle
    from routing.modes import Mode

    torch.set_num_threads(1)
    try:  # imported before the baseline: the RSS delta is the model's, not a module's
        import transformers  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
    except ImportError:
        pass
    before = _rss()
    edge = load_bundle(bundle, resident=resident)
    rss = _rss() - before
    head = edge.head_for(Mode.SPA)
    private = _storage_bytes(head.side) + _storage_bytes(head.classifier)
    lm = _storage_bytes(edge.lm_head)
    layers = edge.wire_layers(Mode.SPA)
    d = edge.lm_head.in_features
    g = torch.Generator().manual_seed(0)
    z, states = torch.randn(1, d, generator=g), torch.randn(1, len(layers), d, generator=g)
    with torch.inference_mode():
        for i in range(reps + 2):
            if i == 2:
                cpu = time.process_time()
            edge.side_logits(Mode.SPA, z, states).argmax(-1)
        cpu = (time.process_time() - cpu) / reps
    return {"resident": resident, "rss_delta": rss, "private_bytes": private, "lm_head_bytes": lm,
            "cpu_per_side_token": cpu}


def loaded_rows(bundle: str, reps: int, tmp: Path) -> list[dict]:
    """fp32 (the bundle as given) and int8 (an int8-stored copy, kept int8): each in its own
    process, so that neither's RSS includes the other's."""
    import copy
    import json
    import subprocess

    from edge_agent.bundle import load_bundle, save_bundle

    int8 = save_bundle(copy.deepcopy(load_bundle(bundle)), tmp / "bundle-int8", kits=tmp / "kits",
                       weights="int8")
    rows = []
    for path, resident in ((bundle, "fp32"), (str(int8), "int8")):
        out = subprocess.run([sys.executable, __file__, "--loaded", path, resident, str(reps)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


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
    ap.add_argument("--loaded", nargs=3, metavar=("BUNDLE", "RESIDENT", "REPS"),
                    help=argparse.SUPPRESS)  # item 4's fresh process
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.loaded:
        import json

        print(json.dumps(measure_loaded(args.loaded[0], args.loaded[1], int(args.loaded[2]))))
        return
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
    if args.bundle:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            rows = loaded_rows(args.bundle, args.reps, Path(tmp))
        print(f"\nthe loaded edge, weights fp32 vs int8 (each in a fresh process; {args.bundle}):")
        print(f"{'weights':8} {'RSS delta of load':>18} {'private (torch)':>16} {'lm_head (torch)':>16} "
              f"{'CPU/side token':>15}")
        for r in rows:
            print(f"{r['resident']:8} {r['rss_delta'] / 1e6:15.2f} MB {r['private_bytes'] / 1e6:13.3f} MB "
                  f"{r['lm_head_bytes'] / 1e6:13.2f} MB {r['cpu_per_side_token'] * 1e3:12.3f} ms")


if __name__ == "__main__":
    main()
