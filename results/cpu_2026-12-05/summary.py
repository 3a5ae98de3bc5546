"""The lead's effect over the default recipe's three seeds: each record's spa Rouge-L averaged
over the seeds, lead − none paired per record, per user and all three pooled; M per seed.

    python results/cpu_2026-12-05/summary.py
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from lab.evaluate import paired_bootstrap  # noqa: E402


def main() -> None:
    runs = {**{k.replace(" default", " default@s0"): v for k, v in
               json.loads((HERE / "lead_seed0.json").read_text()).items()},
            **json.loads((HERE / "lead_seeds12.json").read_text())}
    users = ("ada", "bo", "cy")
    pooled = {"spa lead": [], "spa": []}
    print("| user | lead | spa, none (seeds) | spa, lead (seeds) | lead − none, seed mean [95 %] | M none → lead (seed mean) |")
    print("|---|---:|---|---|---|---|")
    for u in (*users, "all"):
        if u == "all":
            a, b, line = pooled["spa lead"], pooled["spa"], ("", "", "", "")
        else:
            seeds = [runs[f"{u} default@s{s}"] for s in range(3)]
            mean = {k: [statistics.fmean(r) for r in zip(*(x[k]["scores"] for x in seeds), strict=True)]
                    for k in ("spa lead", "spa")}
            a, b = mean["spa lead"], mean["spa"]
            pooled["spa lead"] += a
            pooled["spa"] += b
            m = {k: statistics.fmean(x[k]["m"] for x in seeds) for k in ("spa", "spa lead")}
            line = (str(seeds[0]["lead"]), ", ".join(f"{x['spa']['rouge_l']:.1f}" for x in seeds),
                    ", ".join(f"{x['spa lead']['rouge_l']:.1f}" for x in seeds),
                    f"{m['spa']:.3f} → {m['spa lead']:.3f}")
        d = paired_bootstrap(a, b)
        print(f"| {u} | {line[0]} | {line[1]} | {line[2]} | {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}] | {line[3]} |")


if __name__ == "__main__":
    main()
