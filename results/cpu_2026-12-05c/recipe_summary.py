"""Stop 36: recipes against a reference recipe on the same users and seeds (same_blend.py JSONs)
— full and spa Rouge-L and M per user over the seeds, and each recipe − the reference per user
and pooled, paired 95 % over seed-mean records.

    python results/cpu_2026-12-05c/recipe_summary.py REF.json:RECIPE OTHER.json:RECIPE … > out.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent.parent)]

from lab.evaluate import paired_bootstrap  # noqa: E402

USERS = ("bo", "ada", "cy")


def seed_means(runs: dict, recipe: str, user: str, mode: str, seeds: list[int]) -> list[float]:
    """Per held-out record, the mean Rouge-L over `seeds`."""
    return [statistics.fmean(x) for x in zip(*(runs[f"{user} s{s} {recipe}"][mode]["scores"] for s in seeds),
                                             strict=True)]


def main() -> None:
    specs = [(json.loads(Path(p).read_text())["runs"], r) for p, r in (a.rsplit(":", 1) for a in sys.argv[1:])]
    (ref, ref_name), others = specs[0], specs[1:]
    print(f"Reference: `{sys.argv[1]}`. Seed means; Δ = recipe − reference, paired 95 % over records.\n")
    print("| user | recipe | seeds | full | spa | M spa | Δ full | Δ spa |")
    print("|---|---|---:|---:|---:|---:|---|---|")
    pooled: dict[str, dict[str, tuple[list, list]]] = {}
    for u in USERS:
        for runs, name in [(ref, ref_name)] + others:
            seeds = [s for s in range(12) if f"{u} s{s} {name}" in runs and f"{u} s{s} {ref_name}" in ref]
            if not seeds:
                continue
            cells = []
            for mode in ("full", "spa"):
                mine, base = seed_means(runs, name, u, mode, seeds), seed_means(ref, ref_name, u, mode, seeds)
                a, b = pooled.setdefault(name, {}).setdefault(mode, ([], []))
                a.extend(mine)
                b.extend(base)
                d = paired_bootstrap(mine, base)
                cells.append((statistics.fmean(mine), f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"))
            m = statistics.fmean(runs[f"{u} s{s} {name}"]["spa"]["m"] for s in seeds)
            print(f"| {u} | {name} | {len(seeds)} | {cells[0][0]:.2f} | {cells[1][0]:.2f} | {m:.3f} "
                  f"| {'—' if name == ref_name and runs is ref else cells[0][1]} "
                  f"| {'—' if name == ref_name and runs is ref else cells[1][1]} |")
    for _, name in others:
        parts = []
        for mode, (a, b) in pooled[name].items():
            d = paired_bootstrap(a, b)
            parts.append(f"{mode} {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        print(f"\npooled {name} − {ref_name}: " + ", ".join(parts) + f" over {len(a)} seed-mean records")


if __name__ == "__main__":
    main()
