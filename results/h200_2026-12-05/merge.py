"""Stop 34's H200 rounds 6-9 merged per recipe over every seed it was blended with (the same
base, trained comparator and 128 held-out prompts per user in every process: checked).

    python results/h200_2026-12-05/merge.py > results/h200_2026-12-05/merged.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from lab.blend_report import gap_interval  # noqa: E402

USERS = ("ada", "bo", "cy")
S = ("", "@s1", "@s2")
RECIPES = {  # recipe -> [(round/process, variant row), ...] in seed order
    "default (15 steps)": [("r6/a", f"blended{s}") for s in S],
    "c20 (20 steps)": [("r6/b", f"c20{s}") for s in S] + [("r7/a", f"c20s3{s}") for s in S],
    "own02 (coef_own 0.02)": [("r6/b", f"own02{s}") for s in S] + [("r7/a", f"own02s3{s}") for s in S],
    "own05 (coef_own 0.05)": [("r6/a", f"own05{s}") for s in S],
    "c60l2 (60 steps, l2 0.01)": [("r7/b", f"c60l2{s}") for s in S],
    "turn20 (20 steps, kept at the turn's best)": [("r8/a", f"turn20{s}") for s in S],
    "turn30 (30 steps, kept at the turn's best)": [("r8/a", f"turn30{s}") for s in S],
    "turn60 (60 steps, l2 0.01, kept at the turn's best)": [("r8/b", f"turn60{s}") for s in S]
    + [("r8/b", f"turn60s3{s}") for s in S] + [("r9/a", "turns6"), ("r9/a", "turns7")],
}


def rows(proc: str, user: str) -> dict:
    return json.loads((HERE / proc / user / "blend_quality.json").read_text())["users"][user]["rows"]


def scores(proc: str, user: str, row: str) -> list[float]:
    return rows(proc, user)[row]["scores"]


def main() -> None:
    ref = {u: {k: scores("r6/a", u, k) for k in ("base", "trained full", "trained spa")} for u in USERS}
    procs = ("r6/a", "r6/b", "r7/a", "r7/b", "r8/a", "r8/b", "r9/a")
    for u in USERS:  # every process: the same base and comparator
        assert all(scores(p, u, k) == ref[u][k] for p in procs for k in ref[u]), u
    same = all(scores("r9/a", u, f"turn {m}") == scores("r8/b", u, f"turn60 {m}")
               for u in USERS for m in ("full", "spa"))
    print("# Stop 34, H200 rounds 6-9: each recipe over its seeds\n")
    print(f"Base and trained rows identical in all {len(procs)} processes; round 9's `turn` "
          f"(coef_patience 15) equals round 8's `turn60` (no patience) record for record: {same}.\n")
    print("Gap closed of each record's Rouge-L averaged over the recipe's seeds, paired bootstrap "
          "95 % over records; per seed: each seed's own point; M: blended spa's, seed mean.\n")
    print("| recipe | user | seeds | full | gap closed full [95 %] | per seed (full) | spa | "
          "gap closed spa [95 %] | M spa |")
    print("|---|---|---:|---:|---|---|---:|---|---:|")
    for name, runs in RECIPES.items():
        for key in (*USERS, "all"):
            us = USERS if key == "all" else (key,)
            base = [s for u in us for s in ref[u]["base"]]
            out = [name if key == "ada" else "", key, str(len(runs))]
            for mode in ("full", "spa"):
                per = [[s for u in us for s in scores(p, u, f"{v} {mode}")] for p, v in runs]
                mean = [statistics.fmean(r) for r in zip(*per, strict=True)]
                trained = [s for u in us for s in ref[u][f"trained {mode}"]]
                p, lo, hi = gap_interval(base, mean, trained)
                out += [f"{statistics.fmean(mean):.1f}", f"{p:.2f} [{lo:.2f}, {hi:.2f}]"]
                if mode == "full":
                    out.append(", ".join(f"{gap_interval(base, x, trained, n=1)[0]:.2f}" for x in per))
            m = [rows(p, u)[f"{v} spa"]["m"] for p, v in runs for u in us]
            out.append(f"{statistics.fmean(m):.3f}")
            print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
