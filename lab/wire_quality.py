"""One trained bundle under each wire grid and each weight storage (issue 22), paired against
fp16 frames + fp32 weights: what benchmarks/spa_xsum.py (XSum Rouge-L) and
benchmarks/persona_quality.py (the personas' body Rouge-L) both report.

`weight_variants` gives the bundle as trained (fp32) and an int8-stored copy of it loaded back
(int8 codes dequantised at load, as a device loads it); `wire_rows` runs a task's scorer for every
(weights, mode, wire dtype) and pairs each row's per-record scores with the fp16/fp32 row's of the
same mode (`lab.evaluate.paired_bootstrap`, 95 %).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from edge_agent.bundle import load_bundle, save_bundle
from edge_agent.edge_model import EdgeModel
from lab.evaluate import paired_bootstrap
from routing import quant
from routing.modes import Mode
from routing.quant import WireDtype, parse_wire_dtypes

BASELINE = ("fp16", "fp32")  # (wire, weights) every row is paired with

# run(weights, mode, wire) → (per-record scores, the row's other figures: at least "m")
Scorer = Callable[[str, Mode, str], tuple[list[float], dict]]


def weight_variants(backbone, edge: EdgeModel, out: Path) -> dict[str, EdgeModel]:
    """{"fp32": edge, "int8": its int8-stored copy (saved under `out`, loaded back)}, both on the
    backbone's device, both with the kit's wire grid (calibrated here for a kit made before
    issue 22)."""
    saved = save_bundle(copy.deepcopy(edge).cpu(), out / "bundle_int8", weights="int8",
                        kits=out / "kits_int8")
    edges = {"fp32": edge, "int8": load_bundle(saved, backbone.fingerprint, kits=out / "kits_int8")}
    grid = None
    for e in edges.values():
        if e.grid is None:
            grid = grid if grid is not None else quant.calibrate(backbone)
            e.grid = grid
    return {k: e.to(backbone.device) for k, e in edges.items()}


def wire_rows(weights: list[str], modes: list[Mode], wires: str, run: Scorer,
              label: str = "", what: str = "Rouge-L") -> list[dict]:
    """A row per (weights, mode, wire): the scorer's figures, `score` (the mean), and
    `vs_fp16_fp32` (paired bootstrap against the same mode's fp16/fp32 row; None for that row), and
    the per-record `scores` (so several training seeds can be pooled over their records)."""
    order = [w.value for w in parse_wire_dtypes(wires)]
    order = ["fp16"] + [w for w in order if w != WireDtype.FP16.value]  # the baseline first
    weights = ["fp32"] + [w for w in weights if w != "fp32"]
    base: dict[str, list[float]] = {}
    rows = []
    for wt in weights:
        for mode in modes:
            for wire in order:
                scores, fig = run(wt, mode, wire)
                pair = None
                if (wire, wt) == BASELINE:
                    base[mode.value] = scores
                else:
                    pair = paired_bootstrap(scores, base[mode.value])
                mean = sum(scores) / len(scores) if scores else 0.0
                rows.append({**fig, "mode": mode.value, "wire": wire, "weights": wt, "score": mean,
                             "vs_fp16_fp32": pair, "scores": [round(x, 4) for x in scores]})
                d = f" Δ {pair['diff']:+.2f} [{pair['lo']:+.2f}, {pair['hi']:+.2f}]" if pair else ""
                print(f"{label}{mode.value:6} wire {wire:5} weights {wt}: {what} {mean:.2f} "
                      f"M {fig.get('m', float('nan')):.3f}{d}", flush=True)
    return rows


def pooled_rows(tables: list[list[dict]]) -> list[dict]:
    """`wire_rows` tables of several training seeds (same rows, same records) pooled: per (mode,
    wire, weights) the seeds' means and the paired bootstrap of every record of every seed against
    the same seed's fp16/fp32 row of that mode."""
    per: dict[tuple, list[tuple[dict, list[float]]]] = {}
    for rows in tables:
        base = {r["mode"]: r["scores"] for r in rows if (r["wire"], r["weights"]) == BASELINE}
        for r in rows:
            per.setdefault((r["mode"], r["wire"], r["weights"]), []).append((r, base[r["mode"]]))
    out = []
    for (mode, wire, wt), xs in per.items():
        a = [v for r, _ in xs for v in r["scores"]]
        b = [v for _, base in xs for v in base]
        out.append({"mode": mode, "wire": wire, "weights": wt, "seeds": [r["score"] for r, _ in xs],
                    "m": sum(r["m"] for r, _ in xs) / len(xs),
                    "vs_fp16_fp32": None if (wire, wt) == BASELINE else paired_bootstrap(a, b)})
    return out


def print_pooled(rows: list[dict]) -> None:
    """`pooled_rows` as a markdown table."""
    print("| mode | wire | weights | per seed | M | Δ pooled [95% paired] |")
    print("|---|---|---|---|---:|---|")
    for r in rows:
        d = r["vs_fp16_fp32"]
        pair = "—" if d is None else f"{d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
        seeds = ", ".join(f"{x:.2f}" for x in r["seeds"])
        print(f"| {r['mode']} | {r['wire']} | {r['weights']} | {seeds} | {r['m']:.3f} | {pair} |")
