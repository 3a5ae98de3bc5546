"""Stop 35 (stop 37: POOL= picks the pool): per-token trace of a user's blended answers in spa and full mode — token / path (s
side, b backbone), the gate's g, C where the side's token corrected the backbone's — with the
per-answer Rouge-L and the reference (local 120-record pool of §10.4, 2 CPU threads).

    POOL=/tmp/b19/pool400 python results/cpu_2026-12-05d/trace.py bo 48 > trace_bo.txt
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool=os.environ.get("POOL", "/tmp/b19/pool"), threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    user, n = sys.argv[1], int(sys.argv[2])
    over = dict(kv.split("=") for kv in sys.argv[3:])
    cfg = cfg.replace(**{k: float(v) if "." in v else int(v) for k, v in over.items()})
    recs = style_records(STYLES[user], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
    train, test = recs[:300], recs[300 : 300 + n]
    tok = bb.tokenizer
    edge, _ = blend(bb, pool, train, cfg)
    head = edge.heads["add"]
    print("tau g", head.tau, "calib", {k: v for k, v in head.info["calibration"].items() if k != "method"})
    ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
    for mode in (Mode.SPA, Mode.FULL):
        gens = ev.gen.generate([ev.prompt(ex) for ex in test], 48, mode)
        r = ev.run_mode(mode, test)
        print(mode.value, r.rouge_l, r.stats.m)
        for i, (g, s) in enumerate(zip(gens, r.scores, strict=True)):
            steps = zip(g.tokens, g.paths, g.gates, g.corrected, strict=True)
            print(f"  {mode.value} #{i} R={s:.1f}:", " ".join(f"{tok.decode([t])!r}/{p[0]}{gt:.2f}{'C' if c else ''}"
                                                          for t, p, gt, c in steps))
    for i, ex in enumerate(test):
        print(f"REF #{i}:", ex.answer[:200])


if __name__ == "__main__":
    main()
