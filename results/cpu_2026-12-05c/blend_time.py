"""Stop 36: the blend's wall seconds of two source trees, processes alternated old / new / new /
old … on this 2-core machine — each process warms up once, then blends ada, bo, cy with the
default recipe and with the turn rule (60 coefficient steps, l2 0.01, kept at the turn's best
step) — medians, maxima and new ÷ old per recipe (local 120-record pool of §10.4, 16 examples,
2 torch threads).

    python results/cpu_2026-12-05c/blend_time.py OLD_TREE NEW_TREE ROUNDS > blend_time.txt
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

RECIPES = {"default": {}, "turn": {"steps": 60, "l2": 0.01, "coef_keep": "turn"}}


def one(tree: Path) -> None:
    """Blend each user with each recipe once in this process (tree's lab/), one JSON line each."""
    import argparse

    sys.path[:0] = [str(tree), str(tree / "benchmarks")]
    from blend_quality import cpu_setup

    from lab.blend import blend
    from lab.pool import STYLES, corpus_file, style_records, xsum_file

    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    for i, u in enumerate(("ada", "bo", "cy")):
        ex = style_records(STYLES[u], 16, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
        if i == 0:
            blend(bb, pool, ex, cfg)  # warm-up
        for name, over in RECIPES.items():
            _, rec = blend(bb, pool, ex, cfg.replace(**over))
            b = rec["blend"]
            print(json.dumps({"user": u, "recipe": name, "seconds": b["seconds"],
                              "cpu": b["cpu_seconds"]["total"]}), flush=True)


def main() -> None:
    old, new, rounds = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), int(sys.argv[3])
    got: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for tag, tree in (("old", old), ("new", new)) if r % 2 == 0 else (("new", new), ("old", old)):
            out = subprocess.run([sys.executable, __file__, "one", str(tree)], capture_output=True,
                                 text=True, check=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    row = json.loads(line)
                    got.setdefault((tag, row["recipe"]), []).append(row["seconds"]["total"])
                    print(f"round {r} {tag} {row['user']} {row['recipe']}: {row['seconds']} cpu {row['cpu']}",
                          flush=True)
    print(f"\nold: {old}\nnew: {new}")
    for name in RECIPES:
        o, n = got[("old", name)], got[("new", name)]
        print(f"{name}: old median {statistics.median(o):.2f} s / max {max(o):.2f} s, new median "
              f"{statistics.median(n):.2f} s / max {max(n):.2f} s over {len(n)} blends each; "
              f"new ÷ old, medians {statistics.median(n) / statistics.median(o):.3f}")
    print(f"new turn ÷ old default, medians {statistics.median(got[('new', 'turn')]) / statistics.median(got[('old', 'default')]):.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "one":
        one(Path(sys.argv[2]).resolve())
    else:
        main()
