"""The XSum table over training seeds, from the run directories `benchmarks/spa_xsum.py` wrote
(eval.json, budget.json, bundle_record.json each): Rouge-L per mode as the mean over seeds with
its min–max, spa ÷ full per seed, the paired bootstraps per seed, gate AUC, the M where the τ
sweep first reaches 0.97 × full, Rouge-L at M 0.3 / 0.5 (linear between sweep points), and the
M-budget curve.

    python benchmarks/seed_table.py runs/s0 runs/s1 runs/s2 [--label g0=runs/g0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _ms(v: list[float], fmt: str = "{:.2f}") -> str:
    return (fmt.format(statistics.fmean(v)) + (f" [{fmt.format(min(v))}, {fmt.format(max(v))}]"
                                                 if len(v) > 1 else ""))


def _at(points: list[tuple[float, float]], m: float) -> float:
    """Rouge-L at M = m, linear between the sweep's points (sorted by M)."""
    pts = sorted(points)
    for (m0, r0), (m1, r1) in zip(pts, pts[1:], strict=False):
        if m0 <= m <= m1:
            return r0 if m1 == m0 else r0 + (r1 - r0) * (m - m0) / (m1 - m0)
    return float("nan")


def load(run: Path) -> dict:
    ev = json.loads((run / "eval.json").read_text())
    res = {r["mode"]: r for r in ev["results"]}
    spa = [(r["m"], r["rouge_l"]) for r in ev["sweep"] if r["mode"] == "spa"]
    full = res["full"]["rouge_l"]
    reach = min((m for m, r in spa if r >= 0.97 * full), default=float("nan"))
    rec = json.loads((run / "bundle_record.json").read_text())["record"]["heads"]
    out = {"res": res, "paired": ev["paired"], "scores": ev.get("scores", {}), "reach": reach,
           "at03": _at(spa, 0.3), "at05": _at(spa, 0.5),
           "auc": rec["add"]["calibration"]["clf_auc_dev"],
           "auc_choice": rec.get("replace", {}).get("calibration", {}).get("clf_auc_dev")}
    if (run / "budget.json").is_file():
        out["budget"] = json.loads((run / "budget.json").read_text())
    return out


def seed_mean_paired(runs: list[dict], comparison: str) -> dict | None:
    """'a − b' (b may be 'c × mode') over the seeds' common records: each record's difference
    averaged over the training seeds, then the paired bootstrap over records — the interval of
    the seed-averaged system (the same records in every seed are not counted as new ones)."""
    from lab.evaluate import paired_bootstrap

    left, _, right = comparison.partition(" − ")
    factor, _, mode = right.rpartition(" × ")
    scale = float(factor) if factor else 1.0
    if any(left not in r["scores"] or mode not in r["scores"] for r in runs):
        return None
    n = len(runs)
    a = [sum(r["scores"][left][i] for r in runs) / n for i in range(len(runs[0]["scores"][left]))]
    b = [scale * sum(r["scores"][mode][i] for r in runs) / n for i in range(len(a))]
    return paired_bootstrap(a, b)


def table(runs: list[dict], title: str) -> None:
    print(f"\n### {title}: {len(runs)} training seed(s), mean [min, max]\n")
    print("| mode | Rouge-L | M | side usage |\n|---|---:|---:|---:|")
    for mode in ("base", "lst", "full", "choice", "spa"):
        rows = [r["res"][mode] for r in runs if mode in r["res"]]
        print(f"| {mode} | {_ms([x['rouge_l'] for x in rows])} | {_ms([x['m'] for x in rows], '{:.3f}')} | "
              f"{_ms([x['side_rate'] for x in rows], '{:.3f}')} |")
    ratio = [r["res"]["spa"]["rouge_l"] / r["res"]["full"]["rouge_l"] for r in runs]
    print(f"\nspa ÷ full {_ms(ratio, '{:.3f}')}; gate AUC (dev) {_ms([r['auc'] for r in runs], '{:.3f}')}; "
          f"M where the sweep first reaches 0.97 × full {_ms([r['reach'] for r in runs], '{:.3f}')}; "
          f"spa Rouge-L at M 0.3 {_ms([r['at03'] for r in runs])}, at M 0.5 {_ms([r['at05'] for r in runs])}")
    pooled = len(runs) > 1
    print("\n| comparison | " + " | ".join(f"seed {i}" for i in range(len(runs)))
          + (" | seed mean per record |" if pooled else " |"))
    print("|---|" + "---:|" * (len(runs) + pooled))
    for k in runs[0]["paired"]:
        cells = [f"{p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]" for p in (r["paired"][k] for r in runs)]
        if pooled:
            p = seed_mean_paired(runs, k)
            cells.append(f"{p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]" if p else "—")
        print(f"| {k} | " + " | ".join(cells) + " |")
    if all("budget" in r for r in runs):
        tokens = runs[0]["budget"]["budget_tokens"]
        print(f"\nM budget ({tokens} new tokens; the fixed-τ rows for comparison):\n")
        print("| budget b | Rouge-L | M (all sessions) | sessions within ±0.05 | sessions ≥ "
              f"{tokens} tokens within ±0.05 | max |M − b| there |\n|---|---:|---:|---:|---:|---:|")
        keys = [(row["mode"], row["budget"]) for row in runs[0]["budget"]["rows"]]
        for i, (mode, b) in enumerate(keys):
            rows = [r["budget"]["rows"][i] for r in runs]
            if b is None:
                print(f"| {mode} (fixed τ) | {_ms([x['rouge_l'] for x in rows])} | "
                      f"{_ms([x['m'] for x in rows], '{:.3f}')} | | | |")
                continue
            longs = [x["long_within_005"] for x in rows if x["long_within_005"] is not None]
            print(f"| spa, b = {b} | {_ms([x['rouge_l'] for x in rows])} | {_ms([x['m'] for x in rows], '{:.3f}')} "
                  f"| {_ms([100 * x['sessions_within_005'] for x in rows], '{:.0f}')} % | "
                  f"{_ms([100 * v for v in longs], '{:.0f}')} % ({sum(x['long_sessions'] for x in rows)} sessions) | "
                  f"{max(x['max_dev_long'] or 0 for x in rows):.3f} |")


def wire_table(runs: list[Path]) -> None:
    """Issue 22: the runs' (training seeds') wire.json rows pooled (lab.wire_quality.pooled_rows)."""
    from lab.wire_quality import pooled_rows, print_pooled

    rows = pooled_rows([json.loads((r / "wire.json").read_text())["rows"] for r in runs])
    print(f"\nwire dtypes, pooled over {len(runs)} runs (records × seeds, paired against fp16/fp32)\n")
    print_pooled(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--label", action="append", default=[], help="NAME=DIR: a variant shown apart")
    p.add_argument("--title", default="XSum, SmolLM2-135M-Instruct", help="the table's task")
    p.add_argument("--smoke", action="store_true", help="the table of the committed H200 runs (results/issue17)")
    p.add_argument("--wire", action="store_true", help="issue 22: the runs' wire.json pooled over seeds")
    args = p.parse_args()
    if args.smoke:
        args.runs = sorted((Path(__file__).resolve().parent.parent / "results" / "issue17").glob("run_s*"))
    if not args.runs:
        p.error("give the run directories (each with eval.json and bundle_record.json)")
    if args.wire:
        wire_table(args.runs)
        return
    table([load(r) for r in args.runs], args.title)
    for lab in args.label:
        name, _, d = lab.partition("=")
        table([load(Path(x)) for x in d.split(",")], name)


if __name__ == "__main__":
    main()
