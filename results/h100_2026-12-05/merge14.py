"""Stop 37's device round 14 (an H100 host: no H200 was lent) merged per recipe over its seeds.

Both processes of a user built the same pool and trained the same comparator (checked), so every
gap is against one comparator: full against its `trained full`, spa against its `trained spa`
(the same gate rule). Δ: new default − previous recipe at the seeds both were blended with (0-2),
seed means per record, paired 95 %. Blend seconds: wall time of each blend on its process's 2
cores with six processes busy (the host: 16-core Xeon, results r14/lscpu.txt).

    python results/h100_2026-12-05/merge14.py > results/h100_2026-12-05/merged14.md
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
RECIPES = {"**new default** (turn rule, §10.11)": [("r14/a", "blended"), ("r14/b", "s3")],
           "previous recipe (last, 15 steps)": [("r14/a", "last")]}


def load(proc: str, user: str) -> dict:
    return json.loads((HERE / proc / user / "blend_quality.json").read_text())["users"][user]


def seed_mean(runs: list[list[float]]) -> list[float]:
    return [statistics.fmean(x) for x in zip(*runs, strict=True)]


def blend_seconds(d: dict, variant: str) -> list[float]:
    recs = [d["blend"]] if variant == "blended" else []
    recs += [x["blend"] for k, x in d.get("variants", {}).items() if k.split("@")[0] == variant]
    return [r["seconds"]["total"] for r in recs]


def main() -> None:
    D = {(p, u): load(p, u) for p in ("r14/a", "r14/b") for u in USERS}
    row = {p: {u: D[p, u]["rows"] for u in USERS} for p in ("r14/a", "r14/b")}
    for u in USERS:
        for k in ("trained full", "trained spa", "blended spa", "blended full"):
            assert row["r14/a"][u][k]["scores"] == row["r14/b"][u][k]["scores"], (u, k)
    print("# Stop 37, device round 14: each recipe over its seeds\n")
    print(__doc__.split("\n\n")[1].replace("\n", " ") + "\n")
    print("| recipe | user | seeds | full | gap full [95 %] | per seed (full) | spa | gap spa [95 %] | "
          "per seed (spa) | M spa | M trained spa | blend s median / max | blends > 10 s |")
    print("|---|---|---:|---:|---|---|---:|---|---|---:|---:|---|---:|")
    for name, runs in RECIPES.items():
        for key in (*USERS, "all"):
            us = USERS if key == "all" else (key,)
            base = [x for u in us for x in row["r14/a"][u]["base"]["scores"]]
            out = [name if key == "ada" else "", key, str(3 * len(runs))]
            for mode in ("full", "spa"):
                per_seed = [[x for u in us for x in row[p][u][f"{v}{s} {mode}"]["scores"]] for p, v in runs for s in S]
                trained = [x for u in us for x in row["r14/a"][u][f"trained {mode}"]["scores"]]
                mean = seed_mean(per_seed)
                g, lo, hi = gap_interval(base, mean, trained)
                seeds = ", ".join(f"{gap_interval(base, x, trained, n=1)[0]:.2f}" for x in per_seed)
                out += [f"{statistics.fmean(mean):.1f}", f"{g:.2f} [{lo:.2f}, {hi:.2f}]", seeds]
            m = [row[p][u][f"{v}{s} spa"]["m"] for p, v in runs for s in S for u in us]
            mt = [row["r14/a"][u]["trained spa"]["m"] for u in us]
            secs = [t for p, v in runs for u in us for t in blend_seconds(D[p, u], v)]
            out += [f"{statistics.fmean(m):.3f}", f"{statistics.fmean(mt):.3f}",
                    f"{statistics.median(secs):.1f} / {max(secs):.1f}", f"{sum(t > 10 for t in secs)} of {len(secs)}"]
            print("| " + " | ".join(out) + " |")
    (a, ra), (b, rb) = RECIPES.items()
    print(f"\n{a} − {b}, seeds 0-2, seed means per record, paired 95 %:\n")
    print("| user | Δ full | Δ spa | Δ M spa |")
    print("|---|---|---|---:|")
    for key in (*USERS, "all"):
        us = USERS if key == "all" else (key,)
        out = [key]
        for mode in ("full", "spa"):
            x, y = ([x for u in us for x in seed_mean([row[p][u][f"{v}{s} {mode}"]["scores"] for p, v in r[:1] for s in S])]
                    for r in (ra, rb))
            d = paired_bootstrap(x, y)
            out.append(f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        m = [statistics.fmean(row[p][u][f"{v}{s} spa"]["m"] for p, v in r[:1] for s in S for u in us) for r in (ra, rb)]
        print("| " + " | ".join([*out, f"{m[0] - m[1]:+.3f}"]) + " |")


if __name__ == "__main__":
    main()
