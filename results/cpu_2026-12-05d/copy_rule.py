"""Stop 37: the copy rule (edge_agent/decoding.py: a token whose backbone choice breaks a copy of
the prompt under way consults the side network) on one blend per user and seed — the same
network, classifier and τ, `copy` 0 (off) / 1 / 2 / 3 — spa Rouge-L and M on held-out prompts,
beside full mode; per-record scores to a JSON for paired intervals.

    POOL=/tmp/b19/pool400 python results/cpu_2026-12-05d/copy_rule.py OUT.json N USERS SEEDS
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

COPIES = (0, 1, 2, 3)


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
            edge, _ = blend(bb, pool, train, cfg.replace(seed=seed, fire_rate=0.4))  # the default then
            ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
            row = {}
            r = ev.run_mode(Mode.FULL, test)
            row["full"] = {"rouge_l": r.rouge_l, "m": r.stats.m, "scores": r.scores}
            for k in COPIES:
                edge.heads["add"].copy = k
                r = ev.run_mode(Mode.SPA, test)
                row[f"copy{k}"] = {"rouge_l": r.rouge_l, "m": r.stats.m, "scores": r.scores}
            got[key] = row
            print(key, {name: (round(v["rouge_l"], 2), round(v["m"], 3)) for name, v in row.items()}, flush=True)
            out_path.write_text(json.dumps(got))


if __name__ == "__main__":
    main()
