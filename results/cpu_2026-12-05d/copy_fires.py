"""Stop 37: where the copy rule's REQUESTs go — bo's (or any user's) blended spa answers with
the default rules, each side-consulted token attributed to the gate (g > τ), the follow rule
(the token before differed) or the copy rule (neither), and whether the side network's token
then differed from the backbone's (a correction) or not (an exchange that changed nothing).

    POOL=/tmp/b19/pool400 python results/cpu_2026-12-05d/copy_fires.py bo 64 > copy_fires_bo.txt
"""

from __future__ import annotations

import argparse
import collections
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
    args = argparse.Namespace(backbone="smollm2-135m", pool=os.environ.get("POOL", "/tmp/b19/pool"),
                              threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    user, n = sys.argv[1], int(sys.argv[2])
    recs = style_records(STYLES[user], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
    edge, _ = blend(bb, pool, recs[:300], cfg)
    head = edge.heads["add"]
    ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
    gens = ev.gen.generate([ev.prompt(ex) for ex in recs[300 : 300 + n]], 48, Mode.SPA)
    count, tokens = collections.Counter(), 0
    for g in gens:
        tokens += len(g.tokens)
        for i, (p, gt, c) in enumerate(zip(g.paths, g.gates, g.corrected, strict=True)):
            if p != "side":
                continue
            why = ("gate" if gt > head.tau else
                   "follow" if i > 0 and g.corrected[i - 1] else "copy")
            count[why, "corrected" if c else "same token"] += 1
    print(f"{user}: copy {head.copy}, follow {head.follow}, τ {head.tau:.3f}; {tokens} tokens in {n} answers")
    for (why, what), k in sorted(count.items()):
        print(f"  {why:6s} {what:10s} {k:5d}  ({k / tokens:.3f} per token)")


if __name__ == "__main__":
    main()
