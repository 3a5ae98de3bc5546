"""`spa train`: the side network, then the classifier, with the backbone frozen (DESIGN.md §2).

1. One frozen backbone pass over the task data (large padded batches) collects, at every answer
   position, the states the side network reads (cast to the wire dtype, as served). The side
   network has no attention over positions, so training is a per-position problem.
2. Side network: cross-entropy on P_int = softmax(lm_head(z + Δ)) ('add') or
   P_side = softmax(lm_head(Δ)) ('replace'); dropout and weight decay against overfitting,
   early stopping on the dev NLL (a held-back part of the training records).
3. Classifier, on z (optionally with the backbone distribution's confidence): on-policy labels
   from batched rollouts with the side always on — 1 where the side token differs from the
   backbone's (the positions worth a REQUEST) — and/or the mixture likelihood
   −log((1−g)·P_base(y) + g·P_int(y)) + λ·g on teacher-forced answers (BCE warm start on
   1[P_int(y) > P_base(y)]).
4. τ: bisection on the gate's firing rate, measuring M of real gated generations (batched) on
   the held-out dev prompts, to the highest side usage whose M stays within the target.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from cloud_worker.backbone import Backbone
from edge_agent.edge_model import WIRE_DTYPE, EdgeModel, Head
from edge_agent.side_network import Classifier, SideConfig
from lab.batched import BatchConfig, BatchedGenerator
from lab.data import Example
from routing import quant
from routing.errors import InputError
from routing.modes import Combine, Mode, training_choices, training_heads
from routing.quant import WireDtype
from routing.transmissions import Transmissions

LST_REPLACE = {"side_kind": "lst", "width_div": 2, "dropout": 0.1, "lr": 3e-3}
NEVER = 1e9  # a logit threshold no classifier reaches: the gate never fires
CLF_OBJECTIVES = ("onpolicy", "mixture", "both")


@dataclass
class TrainConfig:
    mode: str = "all"  # spa|full|lst|choice|all: which side networks to train
    target_m: float = 0.62  # sane range 0.05–1.0
    lam: float = 0.05  # λ of the mixture objective, price of using the side; sane range 0–1
    epochs: int = 10  # at most; early stopping on dev NLL; sane range 3–40
    patience: int = 3  # epochs without a better dev NLL before stopping; sane range 1–10
    clf_epochs: int = 6
    lr: float = 1e-3  # peak learning rate; sane range 3e-4–5e-3
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 0.3  # AdamW; sane range 0–0.5
    dropout: float = 0.3  # on the side state; sane range 0–0.5
    batch: int = 256  # positions per step
    dev_fraction: float = 0.1
    max_prompt_tokens: int = 384
    max_answer_tokens: int = 64
    width: int = 0  # side width r; 0 = d / width_div
    width_div: int = 8  # r = d / width_div when width is 0; sane range 2–16
    every: int = 1  # every k-th backbone layer travels; sane range 1–6
    layers: list[int] = field(default_factory=list)  # explicit layers (overrides every)
    gates: bool = False
    side_kind: str = "spa"  # 'spa' (edge_agent/side_network.py) or 'lst' (LST's ladder network)
    warm_start: bool = True
    # The gate: z plus the backbone distribution's entropy / top-1 / margin (from the edge's own
    # lm_head copy), a 64-wide hidden layer — dev AUC 0.797 → 0.897 on XSum (RESULTS.md §7.1)
    clf_features: str = "z+stats"  # z | z+stats (the backbone distribution's confidence)
    clf_hidden: int = 64  # 0 = linear; sane range 0–256
    clf_objective: str = "both"  # onpolicy | mixture | both
    rollout_prompts: int = 0  # prompts for on-policy classifier data; 0 = all
    rollout_tokens: int = 48  # tokens per rollout and per calibration generation
    calib_prompts: int = 0  # dev prompts for τ; 0 = all dev records
    calib_steps: int = 8  # bisection steps on the firing rate; sane range 4–12
    gen_batch: int = 64  # sequences per backbone forward in rollouts; 8–1024
    feature_tokens: int = 16384  # padded tokens per feature-extraction forward; 2k–256k
    seed: int = 0
    # fp16 | int8 | int4: the wire the heads are trained for (issue 22): the side network, the
    # classifier and τ see z and the hidden states through this grid, as served (backbone frozen)
    wire_dtype: str = "fp16"
    # Per combine, fields that differ for its head. The defaults above were chosen on the XSum
    # dev split with SmolLM2-135M (benchmarks/spa_select.py, RESULTS.md §1). The replacing head
    # (lst/choice) is LST as Sung et al. build it (edge_agent/ladder.py: a ladder from every
    # layer, gated, started from the backbone's principal directions) at reduction factor 2
    # (d/2 = 288: its output reaches lm_head through rank r, and a rank-144 reading of z alone
    # costs 1.5 nats, RESULTS.md §7.5), at LST's higher learning rate; the older network:
    # {"width_div": 4, "dropout": 0.1} (issue 17 item 1).
    overrides: dict = field(default_factory=lambda: {"replace": LST_REPLACE})

    def __post_init__(self) -> None:
        if self.mode not in training_choices():
            raise InputError(f"unknown training mode {self.mode!r}: expected {training_choices()}")
        if not 0.0 <= self.target_m <= 1.0:
            raise InputError(f"target M must be in [0, 1], got {self.target_m}")
        if self.lam < 0:
            raise InputError(f"lambda must be >= 0, got {self.lam}")
        if self.epochs < 1 or self.clf_epochs < 0:
            raise InputError("epochs must be >= 1 and classifier epochs >= 0")
        if not 0.0 < self.dev_fraction < 1.0:
            raise InputError(f"dev fraction must be in (0, 1), got {self.dev_fraction}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise InputError(f"unknown schedule {self.schedule!r}: onecycle, cosine or constant")
        if self.clf_objective not in CLF_OBJECTIVES:
            raise InputError(f"unknown classifier objective {self.clf_objective!r}: {CLF_OBJECTIVES}")
        if not 0.0 <= self.dropout < 1.0 or self.weight_decay < 0:
            raise InputError("dropout must be in [0, 1) and weight decay >= 0")

    def for_combine(self, combine: str) -> TrainConfig:
        return dataclasses.replace(self, **self.overrides.get(combine, {}), overrides={})

    def side_config(self, d_model: int, n_layers: int) -> SideConfig:
        width = self.width or max(8, d_model // self.width_div)
        return SideConfig(d_model, n_layers, width=width, layers=list(self.layers),
                          every=self.every, gates=self.gates, dropout=self.dropout,
                          kind=self.side_kind)


@dataclass
class Features:
    states: Tensor  # (N, K, d) wire dtype, [h0, h_layers…] as SideNetwork.forward reads them
    z: Tensor  # (N, d) wire dtype
    y: Tensor  # (N,) target token ids
    layers: list[int] = field(default_factory=list)  # the backbone layer of each state column

    def __len__(self) -> int:
        return len(self.y)

    def select(self, layers: list[int]) -> Features:
        """The columns [h0, h_layers…] for a side network over `layers` (a subset)."""
        cols = [self.layers.index(i) for i in [0] + layers]
        if cols == list(range(len(self.layers))):
            return self
        return Features(self.states[:, cols], self.z, self.y, [0] + layers)

    def wired(self, edge: EdgeModel, wire: str) -> Features:
        """The features as the edge receives them over `wire` (quantise→dequantise on the kit's
        grid, per state; float32). Training on them is quantisation-aware for the wire only."""
        w = WireDtype.parse(wire)
        if not w.quantised:
            return self
        edge.check_grid(w)
        grid = edge.grid.to(self.z.device)
        states = torch.stack([quant.roundtrip(self.states[:, j].float(), grid[i], w)
                              for j, i in enumerate(self.layers)], 1)
        return Features(states, quant.roundtrip(self.z.float(), grid[edge.n_layers], w), self.y, self.layers)

    def batches(self, size: int, gen: torch.Generator | None = None):
        n = len(self)
        order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n))
        order = order.to(self.y.device)
        for i in range(0, n, size):
            idx = order[i : i + size]
            yield self.states[idx].float(), self.z[idx].float(), self.y[idx]


def extract_features(backbone: Backbone, examples: list[Example], side_cfg: SideConfig | None,
                     cfg: TrainConfig, progress: bool = True, batch_size: int = 0) -> Features:
    """Run the frozen backbone once; keep the states at positions that predict answer tokens.
    side_cfg None: every layer (for sweeps over which layers travel). Batches are filled up
    to `cfg.feature_tokens` padded tokens (or `batch_size` sequences)."""
    from tqdm import tqdm

    tok, eos = backbone.tokenizer, backbone.eos_token_id
    layers = [0] + (side_cfg.layers if side_cfg is not None else list(range(1, backbone.n_layers + 1)))
    seqs = []
    for ex in examples:
        p = ex.prompt_ids(tok, cfg.max_prompt_tokens)
        a = ex.answer_ids(tok, cfg.max_answer_tokens) + [eos]
        seqs.append((p, a))
    seqs.sort(key=lambda s: len(s[0]) + len(s[1]))
    states, zs, ys = [], [], []
    bar = tqdm(total=len(seqs), desc="backbone features", unit="seq", disable=not progress)
    i = 0
    while i < len(seqs):
        n = 1
        while (i + n < len(seqs) and (batch_size == 0 or n < batch_size)  # sorted: the last
               and (n + 1) * (len(seqs[i + n][0]) + len(seqs[i + n][1])) <= cfg.feature_tokens):
            n += 1  # is the widest
        chunk = seqs[i : i + n]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), eos)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            seq = p + a
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        out = backbone.forward(ids, attention_mask=mask, logits_last_only=True)
        for r, (p, a) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=out.z.device)
            states.append(torch.stack([out.hidden[j][r, pos] for j in layers], 1).to(WIRE_DTYPE))
            zs.append(out.z[r, pos].to(WIRE_DTYPE))
            ys.append(torch.tensor(a, device=out.z.device))
        i += n
        bar.update(n)
    bar.close()
    return Features(torch.cat(states), torch.cat(zs), torch.cat(ys), layers)


def _side_logits(edge: EdgeModel, head: Head, states: Tensor, z: Tensor) -> Tensor:
    delta = head.side(states)
    return edge.lm_head(z + delta if head.combine == Combine.ADD else delta)  # (N, V)


def _scheduler(opt, cfg: TrainConfig, steps: int):
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps,
                                                   pct_start=0.1)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def train_side(edge: EdgeModel, head: Head, train: Features, dev: Features, cfg: TrainConfig,
               progress: bool = True) -> list[dict]:
    """Cross-entropy on the combined distribution; keeps the epoch with the best dev NLL and
    stops after `patience` epochs without one."""
    from tqdm import tqdm

    head.side.to(train.y.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(head.side.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch)
    sched = _scheduler(opt, cfg, steps)
    history = []
    best_loss, best_state, stale = float("inf"), None, 0
    bar = tqdm(total=steps, desc=f"side[{head.combine}]", disable=not progress, leave=False)
    for epoch in range(cfg.epochs):
        head.side.train()
        total, n = torch.zeros((), device=train.y.device), 0
        for states, z, y in train.batches(cfg.batch, gen):
            loss = F.cross_entropy(_side_logits(edge, head, states, z), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach() * len(y)
            n += len(y)
            bar.update(1)
        dev_loss = evaluate_side(edge, head, dev)
        history.append({"epoch": epoch + 1, "train_loss": total.item() / n, "dev_loss": dev_loss})
        if dev_loss < best_loss:
            best_loss, stale = dev_loss, 0
            best_state = {k: v.detach().clone() for k, v in head.side.state_dict().items()}
        else:
            stale += 1
        if progress:
            bar.set_postfix(train=f"{total.item() / n:.3f}", dev=f"{dev_loss:.3f}")
        if stale >= cfg.patience:
            break
    bar.close()
    head.side.load_state_dict(best_state)
    head.side.eval()
    return history


@torch.no_grad()
def evaluate_side(edge: EdgeModel, head: Head, feats: Features) -> float:
    head.side.eval()
    total = sum(F.cross_entropy(_side_logits(edge, head, s, z), y, reduction="sum").item()
                for s, z, y in feats.batches(1024))
    return total / max(1, len(feats))


@torch.no_grad()
def _log_probs(edge: EdgeModel, head: Head, feats: Features) -> tuple[Tensor, ...]:
    """Per position: log P_base(y), log P_side-combined(y), backbone token, side token."""
    lpb, lpi, tb, ts = [], [], [], []
    for s, z, y in feats.batches(1024):
        base = edge.lm_head(z).log_softmax(-1)
        side = _side_logits(edge, head, s, z).log_softmax(-1)
        lpb.append(base.gather(1, y[:, None])[:, 0])
        lpi.append(side.gather(1, y[:, None])[:, 0])
        tb.append(base.argmax(-1))
        ts.append(side.argmax(-1))
    return torch.cat(lpb), torch.cat(lpi), torch.cat(tb), torch.cat(ts)


@torch.no_grad()
def _clf_inputs(edge: EdgeModel, clf: Classifier, z: Tensor) -> Tensor:
    return torch.cat([clf.features(c, edge.lm_head) for c in z.float().split(4096)])


def train_classifier(edge: EdgeModel, head: Head, train: Features, cfg: TrainConfig,
                     policy_z: Tensor, policy_y: Tensor) -> list[dict]:
    """Mixture likelihood on teacher-forced answers and/or BCE on on-policy 'side differs'
    labels (cfg.clf_objective)."""
    dev = train.y.device
    clf = Classifier(edge.d_model, cfg.clf_features, cfg.clf_hidden).to(dev)
    head.classifier = clf
    edge.set_head(head)
    use_mix = cfg.clf_objective in ("mixture", "both") and len(train)
    use_pol = cfg.clf_objective in ("onpolicy", "both") and len(policy_y)
    lpb, lpi, _, _ = _log_probs(edge, head, train)
    x_all = _clf_inputs(edge, clf, train.z)
    x_pol = _clf_inputs(edge, clf, policy_z.to(dev)) if len(policy_y) else x_all[:0]
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
    mode = Mode.FULL if head.combine == Combine.ADD else Mode.LST
    gen = BatchedGenerator(backbone, edge, BatchConfig(cfg.gen_batch, progress=progress))
    gens = gen.generate(_prompts(backbone, examples, cfg), cfg.rollout_tokens, mode, keep_z=True,
                        desc=f"rollouts {mode.value}", wire_dtype=cfg.wire_dtype)
    zs = [z for g in gens for z in g.z]
    labels = [d for g in gens for d in g.differs]
    return torch.stack(zs).float(), torch.tensor(labels, dtype=torch.float32)


def measured_m(backbone: Backbone, edge: EdgeModel, head: Head, prompts: list[list[int]],
               threshold: float, cfg: TrainConfig) -> Transmissions:
    """Transmission counts of real gated generations (batched) on `prompts` at `threshold`."""
    mode = Mode.SPA if head.combine == Combine.ADD else Mode.CHOICE
    saved, head.threshold = head.threshold, threshold
    try:
        gen = BatchedGenerator(backbone, edge, BatchConfig(cfg.gen_batch, progress=False))
        total = Transmissions()
        for g in gen.generate(prompts, cfg.rollout_tokens, mode, wire_dtype=cfg.wire_dtype):
            total += g.stats
        return total
    finally:
        head.threshold = saved


def calibrate(backbone: Backbone, edge: EdgeModel, head: Head, dev_ex: list[Example],
              dev: Features, dev_z: Tensor, cfg: TrainConfig) -> dict:
    """τ for a target M on held-out prompts: thresholds are quantiles of the classifier logit
    on on-policy dev states at firing rate q; a bisection on q measures M with real gated
    generations on the dev prompts and keeps the highest q whose M is within the target."""
    logit = head.classifier.logit(dev_z.to(dev.y.device), edge.lm_head).detach().double().cpu()
    prompts = _prompts(backbone, dev_ex[: cfg.calib_prompts or None], cfg)

    def thr(q: float) -> float:
        return NEVER if q <= 0 else -NEVER if q >= 1 else float(torch.quantile(logit, 1 - q))

    measured: dict[float, dict] = {0.0: {"q": 0.0, "threshold": NEVER, "m": 0.0, "side_rate": 0.0}}
    lo, hi = 0.0, 1.0
    for _ in range(cfg.calib_steps):
        q = (lo + hi) / 2
        t = measured_m(backbone, edge, head, prompts, thr(q), cfg)
        measured[q] = {"q": q, "threshold": thr(q), "m": t.m, "side_rate": t.side_rate,
                       "correction_rate": t.correction_rate}
        lo, hi = (q, hi) if t.m <= cfg.target_m else (lo, q)
    best = measured[lo]
    lpb, lpi, tb, ts = _log_probs(edge, head, dev)
    fire = head.classifier.logit(dev.z.float(), edge.lm_head) > best["threshold"]
    rates = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8]
    return {
        "threshold": best["threshold"], "m_dev": best["m"], "side_rate_dev": best["side_rate"],
        "target_m": cfg.target_m, "fire_quantile": lo, "dev_prompts": len(prompts),
        "tau": float(torch.sigmoid(torch.tensor(best["threshold"], dtype=torch.float64))),
        "fire_rate_teacher_forced": fire.float().mean().item(),
        "dev_nll_gated": -torch.where(fire, lpi, lpb).mean().item(),
        "dev_nll_base": -lpb.mean().item(), "dev_nll_side": -lpi.mean().item(),
        "dev_positions": len(dev), "measured": sorted(measured.values(), key=lambda r: r["q"]),
        "sweep_thresholds": [NEVER] + [thr(q) for q in rates] + [-NEVER],
    }


def train_head(backbone: Backbone, edge: EdgeModel, combine: str, train_ex: list[Example],
               dev_ex: list[Example], feats_train: Features, feats_dev: Features,
               cfg: TrainConfig, progress: bool = True) -> Head:
    """One combine's side network, classifier and τ. Features may hold more layers than this
    head reads (a superset)."""
    cfg = cfg.for_combine(combine)
    side_cfg = cfg.side_config(backbone.d_model, backbone.n_layers)
    feats_train, feats_dev = feats_train.select(side_cfg.layers), feats_dev.select(side_cfg.layers)
    head = edge.new_head(combine, side_cfg)
    head.side.to(feats_train.y.device)
    if hasattr(head.side, "init_from"):  # LST: start from the backbone (edge_agent/ladder.py)
        head.side.init_from(feats_train.states[:8192].float())
    side_hist = train_side(edge, head, feats_train, feats_dev, cfg, progress)
    best = min(side_hist, key=lambda h: h["dev_loss"])
    print(f"side[{combine}] kept epoch {best['epoch']} of {len(side_hist)} "
          f"(dev NLL {best['dev_loss']:.4f})", flush=True)
    head.classifier.to(feats_train.y.device)
    pz, py = rollouts(backbone, edge, head, train_ex[: cfg.rollout_prompts or None], cfg, progress)
    dz, dy = rollouts(backbone, edge, head, dev_ex[: cfg.calib_prompts or None], cfg, progress)
    clf_hist = train_classifier(edge, head, feats_train, cfg, pz, py)
    cal = calibrate(backbone, edge, head, dev_ex, feats_dev, dz, cfg)
    cal["on_policy_differs_train"] = py.mean().item()
    cal["on_policy_differs_dev"] = dy.mean().item()
    cal["clf_auc_dev"] = auc(head.classifier.logit(dz.to(feats_dev.y.device), edge.lm_head), dy)
    head.threshold = cal["threshold"]
    head.info = {"side_history": side_hist, "classifier_history": clf_hist, "calibration": cal,
                 "target_m": cfg.target_m, "lambda": cfg.lam}
    print(f"[{combine}] τ={cal['tau']:.4f} (logit {cal['threshold']:.3g}) dev: M {cal['m_dev']:.3f}"
          f" (target {cfg.target_m}), side {cal['side_rate_dev']:.3f}, on-policy side≠base "
          f"{cal['on_policy_differs_dev']:.3f}, gate AUC {cal['clf_auc_dev']:.3f}; NLL base "
          f"{cal['dev_nll_base']:.3f} side {cal['dev_nll_side']:.3f} gated {cal['dev_nll_gated']:.3f}",
          flush=True)
    return head


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


def parse_overrides(text: str) -> dict:
    """'replace:width=144,dropout=0.1;add:every=2' -> {"replace": {"width": 144, …}, …}."""
    import json

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"mode", "overrides"}
    out: dict = {}
    for part in filter(None, (x.strip() for x in text.split(";"))):
        combine, _, kvs = part.partition(":")
        if combine not in ("add", "replace") or not kvs:
            raise InputError(f"bad override {part!r}: expected add:KEY=VALUE,… or replace:KEY=VALUE,…")
        for kv in kvs.split(","):
            k, _, v = kv.partition("=")
            if k not in fields or not v:
                raise InputError(f"bad override {kv!r} in {part!r}: keys are {sorted(fields)}")
            try:
                value = json.loads(v)
            except json.JSONDecodeError:
                value = v
            out.setdefault(combine, {})[k] = value
    return out


def split_dev(examples: list[Example], cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    n_dev = max(1, int(round(len(examples) * cfg.dev_fraction)))
    return examples[:-n_dev], examples[-n_dev:]


def train_bundle(backbone: Backbone, examples: list[Example], cfg: TrainConfig,
                 progress: bool = True) -> tuple[EdgeModel, dict]:
    """Train the heads `cfg.mode` asks for; returns the edge model and the training record."""
    if len(examples) < 4:
        raise InputError(f"need at least 4 training records, got {len(examples)}")
    torch.manual_seed(cfg.seed)
    started = time.time()
    train_ex, dev_ex = split_dev(examples, cfg)
    wanted = sorted({i for c in training_heads(cfg.mode)
                     for i in cfg.for_combine(c).side_config(backbone.d_model, backbone.n_layers).layers})
    side_cfg = SideConfig(backbone.d_model, backbone.n_layers, layers=wanted)
    feats_train = extract_features(backbone, train_ex, side_cfg, cfg, progress)
    feats_dev = extract_features(backbone, dev_ex, side_cfg, cfg, progress)
    edge = EdgeModel.for_backbone(backbone).to(backbone.device)
    feats_train, feats_dev = feats_train.wired(edge, cfg.wire_dtype), feats_dev.wired(edge, cfg.wire_dtype)
    record: dict = {"config": asdict(cfg), "train_records": len(train_ex), "dev_records": len(dev_ex),
                    "train_positions": len(feats_train), "dev_positions": len(feats_dev), "heads": {}}
    for combine in training_heads(cfg.mode):
        head = train_head(backbone, edge, combine, train_ex, dev_ex, feats_train, feats_dev, cfg,
                          progress)
        record["heads"][combine] = head.info
    record["seconds"] = round(time.time() - started, 1)
    return edge.cpu().eval(), record
