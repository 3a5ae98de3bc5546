"""`spa eval`: Rouge-L with a 95% bootstrap interval, M, side usage, corrections and tokens/s per
mode; paired bootstraps of spa against the other modes; Rouge-L against M as τ sweeps.

Every generation comes from the batched generator (which equals the reference generator, the
oracle the distributed system is checked against, token for token on CPU in fp32), greedy,
so the figures are reproducible.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cloud_worker.backbone import Backbone
from edge_agent.budget import BudgetConfig
from edge_agent.edge_model import EdgeModel
from lab.batched import BatchConfig, BatchedGenerator
from lab.data import Example
from lab.training import NEVER
from routing.errors import InputError
from routing.modes import Mode
from routing.transmissions import Transmissions

BOOTSTRAP = 10_000  # resamples for intervals; sane range 1k–100k
CONFIDENCE = 0.95


def bootstrap_ci(scores: list[float], n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over records."""
    x = torch.tensor(scores, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randint(0, len(x), (n, len(x)), generator=g)].mean(1)
    a = (1 - CONFIDENCE) / 2
    return float(torch.quantile(means, a)), float(torch.quantile(means, 1 - a))


def paired_bootstrap(a: list[float], b: list[float], n: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Mean of a − b over the same records, its percentile interval, and the share of
    resamples where a − b ≤ 0 (a one-sided p-value for 'a is better')."""
    if len(a) != len(b):
        raise InputError(f"paired bootstrap needs the same records: {len(a)} vs {len(b)}")
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, len(d), (n, len(d)), generator=g)].mean(1)
    al = (1 - CONFIDENCE) / 2
    return {"diff": float(d.mean()), "lo": float(torch.quantile(means, al)),
            "hi": float(torch.quantile(means, 1 - al)), "p_le_0": float((means <= 0).double().mean())}


def rouge_scorer_l():
    """The project's one Rouge-L scorer setting (stemmed)."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_scores(scorer, tokenizer, refs: list[str], generated: list[list[int]]) -> list[float]:
    """Rouge-L F × 100 of each generation (decoded, special tokens dropped) against its reference."""
    return [100 * scorer.score(ref.strip(), tokenizer.decode(t, skip_special_tokens=True).strip())
            ["rougeL"].fmeasure for ref, t in zip(refs, generated, strict=True)]


@dataclass
class ModeResult:
    mode: str
    rouge_l: float  # mean F-measure × 100
    stats: Transmissions
    tokens_per_s: float
    tau: float | None = None
    examples: int = 0
    scores: list[float] = field(default_factory=list, repr=False)  # per record, × 100
    ci: tuple[float, float] = (0.0, 0.0)
    seconds: float = 0.0
    sessions: list[tuple[int, float]] = field(default_factory=list, repr=False)  # (tokens, M) each

    def row(self) -> dict:
        return {"mode": self.mode, "rouge_l": round(self.rouge_l, 2),
                "ci95": [round(self.ci[0], 2), round(self.ci[1], 2)], "m": round(self.stats.m, 4),
                "side_rate": round(self.stats.side_rate, 4),
                "correction_rate": round(self.stats.correction_rate, 4),
                "tokens": self.stats.tokens, "tokens_per_s": round(self.tokens_per_s, 1),
                "seconds": round(self.seconds, 2), "tau": self.tau, "examples": self.examples}


class Evaluator:
    def __init__(self, backbone: Backbone, edge: EdgeModel | None, max_prompt_tokens: int = 384,
                 max_new_tokens: int = 48, batch_size: int = 64, progress: bool = True) -> None:
        if edge is not None:
            edge.to(backbone.device)
        self.gen = BatchedGenerator(backbone, edge, BatchConfig(batch_size, progress=progress))
        self.edge = edge
        self.tok = backbone.tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.scorer = rouge_scorer_l()
        self._prompts: dict[int, list[int]] = {}

    def prompt(self, ex: Example) -> list[int]:
        if id(ex) not in self._prompts:
            self._prompts[id(ex)] = ex.prompt_ids(self.tok, self.max_prompt_tokens)
        return self._prompts[id(ex)]

    def run_mode(self, mode: Mode, examples: list[Example], threshold: float | None = None,
                 ci: bool = True, budget: BudgetConfig | None = None,
                 wire_dtype: str = "fp16") -> ModeResult:
        head = self.edge.head_for(mode) if mode.gated else None
        saved = head.threshold if head else None
        if head is not None and threshold is not None:
            head.threshold = threshold
        try:
            started = time.perf_counter()
            gens = self.gen.generate([self.prompt(ex) for ex in examples], self.max_new_tokens,
                                     mode, desc=f"eval {mode.value}", budget=budget,
                                     wire_dtype=wire_dtype)
            seconds = time.perf_counter() - started
            scores = rouge_scores(self.scorer, self.tok, [ex.answer for ex in examples],
                                  [g.tokens for g in gens])
            stats = Transmissions()
            for gen in gens:
                stats += gen.stats
            return ModeResult(mode.value, statistics.fmean(scores), stats,
                              stats.tokens / max(seconds, 1e-9), head.tau if head else None,
                              len(examples), scores, bootstrap_ci(scores) if ci else (0.0, 0.0),
                              seconds, [(g.stats.tokens, g.stats.m) for g in gens])
        finally:
            if head is not None:
                head.threshold = saved


def budget_curve(ev: Evaluator, examples: list[Example], budgets: list[float],
                 mode: Mode = Mode.SPA, long: int = 64) -> list[dict]:
    """Rouge-L and M per session budget b (issue 17 item 3): the aggregate M, and per session
    |M − b| — for every session, and for those of `long`+ tokens (the band's promise)."""
    rows = []
    for b in budgets:
        r = ev.run_mode(mode, examples, budget=BudgetConfig(m_budget=b))
        dev = [abs(m - b) for _, m in r.sessions]
        dev_long = [abs(m - b) for t, m in r.sessions if t >= long]
        rows.append({**r.row(), "budget": b,
                     "sessions_within_005": sum(d <= 0.05 for d in dev) / len(dev),
                     "long_sessions": len(dev_long),
                     "long_within_005": (sum(d <= 0.05 for d in dev_long) / len(dev_long)
                                         if dev_long else None),
                     "max_dev_long": max(dev_long) if dev_long else None,
                     "scores": [round(x, 3) for x in r.scores]})
        print(f"budget {b}: Rouge-L {r.rouge_l:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}], M {r.stats.m:.3f}, "
              f"{rows[-1]['sessions_within_005']:.0%} of sessions within 0.05"
              + (f"; of the {len(dev_long)} with ≥ {long} tokens {rows[-1]['long_within_005']:.0%} "
                 f"(max |M − b| {rows[-1]['max_dev_long']:.3f})" if dev_long else ""), flush=True)
    return rows


def markdown_table(results: list[ModeResult]) -> str:
    lines = ["| mode | Rouge-L [95% CI] | M | side usage | corrections / token | tokens/s | τ |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        tau = "—" if r.tau is None else f"{r.tau:.3f}"
        lines.append(f"| {r.mode} | {r.rouge_l:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}] | {r.stats.m:.3f} | "
                     f"{r.stats.side_rate:.3f} | {r.stats.correction_rate:.3f} | "
                     f"{r.tokens_per_s:.0f} | {tau} |")
    return "\n".join(lines)


def paired_table(pairs: dict[str, dict]) -> str:
    lines = ["| comparison | Δ Rouge-L | 95% CI | P(Δ ≤ 0) |", "|---|---:|---:|---:|"]
    for name, p in pairs.items():
        lines.append(f"| {name} | {p['diff']:+.2f} | [{p['lo']:+.2f}, {p['hi']:+.2f}] | "
                     f"{p['p_le_0']:.4f} |")
    return "\n".join(lines)


def sweep_thresholds(edge: EdgeModel, mode: Mode) -> list[float]:
    """Thresholds from never-fire to always-fire: on-policy dev quantiles recorded at training,
    and the calibrated one."""
    head = edge.head_for(mode)
    table = head.info.get("calibration", {}).get("sweep_thresholds") or [NEVER, 0.0, -NEVER]
    return sorted(set(table + [head.threshold]), reverse=True)


def plot(points: dict[str, list[tuple[float, float]]], fixed: list[ModeResult], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for mode, pts in points.items():
        pts = sorted(pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=f"{mode} (τ sweep)")
    for r in fixed:
        ax.errorbar([r.stats.m], [r.rouge_l], yerr=[[r.rouge_l - r.ci[0]], [r.ci[1] - r.rouge_l]],
                    marker="s", ms=6, capsize=3, zorder=3, ls="none")
        ax.annotate(r.mode, (r.stats.m, r.rouge_l), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("M (blocking transmissions per token)")
    ax.set_ylabel("Rouge-L")
    ax.set_title("Rouge-L vs M (squares: fixed modes, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def run_eval(backbone: Backbone, edge: EdgeModel | None, examples: list[Example], modes: list[Mode],
             json_out: Path | None, plot_out: Path | None, sweep_limit: int = 0,
             max_new_tokens: int = 48, max_prompt_tokens: int = 384, progress: bool = True,
             batch_size: int = 64, budgets: list[float] | None = None, budget_tokens: int = 64) -> dict:
    """All `modes` on `examples`, the paired comparisons of spa, (with a plot path) the τ
    sweep on the first `sweep_limit` examples (0 = all), and (with `budgets`) spa under each
    per-session M budget, generating up to `budget_tokens`, beside base and full at that length."""
    for m in modes:
        if m.uses_side and (edge is None or not edge.supports(m)):
            raise InputError(f"mode {m.value} is not supported by this bundle")
    ev = Evaluator(backbone, edge, max_prompt_tokens, max_new_tokens, batch_size, progress)
    started = time.time()
    results = [ev.run_mode(m, examples) for m in modes]
    by = {r.mode: r for r in results}
    print(markdown_table(results), flush=True)
    pairs = {f"spa − {o}": paired_bootstrap(by["spa"].scores, by[o].scores)
             for o in ("full", "lst", "choice", "base") if "spa" in by and o in by}
    if "lst" in by and "base" in by:  # issue 17: does the LST baseline improve on the backbone?
        pairs["lst − base"] = paired_bootstrap(by["lst"].scores, by["base"].scores)
    if "full" in by and "spa" in by:
        pairs["spa − 0.97 × full"] = paired_bootstrap(by["spa"].scores,
                                                      [0.97 * s for s in by["full"].scores])
    if pairs:
        print(paired_table(pairs), flush=True)
    sweeps: dict[str, list[tuple[float, float]]] = {}
    sweep_rows = []
    gated = [m for m in modes if m.gated]
    if plot_out is not None and gated:
        sub = examples[: sweep_limit or None]
        for m in gated:
            for thr in sweep_thresholds(edge, m):
                r = ev.run_mode(m, sub, threshold=thr)
                sweeps.setdefault(m.value, []).append((r.stats.m, r.rouge_l))
                sweep_rows.append({**r.row(), "threshold": thr})
        fixed = (results if len(sub) == len(examples) else
                 [ev.run_mode(m, sub) for m in modes if not m.gated])
        plot(sweeps, [r for r in fixed if r.mode not in sweeps], plot_out)
        print(f"plot: {plot_out}", flush=True)
    budget_rows: list[dict] = []
    if budgets:
        ev_b = Evaluator(backbone, edge, max_prompt_tokens, budget_tokens, batch_size, progress)
        for m in (Mode.BASE, Mode.FULL):
            if m in modes:
                r = ev_b.run_mode(m, examples)
                budget_rows.append({**r.row(), "budget": None, "scores": [round(x, 3) for x in r.scores]})
        budget_rows += budget_curve(ev_b, examples, budgets)
    report = {"results": [r.row() for r in results], "paired": pairs, "sweep": sweep_rows,
              "budget": budget_rows, "budget_tokens": budget_tokens,
              "scores": {r.mode: [round(s, 3) for s in r.scores] for r in results},
              "examples": len(examples), "max_new_tokens": max_new_tokens,
              "max_prompt_tokens": max_prompt_tokens, "backbone": backbone.source,
              "backbone_fingerprint": backbone.fingerprint, "device": str(backbone.device),
              "seconds": round(time.time() - started, 1)}
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
    return report
