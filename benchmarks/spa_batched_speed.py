"""Batched generator against the one-sequence reference generator, side by side in one run:
tokens per second (median of --reps) and whether every sequence is token-for-token the same.

    python benchmarks/spa_batched_speed.py --backbone DIR [--bundle DIR] --data xsum_1000.jsonl \
        --prompts 16 --max-new-tokens 32 --modes base,full,spa [--device cpu]
    python benchmarks/spa_batched_speed.py --smoke   # seconds: the tiny models, 2 prompts, 4 tokens
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone")
    p.add_argument("--bundle")
    p.add_argument("--data")
    p.add_argument("--split", default="800:")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--max-prompt-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--modes", default="base")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="seconds: the tiny models (benchmarks/common.py), "
                   "built-in tasks, 2 prompts, 4 tokens, base and spa")
    args = p.parse_args()
    if args.smoke:
        import tempfile

        from common import models

        from lab.synthetic import make_personal_tasks, write_jsonl

        backbone, bundle = models()
        args.backbone, args.bundle = str(backbone), str(bundle)
        args.data = str(write_jsonl(make_personal_tasks(4, seed=5), Path(tempfile.mkdtemp()) / "tasks.jsonl"))
        args.split, args.prompts, args.max_new_tokens, args.batch_size = ":", 2, 4, 2
        args.modes, args.reps = "base,spa", 1
    if not (args.backbone and args.data):
        p.error("--backbone and --data are required (or --smoke)")

    import torch

    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from lab.batched import BatchConfig, BatchedGenerator
    from lab.data import load_examples, split
    from lab.reference import ReferenceGenerator
    from routing.modes import parse_modes

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    bb = Backbone.load(args.backbone, args.device)
    edge = load_bundle(args.bundle, bb.fingerprint).to(bb.device) if args.bundle else None
    exs = split(load_examples(args.data), args.split)[: args.prompts]
    prompts = [ex.prompt_ids(bb.tokenizer, args.max_prompt_tokens) for ex in exs]
    ref = ReferenceGenerator(bb, edge)
    batched = BatchedGenerator(bb, edge, BatchConfig(args.batch_size, progress=False))
    print(f"{bb.source} on {args.device} ({bb.dtype}), {len(prompts)} prompts ≤ {args.max_prompt_tokens} "
          f"tokens, ≤ {args.max_new_tokens} new, batch {args.batch_size}, median of {args.reps}")
    print("| mode | reference tok/s | batched tok/s | speed-up | same tokens |\n|---|---:|---:|---:|---|")
    for mode in parse_modes(args.modes):
        rates = {"ref": [], "bat": []}
        for _ in range(args.reps):
            t = time.perf_counter()
            r = [ref.generate(q, args.max_new_tokens, mode) for q in prompts]
            rates["ref"].append(sum(len(g.tokens) for g in r) / (time.perf_counter() - t))
            t = time.perf_counter()
            b = batched.generate(prompts, args.max_new_tokens, mode)
            rates["bat"].append(sum(len(g.tokens) for g in b) / (time.perf_counter() - t))
        same = sum(x.tokens == y.tokens for x, y in zip(r, b, strict=True))
        ref_r, bat_r = statistics.median(rates["ref"]), statistics.median(rates["bat"])
        print(f"| {mode.value} | {ref_r:.1f} | {bat_r:.1f} | {bat_r / ref_r:.1f}× | {same}/{len(prompts)} |",
              flush=True)


if __name__ == "__main__":
    main()
