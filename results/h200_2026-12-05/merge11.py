"""Stop 35's H200 rounds 10-13 merged per recipe over every seed it was blended with.

The blends are deterministic (the same recipe and seed gives the same records in every round);
the trained comparator is not across rounds (rounds 12-13 reused round 11's pools, so the
comparator's training drew other random numbers). Every gap is therefore taken against ONE
comparator run, rounds 10-11's (identical in both): full against its `trained full`, spa against
its `trained spa` with the same gate rule — follow 0 (round 10's default), follow 1 (round 11's
default), or a variant's own re-calibrated rows (seed mean). Δ spa: the recipe's blended spa −
the old default's (follow 0) at the seeds both were blended with (0-5, or 0-2), seed means per
record, paired.

    python results/h200_2026-12-05/merge11.py > results/h200_2026-12-05/merged11.md
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
OLD, NEW = ("r10/a", "trained spa"), ("r11/a", "trained spa")  # comparator spa: follow 0, follow 1
RECIPES = {  # name -> ([(process, variant)], comparator spa rows: (process, row) or None = own)
    "old default (follow 0)": ([("r10/a", "blended"), ("r11/a", "nofollows3")], OLD),
    "**new default (follow 1)**": ([("r11/a", "blended"), ("r11/b", "s3"), ("r12/b", "s6"),
                                    ("r13/b", "s9")], NEW),
    "turn rule + follow": ([("r11/a", "turnfollow"), ("r11/b", "turnfollows3"),
                            ("r12/a", "turnfollows6"), ("r13/a", "turnfollows9")], NEW),
    "lead (lead=turn)": ([("r10/b", "lead")], None),
    "lead + follow": ([("r10/a", "leadfollow")], None),
    "fire rate 0.55": ([("r10/a", "r55")], None),
    "turn rule + lead": ([("r10/a", "turnlead")], None),
}


def load(proc: str, user: str) -> dict:
    return json.loads((HERE / proc / user / "blend_quality.json").read_text())["users"][user]


def seed_mean(runs: list[list[float]]) -> list[float]:
    return [statistics.fmean(x) for x in zip(*runs, strict=True)]


def blend_seconds(d: dict, variant: str) -> list[float]:
    recs = [d["blend"]] if variant == "blended" else []
    recs += [x["blend"] for k, x in d.get("variants", {}).items() if k.split("@")[0] == variant]
    return [r["seconds"]["total"] for r in recs]


def main() -> None:
    D = {(p, u): load(p, u) for p in ("r10/a", "r10/b", "r11/a", "r11/b", "r12/a", "r12/b", "r13/a", "r13/b")
         for u in USERS}
    row = {k: {u: v["rows"] for (p, u), v in D.items() if p == k} for k in {p for p, _ in D}}
    for u in USERS:  # the blends are the same in every round; rounds 10-11 share one comparator
        assert row["r10/a"][u]["trained full"]["scores"] == row["r11/b"][u]["trained full"]["scores"], u
        assert all(row[p][u]["blended spa"]["scores"] == row["r11/a"][u]["blended spa"]["scores"] for p in ("r12/a", "r13/b")), u
    print("# Stop 35, H200 rounds 10-13: each recipe over its seeds\n")
    print(__doc__.split("\n\n")[1].replace("\n", " ") + "\n")
    print("| recipe | user | seeds | full | gap full [95 %] | per seed (full) | spa | gap spa [95 %] | "
          "per seed (spa) | M spa | M trained spa | Δ spa vs old default [95 %] | blend s median / max |")
    print("|---|---|---:|---:|---|---|---:|---|---|---:|---:|---|---|")
    old_runs = RECIPES["old default (follow 0)"][0]
    for name, (runs, comp) in RECIPES.items():
        for key in (*USERS, "all"):
            us = USERS if key == "all" else (key,)
            base = [x for u in us for x in row["r10/a"][u]["base"]["scores"]]
            out = [name if key == "ada" else "", key, str(3 * len(runs))]
            m_trained = []
            for mode in ("full", "spa"):
                per_seed = [[x for u in us for x in row[p][u][f"{v}{s} {mode}"]["scores"]] for p, v in runs for s in S]
                if mode == "full":
                    t_rows = {u: [row["r10/a"][u]["trained full"]] for u in us}
                elif comp is not None:
                    t_rows = {u: [row[comp[0]][u][comp[1]]] for u in us}
                else:
                    t_rows = {u: [row[p][u][f"trained spa ({v}{s})"] for p, v in runs for s in S] for u in us}
                trained = [x for u in us for x in seed_mean([r["scores"] for r in t_rows[u]])]
                mean = seed_mean(per_seed)
                p_, lo, hi = gap_interval(base, mean, trained)
                seeds = ", ".join(f"{gap_interval(base, x, trained, n=1)[0]:.2f}" for x in per_seed)
                out += [f"{statistics.fmean(mean):.1f}", f"{p_:.2f} [{lo:.2f}, {hi:.2f}]", seeds]
                m_trained = [r["m"] for u in us for r in t_rows[u]]
            m = [row[p][u][f"{v}{s} spa"]["m"] for p, v in runs for s in S for u in us]
            k = min(len(runs), len(old_runs))  # the seeds both were blended with

            def spa_of(rs: list, us: tuple = us) -> list[float]:
                return seed_mean([[x for u in us for x in row[p][u][f"{v}{s} spa"]["scores"]] for p, v in rs for s in S])

            d = paired_bootstrap(spa_of(runs[:k]), spa_of(old_runs[:k]))
            secs = [t for p, v in runs for u in us for t in blend_seconds(D[p, u], v)]
            out += [f"{statistics.fmean(m):.3f}", f"{statistics.fmean(m_trained):.3f}",
                    f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]",
                    f"{statistics.median(secs):.1f} / {max(secs):.1f}"]
            print("| " + " | ".join(out) + " |")

    a, b = "turn rule + follow", "**new default (follow 1)**"
    print(f"\n{a} − new default (follow 1), the same 12 seeds, seed means per record, paired 95 %:\n")
    print("| user | Δ full | Δ spa | Δ M spa |")
    print("|---|---|---|---:|")
    for key in (*USERS, "all"):
        us = USERS if key == "all" else (key,)
        out = [key]
        for mode in ("full", "spa"):
            x, y = ([x for u in us for x in seed_mean([row[p][u][f"{v}{s} {mode}"]["scores"]
                                                       for p, v in RECIPES[r][0] for s in S])] for r in (a, b))
            d = paired_bootstrap(x, y)
            out.append(f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        m = [statistics.fmean(row[p][u][f"{v}{s} spa"]["m"] for p, v in RECIPES[r][0] for s in S for u in us)
             for r in (a, b)]
        print("| " + " | ".join([*out, f"{m[0] - m[1]:+.3f}"]) + " |")


if __name__ == "__main__":
    main()
