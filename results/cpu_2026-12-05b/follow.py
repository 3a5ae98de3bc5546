"""Stop 35: the follow rule on the CPU — each user's default blend (lead 'turn' computed, the gate
unchanged) in full mode and in spa with follow 0, 1, 2 and follow 1 + the lead; paired against
spa with follow 0 (local 120-record pool of §10.4, 2 CPU threads).

    python results/cpu_2026-12-05b/follow.py 48 bo,cy,ada follow_s0.json 0 > follow_s0.txt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

from lab.blend import blend  # noqa: E402
from lab.evaluate import Evaluator, paired_bootstrap  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402
from routing.modes import Mode  # noqa: E402


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    n, users, path = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    seeds = [int(s) for s in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0]
    out = {}
    for u in users:
        recs = style_records(STYLES[u], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens,
                             corpus_file())
        train, test = recs[:300], recs[300 : 300 + n]
        for s in seeds:
            edge, _ = blend(bb, pool, train, cfg.replace(seed=s, lead="turn"))
            head = edge.heads["add"]
            lead = head.lead
            ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
            rows = {"full": ev.run_mode(Mode.FULL, test)}
            for name, ld, fo in (("spa", 0, 0), ("spa f1", 0, 1), ("spa f2", 0, 2), ("spa f1 lead", lead, 1)):
                head.lead, head.follow = ld, fo
                rows[name] = ev.run_mode(Mode.SPA, test)
            line = " | ".join(f"{k} {r.rouge_l:.1f} M {r.stats.m:.3f}" for k, r in rows.items())
            ds = " ".join(f"{k}−spa {paired_bootstrap(rows[k].scores, rows['spa'].scores)['diff']:+.2f}"
                          for k in rows if k.startswith("spa "))
            print(f"{u} s{s} lead {lead}: {line} | {ds}", flush=True)
            out[f"{u} s{s}"] = {k: {"rouge_l": r.rouge_l, "m": r.stats.m, "scores": r.scores} for k, r in rows.items()}
            Path(path).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
