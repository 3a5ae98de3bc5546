"""Stop 37's device rounds 14-17 (an H100 host; no H200 was lent): the copy rule beside the
default, merged per recipe over its seeds.

The blends are deterministic (the same recipe and seed gives the same records in every round:
checked); the trained comparator is not across rounds 16-17, which reused round 15's pools, so
each run's gap is against its own round's comparator — full against its `trained full`, spa
against its `trained spa` with the same gate rule (copy and fire rate too: GATE_KEYS), seed
means of those rows per record. Δ: the recipe's blended spa (full) − the default's at the same
seeds, seed means per record, paired 95 %. Blend seconds: wall time of each blend on its
process's 2 cores with six processes busy.

    python results/h100_2026-12-05/merge15.py > results/h100_2026-12-05/merged15.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from lab.blend_report import gap_interval  # noqa: E402
from lab.evaluate import paired_bootstrap  # noqa: E402

USERS = ("ada", "bo", "cy")
S = ("", "@s1", "@s2")
DEFAULT = [("r14/a", "blended"), ("r14/b", "s3")]  # seeds 0-2, 3-5
RECIPES = {
    "default (copy 0, fire rate 0.4)": DEFAULT,
    "**copy 1**": [("r15/a", "copy1"), ("r17/a", "c1s3")],
    "copy 2": [("r15/b", "copy2")],
    "copy 1, fire rate 0.35": [("r17/b", "c1f35")],
    "copy 1, fire rate 0.3": [("r16/a", "c1f30")],
    "copy 1, fire rate 0.2": [("r16/b", "c1f20")],
}
PROCS = ("r14/a", "r14/b", "r15/a", "r15/b", "r16/a", "r16/b", "r17/a", "r17/b")


def load(proc: str, user: str) -> dict:
    return json.loads((HERE / proc / user / "blend_quality.json").read_text())["users"][user]


def seed_mean(runs: list[list[float]]) -> list[float]:
    return [statistics.fmean(x) for x in zip(*runs, strict=True)]


def blend_seconds(d: dict, variant: str) -> list[float]:
    recs = [d["blend"]] if variant == "blended" else []
    recs += [x["blend"] for k, x in d.get("variants", {}).items() if k.split("@")[0] == variant]
    return [r["seconds"]["total"] for r in recs]


def trained_row(row: dict, v: str, s: str, mode: str) -> list[float]:
    if mode == "full":
        return row["trained full"]["scores"]
    return row["trained spa" if v in ("blended", "s3") else f"trained spa ({v}{s})"]["scores"]


def main() -> None:
    D = {(p, u): load(p, u) for p in PROCS for u in USERS}
    row = {p: {u: D[p, u]["rows"] for u in USERS} for p in PROCS}
    for u in USERS:  # the blends are the same in every round
        for p in PROCS[1:]:
            assert row[p][u]["blended spa"]["scores"] == row["r14/a"][u]["blended spa"]["scores"], (p, u)
    print("# Stop 37, device rounds 14-17: the copy rule, each recipe over its seeds\n")
    print(__doc__.split("\n\n")[1].replace("\n", " ") + "\n")
    print("| recipe | user | seeds | full | gap full [95 %] | spa | gap spa [95 %] | per seed (spa) | "
          "M spa | M trained spa | Δ spa vs default [95 %] | Δ M | blend s median / max |")
    print("|---|---|---:|---:|---|---:|---|---|---:|---:|---|---:|---|")
    for name, runs in RECIPES.items():
        for key in (*USERS, "all"):
            us = USERS if key == "all" else (key,)
            base = [x for u in us for x in row["r14/a"][u]["base"]["scores"]]
            out = [name if key == "ada" else "", key, str(3 * len(runs))]
            for mode in ("full", "spa"):
                per_seed = [[x for u in us for x in row[p][u][f"{v}{s} {mode}"]["scores"]] for p, v in runs for s in S]
                trained = seed_mean([[x for u in us for x in trained_row(row[p][u], v, s, mode)] for p, v in runs for s in S])
                mean = seed_mean(per_seed)
                g, lo, hi = gap_interval(base, mean, trained)
                out += [f"{statistics.fmean(mean):.1f}", f"{g:.2f} [{lo:.2f}, {hi:.2f}]"]
                if mode == "spa":
                    out.append(", ".join(f"{gap_interval(base, x, trained, n=1)[0]:.2f}" for x in per_seed))
            m = [row[p][u][f"{v}{s} spa"]["m"] for p, v in runs for s in S for u in us]
            mt = [row[p][u]["trained spa" if v in ("blended", "s3") else f"trained spa ({v}{s})"]["m"]
                  for p, v in runs for s in S for u in us]
            k = len(runs)  # the default at the same seeds (0-2, then 3-5)

            def spa_of(rs: list, us: tuple = us) -> list[float]:
                return seed_mean([[x for u in us for x in row[p][u][f"{v}{s} spa"]["scores"]] for p, v in rs for s in S])

            d = paired_bootstrap(spa_of(runs), spa_of(DEFAULT[:k]))
            m0 = [row[p][u][f"{v}{s} spa"]["m"] for p, v in DEFAULT[:k] for s in S for u in us]
            secs = [t for p, v in runs for u in us for t in blend_seconds(D[p, u], v)]
            out += [f"{statistics.fmean(m):.3f}", f"{statistics.fmean(mt):.3f}",
                    f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]" if runs != DEFAULT else "—",
                    f"{statistics.fmean(m) - statistics.fmean(m0):+.3f}",
                    f"{statistics.median(secs):.1f} / {max(secs):.1f}"]
            print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
