"""Training the gate: the classifier that decides per token whether the side network's token is
worth a REQUEST, and its threshold τ (DESIGN.md §2).

Classifier, on z (optionally with the backbone distribution's confidence): on-policy labels from
batched rollouts with the side always on — 1 where the side token differs from the backbone's —
and/or the mixture likelihood −log((1−g)·P_base(y) + g·P_int(y)) + λ·g on teacher-forced answers
(BCE warm start on 1[P_int(y) > P_base(y)]). τ: bisection on the gate's firing rate, measuring M
of real gated generations (batched) on the held-out dev prompts, to the highest side usage whose
M stays within the target.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from torch import Tensor

from cloud_worker.backbone import Backbone
from edge_agent.edge_model import EdgeModel, Head
from edge_agent.side_network import Classifier
from lab.batched import BatchConfig, BatchedGenerator
from lab.data import Example
from lab.features import Features
from lab.side_training import side_logits
from lab.train_config import TrainConfig
from routing.modes import Combine, Gate, Mode
from routing.transmissions import Transmissions

NEVER = 1e9  # a logit threshold no classifier reaches: the gate never fires


def _mode(combine: Combine, gate: Gate) -> Mode:
    """The mode of the table (routing/modes.py) that runs a head of `combine` under `gate`."""
    return next(m for m in Mode if m.combine == combine and m.gate == gate)


@torch.no_grad()
def _log_probs(edge: EdgeModel, head: Head, feats: Features,
               base_logits: Tensor | None = None) -> tuple[Tensor, ...]:
    """Per position: log P_base(y), log P_side-combined(y), backbone token, side token.
    `base_logits`: lm_head(feats.z) (N, V) when the caller has them already."""
    lpb, lpi, tb, ts = [], [], [], []
    for i, (s, z, y) in enumerate(feats.batches(1024)):  # in order: slice i of base_logits
        base = edge.lm_head(z) if base_logits is None else base_logits[i * 1024 : (i + 1) * 1024]
        base = base.log_softmax(-1)
        side = side_logits(edge, head, s, z).log_softmax(-1)
        lpb.append(base.gather(1, y[:, None])[:, 0])
        lpi.append(side.gather(1, y[:, None])[:, 0])
        tb.append(base.argmax(-1))
        ts.append(side.argmax(-1))
    return torch.cat(lpb), torch.cat(lpi), torch.cat(tb), torch.cat(ts)


@torch.no_grad()
def _clf_inputs(edge: EdgeModel, clf: Classifier, z: Tensor, base_logits: Tensor | None = None) -> Tensor:
    """The classifier's inputs for z (N, d); `base_logits`: lm_head(z) when already computed."""
    if base_logits is not None:
        return clf.features(z, edge.lm_head, base_logits)
    return torch.cat([clf.features(c, edge.lm_head) for c in z.float().split(4096)])


