"""A new user's blend time on this machine's cores: recipes side by side, interleaved, medians.

Issue 19's budget is ≤ 10 s on 2 CPU cores from ≤ 16 examples. blend_quality.py times its blends
too, but beside its own GPU evaluations (and, on the H200 host, beside other processes); this
script does nothing else: per repetition and held-out user, each recipe once in turn (the
default `blended` and every `--variant`), so a slow moment of a shared machine falls on all of
them. Prints each blend's wall / CPU seconds and per recipe the median and range of the wall
seconds, and the ratio of each recipe's median to the default's.

    HF_HUB_OFFLINE=1 python benchmarks/blend_time.py --pool runs/pool-smollm2 \
        --variant mix:gate_labels=mixture --reps 2
    python benchmarks/blend_time.py --smoke     # tiny backbone and pool: seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from blend_quality import cpu_setup, parse_variants, smoke_setup  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--pool", default="", help="a `spa pool build` directory (required)")
    ap.add_argument("--xsum", default="", help="XSum JSONL (only for the pool's `news` records)")
    ap.add_argument("--corpus", default="", help="English sentences for the users' records")
    ap.add_argument("--users", default="ada,bo,cy")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,…")
    ap.add_argument("--reps", type=int, default=2, help="repetitions of every (user, recipe)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the device's cores)")
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny backbone and pool, one user: seconds")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        smoke_setup(args)
        args.reps, args.variant = 1, args.variant or ["mix:gate_labels=mixture"]
    from lab.blend import blend
    from lab.pool import HELD_OUT, STYLES, corpus_file, style_records, xsum_file

    bb, pool, cfg = cpu_setup(args)
    recipes = {"blended": cfg, **parse_variants(args.variant, cfg)}
    corpus = corpus_file(args.corpus or None)
    xsum = None if args.smoke else xsum_file(args.xsum or None)
    known = {s.name for s in HELD_OUT}
    users = {}
    for name in args.users.split(","):
        if name not in known:
            raise SystemExit(f"unknown held-out user {name!r}: {sorted(known)}")
        users[name] = style_records(STYLES[name], args.examples, bb.tokenizer, 0, 0, xsum,
                                    cfg.max_prompt_tokens, corpus)
    wall: dict[str, list[float]] = {r: [] for r in recipes}
    rows = []
    for rep in range(args.reps):
        for name, examples in users.items():
            for recipe, rcfg in recipes.items():
                _, rec = blend(bb, pool, examples, rcfg)
                b = rec["blend"]
                wall[recipe].append(b["seconds"]["total"])
                rows.append({"rep": rep, "user": name, "recipe": recipe, "seconds": b["seconds"],
                             "cpu_seconds": b["cpu_seconds"], "cores": b["cores"]})
                print(f"rep {rep} {name:4s} {recipe:10s} wall {b['seconds']['total']:6.2f} s "
                      f"(features {b['seconds']['features']:.2f}), CPU {b['cpu_seconds']['total']:6.2f} s, "
                      f"{b['cores']} cores / {b['threads']} threads", flush=True)
    base = statistics.median(wall["blended"])
    summary = {}
    print("\n| recipe | blends | wall s median | range | ÷ blended |\n|---|---:|---:|---|---:|")
    for recipe, w in wall.items():
        med = statistics.median(w)
        summary[recipe] = {"n": len(w), "median": med, "min": min(w), "max": max(w), "ratio": med / base}
        print(f"| {recipe} | {len(w)} | {med:.2f} | {min(w):.2f}–{max(w):.2f} | {med / base:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
