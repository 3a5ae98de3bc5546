"""Summary of copy_rate.py's JSON: per user and pooled, each recipe's spa Rouge-L and M (seed
means), and paired 95 % differences of seed means per record.

    python results/cpu_2026-12-05d/copy_rate_summary.py results/cpu_2026-12-05d/copy_rate.json > copy_rate.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

from lab.evaluate import paired_bootstrap  # noqa: E402

PAIRS = (("copy1@0.35", "before"), ("copy1@0.4", "before"), ("copy1@0.35", "copy1@0.4"))


def main() -> None:
    got = json.loads(Path(sys.argv[1]).read_text())
    users = sorted({k.split("/")[0] for k in got})
    names = [k for k in next(iter(got.values())) if k != "full"]
    seeds = sorted({k.split("/")[1] for k in got})
    print(f"# copy rule × fire rate on the 400-record local pool (seeds {', '.join(seeds)})\n")
    print("| user | full | " + " | ".join(f"spa {n} (M)" for n in names) + " | "
          + " | ".join(f"{a} − {b} [95 %]" for a, b in PAIRS) + " |")
    print("|---|---:|" + "---:|" * len(names) + "---|" * len(PAIRS))
    for key in (*users, "all"):
        us = users if key == "all" else [key]
        runs = [got[f"{u}/{s}"] for u in us for s in seeds if f"{u}/{s}" in got]

        def per_record(name: str, us: list = us) -> list[float]:
            return [statistics.fmean(x) for u in us
                    for x in zip(*[got[f"{u}/{s}"][name]["scores"] for s in seeds if f"{u}/{s}" in got], strict=True)]

        out = [key, f"{statistics.fmean(per_record('full')):.1f}"]
        out += [f"{statistics.fmean(per_record(n)):.1f} ({statistics.fmean(r[n]['m'] for r in runs):.3f})" for n in names]
        for a, b in PAIRS:
            d = paired_bootstrap(per_record(a), per_record(b))
            out.append(f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        print("| " + " | ".join(out) + " |")


if __name__ == "__main__":
    main()
