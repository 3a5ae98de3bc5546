"""The gate of a blended (or benchmark-trained) head: classifier and τ from the examples alone,
no rollouts and no measured-M bisection (both cost more than the blend's 10 s).

The side network's measured gain on the examples, teacher-forced: at each answer position the
side-combined argmax token and the backbone's, against the target —

    helps  = side's token is the target, the backbone's is not   (a REQUEST worth its M)
    harms  = the backbone's token is the target, the side's is not

Classifier (cfg.gate_labels): 'mixture' — lab/gate_training.py's mixture likelihood
−log((1−g)·P_base(y) + g·P_int(y)) + λ·g; 'gain' — BCE on `helps`; 'both' — their sum.
(Labels "the side's token is not the backbone's", alone or beside the mixture, were measured
and dropped: RESULTS §10.11.)
τ (cfg.tau_rule): 'rate' — the gate fires on cfg.fire_rate of the examples' positions (issue 19's
first blend); 'gain' — the highest τ at which it fires on cfg.gain_recall of the `helps`
positions (never, when the side network helps nowhere on the examples).
"""

from __future__ import annotations

import dataclasses

import torch

from edge_agent.edge_model import EdgeModel, Head
from lab.blend_config import BlendConfig


@torch.no_grad()
def side_gain(edge: EdgeModel, head: Head, feats, log_probs: tuple | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(helps, harms) per position of `feats` (bool), teacher-forced, full vocabulary; from
    `lab.gate_training._log_probs`' tokens (computed here unless given)."""
    from lab.gate_training import _log_probs

    head.side.eval()
    _, _, tb, ts = log_probs if log_probs is not None else _log_probs(edge, head, feats)
    y = feats.y.to(tb.device)
    return (ts == y) & (tb != y), (tb == y) & (ts != y)


def threshold(logit: torch.Tensor, helps: torch.Tensor, cfg: BlendConfig) -> float:
    """τ as a logit threshold (the gate fires when logit > τ) by cfg.tau_rule."""
    from lab.training import NEVER

    if cfg.tau_rule == "rate":
        rate = cfg.fire_rate
        return NEVER if rate <= 0 else -NEVER if rate >= 1 else float(torch.quantile(logit, 1 - rate))
    if not bool(helps.any()):
        return NEVER
    # 'lower': at least gain_recall of them fire, also with few helpful positions
    return float(torch.quantile(logit[helps], 1 - cfg.gain_recall, interpolation="lower")) - 1e-6


def lead_tokens(cfg: BlendConfig, answers: list[list[int]] | None, helps: torch.Tensor,
                harms: torch.Tensor) -> tuple[int, dict]:
    """With cfg.lead 'turn': the opening the `answers` share (lab.blend_tune.opening_lead), and
    the turn after it too when the side network's token is right there more often than the
    backbone's (`helps` > `harms` at each answer's turn position; `answers` in the features'
    order, one position per token) — a side network worse at the turn is left to the gate."""
    from lab.blend_tune import opening_lead, record_starts

    if cfg.lead != "turn" or not answers:
        return 0, {}
    lead = opening_lead(answers)
    if lead == 0:
        return 0, {"opening": 0}
    starts = record_starts([len(a) for a in answers])
    at = torch.tensor([int(s) + lead - 1 for s, a in zip(starts, answers, strict=True) if lead <= len(a)],
                      dtype=torch.long)  # each answer's turn
    h, x = int(helps[at].sum()), int(harms[at].sum())
    return (lead if h > x else lead - 1), {"opening": lead - 1, "turn_helps": h, "turn_harms": x}


CACHED_POSITIONS = 4096  # backbone logits kept for at most this many positions (SmolLM2: 0.8 GB)


@torch.no_grad()
def backbone_logits(edge: EdgeModel, feats) -> torch.Tensor | None:
    """lm_head(z) (N, V) at `feats`' positions, computed once for the blend's several uses, or
    None beyond CACHED_POSITIONS (a trained comparator's records): each use then computes them
    in its own batches, as memory allows."""
    return edge.lm_head(feats.z.float()) if len(feats) <= CACHED_POSITIONS else None


def finish_head(edge: EdgeModel, head: Head, feats, tcfg, cfg: BlendConfig,
                answers: list[list[int]] | None = None, base_logits: torch.Tensor | None = None) -> None:
    """The classifier on `feats`' positions and τ on them (see the module's doc), and the lead
    tokens (lead_tokens from the records' `answers`, in the features' order): the same for a
    blended head and a trained one, so a comparison isolates the side network. `base_logits`:
    backbone_logits(edge, feats), computed here when not given — one full-vocabulary pass for
    the log-probabilities, the classifier's inputs and τ."""
    from lab.gate_training import _clf_inputs, _log_probs, train_classifier

    edge.set_head(head)
    head.side.eval()
    if base_logits is None:
        base_logits = backbone_logits(edge, feats)
    log_probs = _log_probs(edge, head, feats, base_logits)  # the side's full-vocabulary pass, once
    if cfg.gate_labels == "mixture" and cfg.tau_rule == "rate" and cfg.lead == "none":  # no gain needed
        helps = harms = torch.zeros(len(feats), dtype=torch.bool)
        measured = False
    else:
        (helps, harms), measured = side_gain(edge, head, feats, log_probs), True
    objective = {"mixture": "mixture", "gain": "onpolicy", "both": "both"}[cfg.gate_labels]
    tcfg = dataclasses.replace(tcfg, clf_objective=objective)
    if objective == "mixture":
        pz, py = torch.zeros(0, edge.d_model), torch.zeros(0)
    else:  # the teacher-forced gain labels stand in for lab/gate_training.py's on-policy ones
        pz, py = feats.z, helps.float()  # the same positions: their features computed once
    hist = train_classifier(edge, head, feats, tcfg, pz, py, log_probs, base_logits)
    with torch.no_grad():
        logit = head.classifier.head(_clf_inputs(edge, head.classifier, feats.z, base_logits)).double()
    head.threshold = threshold(logit, helps, cfg)
    head.lead, lead_info = lead_tokens(cfg, answers, helps, harms)
    head.follow, head.copy = cfg.follow, cfg.copy
    fire = logit > head.threshold
    head.info = {**head.info, "classifier_history": hist,
                 "calibration": {"method": f"τ by {cfg.tau_rule} on the examples' teacher-forced "
                                 f"positions, classifier on {cfg.gate_labels} labels",
                                 "tau_rule": cfg.tau_rule, "fire_rate": cfg.fire_rate,
                                 "lead": head.lead, **lead_info, "follow": head.follow,
                                 "copy": head.copy,
                                 "gain_recall": cfg.gain_recall, "threshold": head.threshold,
                                 "positions": len(feats),
                                 "helps": int(helps.sum()) if measured else None,
                                 "harms": int(harms.sum()) if measured else None,
                                 "fires": round(float(fire.float().mean()), 4),
                                 "recall_helps": round(float(fire[helps].float().mean()), 4)
                                 if measured and bool(helps.any()) else None}}
