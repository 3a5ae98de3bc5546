"""Stop 35: the blend's wall and CPU seconds on this 2-core machine, the default recipe against
the turn rule (60 coefficient steps, l2 0.01, kept at the turn's best step, the default patience), side by
side per user and repeat (local 120-record pool of §10.4, 16 examples, 2 torch threads).

    python results/cpu_2026-12-05b/blend_time.py REPEATS > results/cpu_2026-12-05b/blend_time.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

from lab.blend import blend  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    repeats = int(sys.argv[1])
    recipes = {"default": cfg, "turn": cfg.replace(steps=60, l2=0.01, coef_keep="turn")}
    wall: dict[str, list[float]] = {k: [] for k in recipes}
    for u in ("ada", "bo", "cy"):
        ex = style_records(STYLES[u], 16, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
        blend(bb, pool, ex, cfg)  # warm-up
        for r in range(repeats):
            for name, c in recipes.items():
                _, rec = blend(bb, pool, ex, c)
                b = rec["blend"]
                wall[name].append(b["seconds"]["total"])
                print(f"{u} #{r} {name}: wall {b['seconds']} cpu {b['cpu_seconds']['total']} "
                      f"coef steps run {b.get('steps_run', b['steps'])} kept {b['kept_step']}", flush=True)
    for name, w in wall.items():
        print(f"{name}: median {statistics.median(w):.2f} s, max {max(w):.2f} s over {len(w)} blends")
    print("turn / default, medians:", round(statistics.median(wall["turn"]) / statistics.median(wall["default"]), 3))


if __name__ == "__main__":
    main()
