"""Training the side network (DESIGN.md §2): cross-entropy on P_int = softmax(lm_head(z + Δ))
('add') or P_side = softmax(lm_head(Δ)) ('replace'), backbone frozen; dropout and weight decay
against overfitting, early stopping on the dev NLL (a held-back part of the training records).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from edge_agent.edge_model import EdgeModel, Head
from lab.features import Features
from lab.train_config import TrainConfig
from routing.modes import Combine


def side_logits(edge: EdgeModel, head: Head, states: Tensor, z: Tensor) -> Tensor:
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
            loss = F.cross_entropy(side_logits(edge, head, states, z), y)
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
    total = sum(F.cross_entropy(side_logits(edge, head, s, z), y, reduction="sum").item()
                for s, z, y in feats.batches(1024))
    return total / max(1, len(feats))
