"""Stop 36: two trees' blends (same_blend.py's JSON) compared answer for answer — per user × seed ×
recipe the largest coefficient difference, the kept steps, τ, the share of held-out answers
that are token-for-token the same, and Rouge-L; pooled, new − old per record, paired 95 %.

    python results/cpu_2026-12-05c/same_blend_compare.py OLD.json NEW.json > compare.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT)]

from lab.evaluate import paired_bootstrap  # noqa: E402


def main() -> None:
    old, new = (json.loads(Path(p).read_text())["runs"] for p in sys.argv[1:3])
    keys = [k for k in old if k in new]
    print(f"old: {sys.argv[1]}, new: {sys.argv[2]}; {len(keys)} blends, "
          f"{len(old[keys[0]]['full']['scores'])} held-out records each\n")
    print("| blend | max abs Δw | kept step old / new | τ old / new | same answers full / spa "
          "| full old / new | spa old / new | M spa old / new | blend s old / new |")
    print("|---|---:|---|---|---|---|---|---|---|")
    pooled: dict[str, tuple[list, list]] = {"full": ([], []), "spa": ([], [])}
    for recipe in ("default", "turn"):
        for k in (k for k in keys if k.endswith(recipe)):
            a, b = old[k], new[k]
            dw = max(abs(a["coefficients"][m] - b["coefficients"][m]) for m in a["coefficients"])
            same = {m: statistics.fmean(x == y for x, y in zip(a[m]["tokens"], b[m]["tokens"], strict=True))
                    for m in ("full", "spa")}
            for m in pooled:
                pooled[m][0].extend(a[m]["scores"])
                pooled[m][1].extend(b[m]["scores"])
            print(f"| {k} | {dw:.4f} | {a['kept_step']} / {b['kept_step']} | {a['tau']:.5f} / {b['tau']:.5f} "
                  f"| {same['full']:.2f} / {same['spa']:.2f} | {a['full']['rouge_l']:.2f} / {b['full']['rouge_l']:.2f} "
                  f"| {a['spa']['rouge_l']:.2f} / {b['spa']['rouge_l']:.2f} | {a['spa']['m']:.3f} / {b['spa']['m']:.3f} "
                  f"| {a['seconds']['total']:.2f} / {b['seconds']['total']:.2f} |")
    print("\nPooled over every blend and record, new − old (paired bootstrap 95 %):\n")
    for m, (a, b) in pooled.items():
        d = paired_bootstrap(b, a)
        print(f"- {m}: {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] Rouge-L over {len(a)} answers")
    print("\n(The blend seconds come from two runs one after the other, not interleaved: "
          "blend_time.py measures the time.)")


if __name__ == "__main__":
    main()
