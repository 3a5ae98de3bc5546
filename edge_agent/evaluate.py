"""`spa eval`: Rouge-L, M, side usage, corrections and tokens/s per mode, plus Rouge-L vs M.

Every generation comes from the reference generator (the oracle the distributed system is
checked against), greedy, so the figures are reproducible.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from cloud_worker.backbone import Backbone
from edge_agent.data import Example
from edge_agent.edge_model import EdgeModel
from edge_agent.reference import ReferenceGenerator
from edge_agent.training import NEVER
from routing.errors import InputError
from routing.modes import Mode
from routing.transmissions import Transmissions


@dataclass
class ModeResult:
    mode: str
    rouge_l: float  # mean F-measure × 100
    stats: Transmissions
    tokens_per_s: float
    tau: float | None = None
    examples: int = 0

    def row(self) -> dict:
        return {"mode": self.mode, "rouge_l": round(self.rouge_l, 2), "m": round(self.stats.m, 4),
                "side_rate": round(self.stats.side_rate, 4),
                "correction_rate": round(self.stats.correction_rate, 4),
                "tokens": self.stats.tokens, "tokens_per_s": round(self.tokens_per_s, 1),
                "tau": self.tau, "examples": self.examples}


class Evaluator:
    def __init__(self, backbone: Backbone, edge: EdgeModel | None, max_prompt_tokens: int = 384,
                 max_new_tokens: int = 48) -> None:
        from rouge_score import rouge_scorer

        self.ref = ReferenceGenerator(backbone, edge)
        self.edge = edge
        self.tok = backbone.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def run_mode(self, mode: Mode, examples: list[Example], threshold: float | None = None,
                 progress: bool = True) -> ModeResult:
        from tqdm import tqdm

        head = self.edge.head_for(mode) if mode.gate == "classifier" else None
        saved = head.threshold if head else None
        if head is not None and threshold is not None:
            head.threshold = threshold
        try:
            stats, scores, seconds = Transmissions(), [], 0.0
            for ex in tqdm(examples, desc=f"eval {mode.value}", disable=not progress, leave=False):
                gen = self.ref.generate(ex.prompt_ids(self.tok, self.max_prompt_tokens),
                                        self.max_new_tokens, mode)
                text = self.tok.decode(gen.tokens, skip_special_tokens=True).strip()
                scores.append(self.scorer.score(ex.answer.strip(), text)["rougeL"].fmeasure)
                stats += gen.stats
                seconds += gen.seconds
            return ModeResult(mode.value, 100 * statistics.fmean(scores), stats,
                              stats.tokens / max(seconds, 1e-9), head.tau if head else None,
                              len(examples))
        finally:
            if head is not None:
                head.threshold = saved


def markdown_table(results: list[ModeResult]) -> str:
    lines = ["| mode | Rouge-L | M | side usage | corrections | tokens/s | τ |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        tau = "—" if r.tau is None else f"{r.tau:.3f}"
        lines.append(f"| {r.mode} | {r.rouge_l:.2f} | {r.stats.m:.3f} | {r.stats.side_rate:.3f} | "
                     f"{r.stats.correction_rate:.3f} | {r.tokens_per_s:.0f} | {tau} |")
    return "\n".join(lines)


def sweep_thresholds(edge: EdgeModel, mode: Mode) -> list[float]:
    """Thresholds from never-fire to always-fire: dev-set quantiles recorded at training, and
    the calibrated one."""
    head = edge.head_for(mode)
    table = head.info.get("calibration", {}).get("sweep_thresholds") or [NEVER, 0.0, -NEVER]
    return sorted(set(table + [head.threshold]), reverse=True)


def plot(points: dict[str, list[tuple[float, float]]], fixed: list[ModeResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mode, pts in points.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{mode} (τ sweep)")
    for r in fixed:
        ax.scatter([r.stats.m], [r.rouge_l], marker="s", s=50, zorder=3)
        ax.annotate(r.mode, (r.stats.m, r.rouge_l), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("M (blocking transmissions per token)")
    ax.set_ylabel("Rouge-L")
    ax.set_title("Rouge-L vs M")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def run_eval(backbone: Backbone, edge: EdgeModel | None, examples: list[Example], modes: list[Mode],
             json_out: Path | None, plot_out: Path | None, sweep_limit: int = 40,
             max_new_tokens: int = 48, max_prompt_tokens: int = 384, progress: bool = True) -> dict:
    for m in modes:
        if m is not Mode.BASE and (edge is None or not edge.supports(m)):
            raise InputError(f"mode {m.value} is not supported by this bundle")
    ev = Evaluator(backbone, edge, max_prompt_tokens, max_new_tokens)
    started = time.time()
    results = [ev.run_mode(m, examples, progress=progress) for m in modes]
    print(markdown_table(results), flush=True)
    sweeps: dict[str, list[tuple[float, float]]] = {}
    sweep_rows = []
    gated = [m for m in modes if m.gate == "classifier"]
    if plot_out is not None and gated:
        sub = examples[:sweep_limit]
        for m in gated:
            for thr in sweep_thresholds(edge, m):
                r = ev.run_mode(m, sub, threshold=thr, progress=False)
                sweeps.setdefault(m.value, []).append((r.stats.m, r.rouge_l))
                sweep_rows.append(r.row())
        fixed = [ev.run_mode(m, sub, progress=False) for m in modes if m.gate != "classifier"]
        plot(sweeps, fixed, plot_out)
        print(f"plot: {plot_out}")
    report = {"results": [r.row() for r in results], "sweep": sweep_rows,
              "examples": len(examples), "max_new_tokens": max_new_tokens,
              "backbone": backbone.source, "backbone_fingerprint": backbone.fingerprint,
              "seconds": round(time.time() - started, 1)}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    return report
