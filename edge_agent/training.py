"""`spa train`: the side network, then the classifier, with the backbone frozen (DESIGN.md §2).

1. One frozen backbone pass over the task data collects, at every answer position, the states
   the side network reads (cast to the wire dtype, as served). The side network has no
   attention over positions, so training is then a per-position problem: cheap epochs.
2. Side network: cross-entropy on P_int = softmax(lm_head(z + Δ)) ('add') or
   P_side = softmax(lm_head(Δ)) ('replace').
3. Classifier: optional BCE warm start on 1[P_int(y) > P_base(y)], then the mixture likelihood
   −log((1−g)·P_base(y) + g·P_int(y)) + λ·g.
4. τ: on a held-back dev split, the lowest threshold whose estimated M (fired positions plus
   those whose side token differs from the backbone token) stays within the target.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cloud_worker.backbone import Backbone
from edge_agent.data import Example
from edge_agent.edge_model import WIRE_DTYPE, EdgeModel, Head
from edge_agent.side_network import SideConfig
from routing.errors import InputError
from routing.modes import Mode

COMBINES_FOR = {"spa": ["add"], "full": ["add"], "lst": ["replace"], "choice": ["replace"],
                "all": ["add", "replace"]}


@dataclass
class TrainConfig:
    mode: str = "all"  # spa|full|lst|choice|all: which side networks to train
    target_m: float = 0.62  # sane range 0.05–1.0
    lam: float = 0.05  # λ, price of using the side; sane range 0–1
    epochs: int = 10
    clf_epochs: int = 6
    lr: float = 2e-3
    batch: int = 256  # positions per step
    dev_fraction: float = 0.1
    max_prompt_tokens: int = 384
    max_answer_tokens: int = 64
    width: int = 0  # side width r; 0 = d/8
    every: int = 1
    gates: bool = False
    warm_start: bool = True
    rollout_prompts: int = 64  # prompts for on-policy classifier data and τ calibration
    rollout_tokens: int = 48
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in COMBINES_FOR:
            raise InputError(f"unknown training mode {self.mode!r}: expected {sorted(COMBINES_FOR)}")
        if not 0.0 <= self.target_m <= 1.0:
            raise InputError(f"target M must be in [0, 1], got {self.target_m}")
        if self.lam < 0:
            raise InputError(f"lambda must be >= 0, got {self.lam}")
        if self.epochs < 1 or self.clf_epochs < 0:
            raise InputError("epochs must be >= 1 and classifier epochs >= 0")
        if not 0.0 < self.dev_fraction < 1.0:
            raise InputError(f"dev fraction must be in (0, 1), got {self.dev_fraction}")


@dataclass
class Features:
    states: Tensor  # (N, K, d) wire dtype, [h0, h_layers…] as SideNetwork.forward reads them
    z: Tensor  # (N, d) wire dtype
    y: Tensor  # (N,) target token ids

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, size: int, gen: torch.Generator | None = None):
        order = torch.randperm(len(self), generator=gen) if gen is not None else torch.arange(len(self))
        for i in range(0, len(self), size):
            idx = order[i : i + size]
            yield self.states[idx].float(), self.z[idx].float(), self.y[idx]


def extract_features(backbone: Backbone, examples: list[Example], side_cfg: SideConfig,
                     cfg: TrainConfig, progress: bool = True, batch_size: int = 8) -> Features:
    """Run the frozen backbone once; keep the states at positions that predict answer tokens."""
    from tqdm import tqdm

    tok, eos = backbone.tokenizer, backbone.eos_token_id
    layers = [0] + side_cfg.layers
    seqs = []
    for ex in examples:
        p = ex.prompt_ids(tok, cfg.max_prompt_tokens)
        a = ex.answer_ids(tok, cfg.max_answer_tokens) + [eos]
        seqs.append((p, a))
    seqs.sort(key=lambda s: len(s[0]) + len(s[1]))
    states, zs, ys = [], [], []
    for i in tqdm(range(0, len(seqs), batch_size), desc="backbone features", disable=not progress):
        chunk = seqs[i : i + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), eos)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            seq = p + a
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        out = backbone.forward(ids, attention_mask=mask)
        for r, (p, a) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1)  # positions predicting answer
            states.append(torch.stack([out.hidden[j][r, pos] for j in layers], 1).to(WIRE_DTYPE).cpu())
            zs.append(out.z[r, pos].to(WIRE_DTYPE).cpu())
            ys.append(torch.tensor(a))
    return Features(torch.cat(states), torch.cat(zs), torch.cat(ys))


def _side_logits(edge: EdgeModel, head: Head, states: Tensor, z: Tensor) -> Tensor:
    delta = head.side(states)
    return edge.lm_head(z + delta if head.combine == "add" else delta)  # (N, V)


def train_side(edge: EdgeModel, head: Head, train: Features, dev: Features, cfg: TrainConfig,
               progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(head.side.parameters(), lr=cfg.lr, weight_decay=0.05)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.1)
    history = []
    best_loss, best_state = float("inf"), None  # early stopping on the dev loss
    bar = tqdm(total=steps, desc=f"side[{head.combine}]", disable=not progress)
    for epoch in range(cfg.epochs):
        head.side.train()
        total, n = 0.0, 0
        for states, z, y in train.batches(cfg.batch, gen):
            loss = F.cross_entropy(_side_logits(edge, head, states, z), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(y)
            n += len(y)
            bar.update(1)
        dev_loss = evaluate_side(edge, head, dev)
        history.append({"epoch": epoch + 1, "train_loss": total / n, "dev_loss": dev_loss})
        if dev_loss < best_loss:
            best_loss = dev_loss
            best_state = {k: v.detach().clone() for k, v in head.side.state_dict().items()}
        msg = f"side[{head.combine}] epoch {epoch + 1}: train {total / n:.4f} dev {dev_loss:.4f}"
        bar.write(msg) if progress else print(msg, flush=True)
    bar.close()
    head.side.load_state_dict(best_state)
    best = min(history, key=lambda h: h["dev_loss"])
    print(f"side[{head.combine}] kept epoch {best['epoch']} (dev {best['dev_loss']:.4f})", flush=True)
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


def train_classifier(edge: EdgeModel, head: Head, train: Features, cfg: TrainConfig,
                     policy_z: Tensor, policy_y: Tensor) -> list[dict]:
    """Mixture likelihood on teacher-forced answers + BCE on on-policy 'side differs' labels."""
    lpb, lpi, _, _ = _log_probs(edge, head, train)
    z_all = train.z.float()
    clf = head.classifier
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(clf.parameters(), lr=cfg.lr * 5, weight_decay=0.0)
    history = []
    if cfg.warm_start:
        target = (lpi > lpb).float()
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch):
            loss = F.binary_cross_entropy_with_logits(clf.logit(z_all[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for epoch in range(cfg.clf_epochs):
        total = 0.0
        for idx in torch.randperm(len(train), generator=gen).split(cfg.batch):
            logit = clf.logit(z_all[idx])
            # log((1−g)·P_base + g·P_int), in log space
            mix = torch.logsumexp(torch.stack(
                [F.logsigmoid(-logit) + lpb[idx], F.logsigmoid(logit) + lpi[idx]]), dim=0)
            loss = (-mix + cfg.lam * torch.sigmoid(logit)).mean()
            if len(policy_y):
                pidx = torch.randint(0, len(policy_y), (len(idx),), generator=gen)
                loss = loss + F.binary_cross_entropy_with_logits(clf.logit(policy_z[pidx]),
                                                                 policy_y[pidx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history.append({"epoch": epoch + 1, "mixture_loss": total / len(train)})
    clf.eval()
    return history


NEVER = 1e9  # a logit threshold no classifier reaches: the gate never fires


@torch.no_grad()
def rollouts(backbone: Backbone, edge: EdgeModel, head: Head, examples: list[Example],
             cfg: TrainConfig) -> tuple[Tensor, Tensor]:
    """On-policy states: generate with the side network always on (the trajectory a firing
    gate follows) and label each position 1 where the side token differs from the backbone's.
    Teacher-forced answers alone leave the gate blind to its own generations."""
    from edge_agent.reference import ReferenceGenerator

    mode = Mode.FULL if head.combine == "add" else Mode.LST
    ref = ReferenceGenerator(backbone, edge)
    zs, labels = [], []
    for ex in examples:
        gen = ref.generate(ex.prompt_ids(backbone.tokenizer, cfg.max_prompt_tokens),
                           cfg.rollout_tokens, mode, keep_z=True)
        zs.extend(gen.z)
        labels.extend(gen.differs)
    return torch.stack(zs).float(), torch.tensor(labels, dtype=torch.float32)


def measured_m(backbone: Backbone, edge: EdgeModel, head: Head, examples: list[Example],
               threshold: float, cfg: TrainConfig) -> float:
    """M of real gated generations (reference generator) on `examples` at `threshold`."""
    from edge_agent.reference import ReferenceGenerator
    from routing.transmissions import Transmissions

    mode = Mode.SPA if head.combine == "add" else Mode.CHOICE
    saved, head.threshold = head.threshold, threshold
    try:
        ref, total = ReferenceGenerator(backbone, edge), Transmissions()
        for ex in examples:
            total += ref.generate(ex.prompt_ids(backbone.tokenizer, cfg.max_prompt_tokens),
                                  cfg.rollout_tokens, mode).stats
        return total.m
    finally:
        head.threshold = saved


def calibrate(backbone: Backbone, edge: EdgeModel, head: Head, dev_ex: list[Example],
              dev: Features, dev_z: Tensor, cfg: TrainConfig) -> dict:
    """τ for a target M: candidate thresholds are quantiles of the classifier logit on
    on-policy dev states; a bisection over them measures M with real gated generations on the
    dev prompts and keeps the lowest threshold (most side use) whose M is within the target."""
    logit = head.classifier.logit(dev_z).detach().double()
    rates = [0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8]
    cands = [NEVER] + [float(torch.quantile(logit, 1 - q)) for q in rates] + [-NEVER]
    lo, hi = 0, len(cands) - 1  # cands[lo] is within budget (M = 0 when the gate never fires)
    measured = {NEVER: 0.0}
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = measured_m(backbone, edge, head, dev_ex, cands[mid], cfg)
        measured[cands[mid]] = m
        lo, hi = (mid, hi) if m <= cfg.target_m else (lo, mid)
    thr = cands[lo]
    lpb, lpi, tb, ts = _log_probs(edge, head, dev)
    fire = head.classifier.logit(dev.z.float()) > thr
    return {
        "threshold": thr, "m_dev": measured[thr], "target_m": cfg.target_m,
        "tau": float(torch.sigmoid(torch.tensor(thr, dtype=torch.float64))),
        "fire_rate_teacher_forced": fire.float().mean().item(),
        "dev_nll_gated": -torch.where(fire, lpi, lpb).mean().item(),
        "dev_nll_base": -lpb.mean().item(), "dev_nll_side": -lpi.mean().item(),
        "dev_positions": len(dev), "measured": {f"{k:.6g}": v for k, v in measured.items()},
        "sweep_thresholds": cands,
    }


def train_bundle(backbone: Backbone, examples: list[Example], cfg: TrainConfig,
                 progress: bool = True) -> tuple[EdgeModel, dict]:
    """Train the heads `cfg.mode` asks for; returns the edge model and the training record."""
    if len(examples) < 4:
        raise InputError(f"need at least 4 training records, got {len(examples)}")
    torch.manual_seed(cfg.seed)
    started = time.time()
    n_dev = max(1, int(round(len(examples) * cfg.dev_fraction)))
    train_ex, dev_ex = examples[:-n_dev], examples[-n_dev:]
    side_cfg = SideConfig(backbone.d_model, backbone.n_layers, width=cfg.width, every=cfg.every,
                          gates=cfg.gates)
    feats_train = extract_features(backbone, train_ex, side_cfg, cfg, progress)
    feats_dev = extract_features(backbone, dev_ex, side_cfg, cfg, progress)
    edge = EdgeModel.for_backbone(backbone)
    record: dict = {"config": asdict(cfg), "train_records": len(train_ex), "dev_records": len(dev_ex),
                    "train_positions": len(feats_train), "dev_positions": len(feats_dev), "heads": {}}
    for combine in COMBINES_FOR[cfg.mode]:
        head = edge.new_head(combine, SideConfig(**side_cfg.to_dict()))
        side_hist = train_side(edge, head, feats_train, feats_dev, cfg, progress)
        pz, py = rollouts(backbone, edge, head, train_ex[: cfg.rollout_prompts], cfg)
        dev_cal = dev_ex[: cfg.rollout_prompts]
        dz, _ = rollouts(backbone, edge, head, dev_cal, cfg)
        clf_hist = train_classifier(edge, head, feats_train, cfg, pz, py)
        cal = calibrate(backbone, edge, head, dev_cal, feats_dev, dz, cfg)
        head.threshold = cal["threshold"]
        head.info = {"side_history": side_hist, "classifier_history": clf_hist, "calibration": cal,
                     "target_m": cfg.target_m, "lambda": cfg.lam}
        record["heads"][combine] = head.info
        print(f"[{combine}] τ={cal['tau']:.4f} (logit {cal['threshold']:.3g}) dev: M {cal['m_dev']:.3f}"
              f" (target {cfg.target_m}), on-policy side≠base {py.mean().item():.3f}, NLL base {cal['dev_nll_base']:.3f} side {cal['dev_nll_side']:.3f} gated "
              f"{cal['dev_nll_gated']:.3f}", flush=True)
    record["seconds"] = round(time.time() - started, 1)
    return edge.eval(), record

