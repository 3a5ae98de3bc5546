"""Stop 35: follow.py's seeds pooled — per user and over all three, the seed mean per record of
spa with follow 1, 2 and 1 + lead, paired against follow 0, and the mean M.

    python results/cpu_2026-12-05b/follow_summary.py > results/cpu_2026-12-05b/follow_summary.md
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from lab.evaluate import paired_bootstrap  # noqa: E402

ROWS = ("spa", "spa f1", "spa f2", "spa f1 lead")


def main() -> None:
    runs = {**json.loads((HERE / "follow_s0.json").read_text()), **json.loads((HERE / "follow_s12.json").read_text())}
    users = sorted({k.split()[0] for k in runs})
    print("# follow 0 / 1 / 2 on the CPU: local pool, 48 prompts, seeds 0-2, paired against follow 0\n")
    print("| user | " + " | ".join(f"{r} Rouge-L (M)" for r in ROWS) + " | f1 − f0 | f2 − f0 | f2 − f1 |")
    print("|---|" + "---|" * (len(ROWS) + 3))
    for key in (*users, "all"):
        us = users if key == "all" else [key]
        keys = [k for k in runs if k.split()[0] in us]
        col = {r: [statistics.fmean(y) for u in us for y in zip(  # seed mean per record
            *(runs[k][r]["scores"] for k in keys if k.split()[0] == u), strict=True)] for r in ROWS}
        cells = [f"{statistics.fmean(col[r]):.1f} ({statistics.fmean(runs[k][r]['m'] for k in keys):.3f})" for r in ROWS]
        for a, b in (("spa f1", "spa"), ("spa f2", "spa"), ("spa f2", "spa f1")):
            d = paired_bootstrap(col[a], col[b])
            cells.append(f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
