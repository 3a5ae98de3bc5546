"""Stop 34: per-token trace of blended answers in spa and full mode — token / path (s side, b
backbone) and the gate's probability g, C where the side's token corrected the backbone's —
for the default and the turn-rule blend (local 120-record pool, 2 CPU threads).

    python results/cpu_2026-12-05/trace.py cy 1,29,12 > trace_cy.txt
"""

from __future__ import annotations

import argparse
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
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    user, idx = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    recs = style_records(STYLES[user], 300 + max(idx) + 1, bb.tokenizer, 0, 0, xsum_file(),
                         cfg.max_prompt_tokens, corpus_file())
    train, test = recs[:300], [recs[300 + i] for i in idx]
    tok = bb.tokenizer
    recipes = {"default": cfg, "turn": cfg.replace(steps=60, l2=0.01, coef_keep="turn", coef_patience=15)}
    for name, c in recipes.items():
        edge, _ = blend(bb, pool, train, c)
        ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 32, progress=False)
        head = edge.heads["add"]
        print(name, "τ (logit)", head.threshold, "τ (g)", head.tau, "lead", head.lead)
        for mode in (Mode.SPA, Mode.FULL):
            gens = ev.gen.generate([ev.prompt(ex) for ex in test], 24, mode)
            for i, g in zip(idx, gens, strict=True):
                steps = zip(g.tokens, g.paths, g.gates, g.corrected, strict=True)
                print(f"  {mode.value} #{i}:", " ".join(f"{tok.decode([t])!r}/{p[0]}{gt:.2f}{'C' if c else ''}"
                                                    for t, p, gt, c in steps))


if __name__ == "__main__":
    main()
