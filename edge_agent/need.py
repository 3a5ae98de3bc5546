"""Routing by need (issue 19 item 3): does this prompt need the user's side network at all?

Decided on the device before the first token, from what it holds then: the prompt's token ids
and the edge kit's lm_head. SmolLM2 ties its lm_head to its input embeddings, so the lm_head's
rows are the token embeddings: the prompt's embedding is the normalised mean of the rows of its
distinct tokens. A logistic regression on it scores 'customised'; a request scored below the
threshold runs as `base` end to end (no wire layers, no REQUEST), so its M is 0.

Fitted at blending time on the user's example prompts (positives) against the pool's generic
prompts (negatives). The threshold is calibrated like τ, on held-out scores: k-fold
out-of-fold scores of the user's prompts, and the threshold kept where `recall` of them still
count as customised — or, when the out-of-fold scores separate the two sets, the middle of the
gap between them if that is lower (a customised prompt sent as base loses the user's style; a
generic one sent as spa only costs M; 16 examples' 5 % quantile sits on the lowest of them and
lost 11 % of cy's held-out prompts).

    <bundle>/need.json   weights, bias, threshold and how they were fitted
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from routing.config import Tunables, tunable
from routing.errors import InputError

FORMAT = "spa-need-router/1"
FILE = "need.json"


@dataclass
class NeedConfig(Tunables):
    recall: float = tunable(0.95, 0.5, 1.0, "share of the user's held-out prompts kept customised")
    folds: int = tunable(4, 2, 16, "folds of the out-of-fold scores the threshold is set on")
    l2: float = tunable(1e-2, 0.0, 10.0, "ridge on the weights")
    steps: int = tunable(200, 10, 5000, "full-batch Adam steps")


def prompt_embedding(prompts: list[list[int]], lm_head: torch.nn.Linear) -> Tensor:
    """(P, d): per prompt, the normalised mean of the lm_head rows of its distinct tokens."""
    w = lm_head.weight.detach()
    rows = []
    for ids in prompts:
        if not ids:
            raise InputError("need router: an empty prompt")
        idx = torch.tensor(sorted(set(int(i) for i in ids)), device=w.device)
        if int(idx.max()) >= w.shape[0] or int(idx.min()) < 0:
            raise InputError(f"need router: token id outside the vocabulary of {w.shape[0]}")
        rows.append(w[idx].float().mean(0))
    return F.normalize(torch.stack(rows), dim=-1).cpu() * w.shape[1] ** 0.5  # the router's side


@dataclass
class NeedRouter:
    weight: Tensor  # (d,)
    bias: float
    threshold: float  # customised when the logit is above it
    info: dict = field(default_factory=dict)

    @torch.no_grad()
    def scores(self, prompts: list[list[int]], lm_head: torch.nn.Linear) -> Tensor:
        return prompt_embedding(prompts, lm_head) @ self.weight + self.bias

    def customised(self, prompt: list[int], lm_head: torch.nn.Linear) -> bool:
        """Run this request with the side network (else as `base` end to end)."""
        return float(self.scores([prompt], lm_head)[0]) > self.threshold

    # ------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, positive: list[list[int]], negative: list[list[int]], lm_head: torch.nn.Linear,
            cfg: NeedConfig) -> NeedRouter:
        if len(positive) < 2 or not negative:
            raise InputError(f"need router: needs ≥ 2 user prompts and generic ones, got "
                             f"{len(positive)} and {len(negative)}")
        xp, xn = prompt_embedding(positive, lm_head), prompt_embedding(negative, lm_head)
        folds = min(cfg.folds, len(positive))
        oof = torch.empty(len(positive))
        oof_neg = torch.empty(len(negative))
        for f in range(folds):
            keep_p = torch.arange(len(positive)) % folds != f
            keep_n = torch.arange(len(negative)) % folds != f
            w, b = _logistic(xp[keep_p], xn[keep_n], cfg)
            oof[~keep_p] = xp[~keep_p] @ w + b
            oof_neg[~keep_n] = xn[~keep_n] @ w + b
        # the highest threshold that keeps `recall` of the held-out user prompts customised;
        # when no generic prompt scores as high as any user prompt out of fold, the middle of
        # that gap instead (lower): a user prompt unlike the examples is kept customised too
        threshold = float(torch.quantile(oof.double(), 1 - cfg.recall)) - 1e-6
        lowest, generic_top = float(oof.min()), float(oof_neg.max())
        if lowest > generic_top:
            threshold = min(threshold, (lowest + generic_top) / 2)
        w, b = _logistic(xp, xn, cfg)
        info = {"threshold": threshold, "recall": cfg.recall, "folds": folds,
                "positives": len(positive), "negatives": len(negative),
                "oof_lowest": lowest, "oof_generic_highest": generic_top,
                "oof_recall": float((oof > threshold).float().mean()),
                "oof_generic_as_customised": float((oof_neg > threshold).float().mean())}
        return cls(w, b, threshold, info)

    # ------------------------------------------------------------ on disk
    def save(self, bundle: str | Path) -> Path:
        path = Path(bundle) / FILE
        path.write_text(json.dumps({"format": FORMAT, "weight": self.weight.tolist(),
                                    "bias": self.bias, "threshold": self.threshold,
                                    "info": self.info}))
        return path

    @classmethod
    def load(cls, bundle: str | Path, d_model: int) -> NeedRouter | None:
        """The bundle's router, or None when it has none (every request then uses the side)."""
        path = Path(bundle) / FILE
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
            assert meta["format"] == FORMAT
            weight = torch.tensor([float(x) for x in meta["weight"]])
            bias, threshold = float(meta["bias"]), float(meta["threshold"])
        except (ValueError, KeyError, TypeError, AssertionError):
            raise InputError(f"{path} is not a {FORMAT} file") from None
        if weight.shape != (d_model,) or not torch.isfinite(weight).all():
            raise InputError(f"{path}: weights of shape {tuple(weight.shape)}, expected ({d_model},)")
        return cls(weight, bias, threshold, meta.get("info", {}))


def _logistic(xp: Tensor, xn: Tensor, cfg: NeedConfig) -> tuple[Tensor, float]:
    """Class-balanced logistic regression, full batch."""
    x = torch.cat([xp, xn])
    y = torch.cat([torch.ones(len(xp)), torch.zeros(len(xn))])
    weight = torch.where(y > 0, 0.5 / len(xp), 0.5 / len(xn))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(cfg.steps):
        loss = (F.binary_cross_entropy_with_logits(x @ w + b, y, reduction="none") * weight).sum()
        opt.zero_grad(set_to_none=True)
        (loss + cfg.l2 * (w * w).sum()).backward()
        opt.step()
    return w.detach(), float(b.detach())
