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

The steps live in their own files: `train_config.py` (TrainConfig), `features.py` (1),
`side_training.py` (2), `gate_training.py` (3, 4); this file runs them per head. Every name of
those files that callers used from `lab.training` is importable from here still.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from cloud_worker.backbone import Backbone
from edge_agent.edge_model import EdgeModel, Head
from edge_agent.side_network import SideConfig
from lab.data import Example
from lab.features import Features, extract_features
from lab.gate_training import NEVER, auc, calibrate, gated_run, rollouts, train_classifier
from lab.side_training import evaluate_side, side_logits, train_side
from lab.train_config import CLF_OBJECTIVES, LST_REPLACE, TrainConfig, parse_overrides, split_dev
from routing.errors import InputError
from routing.modes import training_heads

__all__ = ["CLF_OBJECTIVES", "LST_REPLACE", "NEVER", "Features", "TrainConfig", "auc", "calibrate",
           "evaluate_side", "extract_features", "gated_run", "parse_overrides", "rollouts",
           "side_logits", "split_dev", "train_bundle", "train_classifier", "train_head", "train_side"]


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
    head.lead = cfg.lead_tokens  # gated modes only (Decoder.start): spa, choice
    cal = calibrate(backbone, edge, head, dev_ex, feats_dev, dz, cfg)
    cal["on_policy_differs_train"] = py.mean().item()
    cal["on_policy_differs_dev"] = dy.mean().item()
    cal["clf_auc_dev"] = auc(head.classifier.logit(dz.to(feats_dev.y.device), edge.lm_head), dy)
    head.threshold = cal["threshold"]
    head.info = {"side_history": side_hist, "classifier_history": clf_hist, "calibration": cal,
                 "target_m": cfg.target_m, "lambda": cfg.lam}
    print(f"[{combine}] τ={cal['tau']:.4f} (logit {cal['threshold']:.3g}) dev: M {cal['m_dev']:.3f}"
          + (f" (target {cfg.target_m})" if cfg.tau_by == "m" else
             f" (τ by dev Rouge-L {cal['rouge_dev']:.2f} ≥ {cfg.tau_quality} × {cal['rouge_dev_always']:.2f})")
          + f", side {cal['side_rate_dev']:.3f}, on-policy side≠base "
          f"{cal['on_policy_differs_dev']:.3f}, gate AUC {cal['clf_auc_dev']:.3f}; NLL base "
          f"{cal['dev_nll_base']:.3f} side {cal['dev_nll_side']:.3f} gated {cal['dev_nll_gated']:.3f}",
          flush=True)
    return head


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
