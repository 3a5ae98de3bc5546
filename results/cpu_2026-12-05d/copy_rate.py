"""Stop 37: the new default (copy 1, fire rate 0.35) against copy 1 at fire rate 0.4 and the
default before (copy 0, fire rate 0.4) on the 400-record local pool, 3 users × seeds, held-out
prompts; per-record scores to a JSON (summarised by copy_rate_summary.py).

    POOL=/tmp/b19/pool400 python results/cpu_2026-12-05d/copy_rate.py OUT.json N USERS SEEDS
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

from lab.blend import blend  # noqa: E402
from lab.evaluate import Evaluator  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402
from routing.modes import Mode  # noqa: E402

RECIPES = {"before": (0.4, 0), "copy1@0.4": (0.4, 1), "copy1@0.35": (0.35, 1)}  # fire rate, copy


def main() -> None:
    out_path, n = Path(sys.argv[1]), int(sys.argv[2])
    users, seeds = sys.argv[3].split(","), [int(s) for s in sys.argv[4].split(",")]
    args = argparse.Namespace(backbone="smollm2-135m", pool=os.environ.get("POOL", "/tmp/b19/pool"),
                              threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    got = json.loads(out_path.read_text()) if out_path.exists() else {}
    for u in users:
        recs = style_records(STYLES[u], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
        train, test = recs[:300], recs[300 : 300 + n]
        for seed in seeds:
            key = f"{u}/{seed}"
            if key in got:
                continue
            row, edges = {}, {}
            for name, (rate, k) in RECIPES.items():
                if rate not in edges:  # the fire rate moves τ only: one blend per rate
                    edges[rate] = blend(bb, pool, train, cfg.replace(seed=seed, fire_rate=rate))[0]
                edge = edges[rate]
                edge.heads["add"].copy = k
                ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
                if "full" not in row:
                    r = ev.run_mode(Mode.FULL, test)
                    row["full"] = {"rouge_l": r.rouge_l, "m": r.stats.m, "scores": r.scores}
                r = ev.run_mode(Mode.SPA, test)
                row[name] = {"rouge_l": r.rouge_l, "m": r.stats.m, "scores": r.scores}
            got[key] = row
            print(key, {name: (round(v["rouge_l"], 2), round(v["m"], 3)) for name, v in row.items()}, flush=True)
            out_path.write_text(json.dumps(got))


if __name__ == "__main__":
    main()