def train_classifier(edge: EdgeModel, head: Head, train: Features, cfg: TrainConfig,
                     policy_z: Tensor, policy_y: Tensor,
                     log_probs: tuple[Tensor, ...] | None = None,
                     base_logits: Tensor | None = None) -> list[dict]:
    """Mixture likelihood on teacher-forced answers and/or BCE on on-policy 'side differs'
    labels (cfg.clf_objective). `log_probs`: `_log_probs(edge, head, train)` when the caller
    has it already; `policy_z` may be `train.z` itself (its features are then computed once);
    `base_logits`: lm_head(train.z) when the caller has them."""
    dev = train.y.device
    clf = Classifier(edge.d_model, cfg.clf_features, cfg.clf_hidden).to(dev)
    head.classifier = clf
    edge.set_head(head)
    use_mix = cfg.clf_objective in ("mixture", "both") and len(train)
    use_pol = cfg.clf_objective in ("onpolicy", "both") and len(policy_y)
    lpb, lpi, _, _ = log_probs if log_probs is not None else _log_probs(edge, head, train)
    x_all = _clf_inputs(edge, clf, train.z, base_logits)
    if not len(policy_y):
        x_pol = x_all[:0]
    elif policy_z is train.z:  # the same positions: their inputs computed once
        x_pol = x_all
    else:
        x_pol = _clf_inputs(edge, clf, policy_z.to(dev))
    policy_y = policy_y.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.lr * 5, weight_decay=0.0)
    history = []
    n_main = len(policy_y) if cfg.clf_objective == "onpolicy" else len(train)
    if cfg.warm_start and use_mix:
        target = (lpi > lpb).float()
        for idx in torch.randperm(len(train), generator=gen).to(dev).split(cfg.batch):
            loss = F.binary_cross_entropy_with_logits(clf.head(x_all[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for epoch in range(cfg.clf_epochs):
        total = 0.0
        for idx in torch.randperm(n_main, generator=gen).to(dev).split(cfg.batch):
            loss = torch.zeros((), device=dev)
            if use_mix:
                midx = idx if cfg.clf_objective != "onpolicy" else idx % len(train)
                logit = clf.head(x_all[midx])
                # log((1−g)·P_base + g·P_int), in log space
                mix = torch.logsumexp(torch.stack(
                    [F.logsigmoid(-logit) + lpb[midx], F.logsigmoid(logit) + lpi[midx]]), dim=0)
                loss = loss + (-mix + cfg.lam * torch.sigmoid(logit)).mean()
            if use_pol:
                pidx = (idx if cfg.clf_objective == "onpolicy" else
                        torch.randint(0, len(policy_y), (len(idx),), generator=gen).to(dev))
                loss = loss + F.binary_cross_entropy_with_logits(clf.head(x_pol[pidx]), policy_y[pidx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "loss": total / max(1, n_main)})
    clf.eval()
    return history


def _prompts(backbone: Backbone, examples: list[Example], cfg: TrainConfig) -> list[list[int]]:
    return [ex.prompt_ids(backbone.tokenizer, cfg.max_prompt_tokens) for ex in examples]


@torch.no_grad()
def rollouts(backbone: Backbone, edge: EdgeModel, head: Head, examples: list[Example],
             cfg: TrainConfig, progress: bool = False) -> tuple[Tensor, Tensor]:
    """On-policy states: generate with the side network always on (the trajectory a firing
    gate follows) and label each position 1 where the side token differs from the backbone's.
    Teacher-forced answers alone leave the gate blind to its own generations."""
    mode = _mode(head.combine, Gate.ALWAYS)
    gen = BatchedGenerator(backbone, edge, BatchConfig(cfg.gen_batch, progress=progress))
    gens = gen.generate(_prompts(backbone, examples, cfg), cfg.rollout_tokens, mode, keep_z=True,
                        desc=f"rollouts {mode.value}", wire_dtype=cfg.wire_dtype)
    zs = [z for g in gens for z in g.z]
    labels = [d for g in gens for d in g.differs]
    return torch.stack(zs).float(), torch.tensor(labels, dtype=torch.float32)


def gated_run(backbone: Backbone, edge: EdgeModel, head: Head, prompts: list[list[int]],
              threshold: float, cfg: TrainConfig) -> tuple[Transmissions, list[list[int]]]:
    """Real gated generations (batched) on `prompts` at `threshold`: their transmission counts
    and tokens."""
    mode = _mode(head.combine, Gate.CLASSIFIER)
    saved, head.threshold = head.threshold, threshold
    try:
        gen = BatchedGenerator(backbone, edge, BatchConfig(cfg.gen_batch, progress=False))
        total, tokens = Transmissions(), []
        for g in gen.generate(prompts, cfg.rollout_tokens, mode, wire_dtype=cfg.wire_dtype):
            total += g.stats
            tokens.append(g.tokens)
        return total, tokens
    finally:
        head.threshold = saved


class DevQuality:
    """Rouge-L (× 100, mean over the dev records) of generated tokens against the references."""

    def __init__(self, tokenizer, examples: list[Example]) -> None:
        from lab.evaluate import rouge_scorer_l  # lab.evaluate imports lab.training: not at load

        self.tok, self.refs, self.scorer = tokenizer, [ex.answer for ex in examples], rouge_scorer_l()

    def __call__(self, tokens: list[list[int]]) -> float:
        from lab.evaluate import rouge_scores

        return statistics.fmean(rouge_scores(self.scorer, self.tok, self.refs, tokens) or [0.0])


def calibrate(backbone: Backbone, edge: EdgeModel, head: Head, dev_ex: list[Example],
              dev: Features, dev_z: Tensor, cfg: TrainConfig) -> dict:
    """τ on held-out prompts: thresholds are quantiles of the classifier logit on on-policy dev
    states at firing rate q; a bisection on q runs real gated generations on the dev prompts and
    keeps, by `cfg.tau_by`, the highest q whose M is within the target ("m") or the lowest q
    whose dev Rouge-L reaches `tau_quality` × the side-always run's ("quality")."""
    logit = head.classifier.logit(dev_z.to(dev.y.device), edge.lm_head).detach().double().cpu()
    dev_ex = dev_ex[: cfg.calib_prompts or None]
    prompts = _prompts(backbone, dev_ex, cfg)
    by_quality = cfg.tau_by == "quality"
    quality = DevQuality(backbone.tokenizer, dev_ex) if by_quality else None

    def thr(q: float) -> float:
        return NEVER if q <= 0 else -NEVER if q >= 1 else float(torch.quantile(logit, 1 - q))

    def run(q: float) -> dict:
        t, tokens = gated_run(backbone, edge, head, prompts, thr(q), cfg)
        row = {"q": q, "threshold": thr(q), "m": t.m, "side_rate": t.side_rate,
               "correction_rate": t.correction_rate}
        return row | ({"rouge_l": quality(tokens)} if quality else {})

    measured: dict[float, dict] = {0.0: {"q": 0.0, "threshold": NEVER, "m": 0.0, "side_rate": 0.0}}
    goal = None
    if by_quality:
        measured[1.0] = run(1.0)
        goal = cfg.tau_quality * measured[1.0]["rouge_l"]
    lo, hi = 0.0, 1.0
    for _ in range(cfg.calib_steps):
        q = (lo + hi) / 2
        measured[q] = r = run(q)
        higher = r["rouge_l"] < goal if by_quality else r["m"] <= cfg.target_m  # q may rise
        lo, hi = (q, hi) if higher else (lo, q)
    best = measured[hi if by_quality else lo]
    lpb, lpi, tb, ts = _log_probs(edge, head, dev)
    fire = head.classifier.logit(dev.z.float(), edge.lm_head) > best["threshold"]
    rates = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8]
    return {
        "threshold": best["threshold"], "m_dev": best["m"], "side_rate_dev": best["side_rate"],
        "target_m": cfg.target_m, "tau_by": cfg.tau_by, "fire_quantile": best["q"],
        "dev_prompts": len(prompts),
        **({"tau_quality": cfg.tau_quality, "rouge_dev_goal": goal,
            "rouge_dev": best.get("rouge_l"), "rouge_dev_always": measured[1.0]["rouge_l"]}
           if by_quality else {}),
        "tau": float(torch.sigmoid(torch.tensor(best["threshold"], dtype=torch.float64))),
        "fire_rate_teacher_forced": fire.float().mean().item(),
        "dev_nll_gated": -torch.where(fire, lpi, lpb).mean().item(),
        "dev_nll_base": -lpb.mean().item(), "dev_nll_side": -lpi.mean().item(),
        "dev_positions": len(dev), "measured": sorted(measured.values(), key=lambda r: r["q"]),
        "sweep_thresholds": [NEVER] + [thr(q) for q in rates] + [-NEVER],
    }


@torch.no_grad()
def auc(score: Tensor, label: Tensor) -> float:
    """Area under the ROC curve (rank statistic; ties counted half)."""
    s, y = score.double().cpu(), label.bool().cpu()
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in torch.unique(s[torch.cat([s[order][1:] == s[order][:-1], torch.tensor([False])])]):
        tie = s == v
        ranks[tie] = ranks[tie].mean()
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))
