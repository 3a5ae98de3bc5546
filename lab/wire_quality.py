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
