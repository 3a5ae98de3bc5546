"""The private side network `S` of DESIGN.md §2, after the SPA code's ladder side-tuning.

Per position, no attention over positions: a position the classifier skipped costs nothing
later and there is no side KV cache.

    x = W_in · h0                                      # (N, r)
    for each chosen layer i:
        x = act(x)
        x = D_i · norm(h_i) + A_i(x)                   # A_i: residual MLP on (N, r)
        (gated: x = μ_i · x + (1 − μ_i) · D_i · norm(h_i),  μ_i = sigmoid(α_i / 0.1))
    Δ = W_out · x                                      # (N, d)

`layers` index the backbone states as in cloud_worker/backbone.py: 1..L, where L is z.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from routing.errors import InputError

_ACTS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU}


@dataclass
class SideConfig:
    d_model: int  # backbone width d
    n_layers: int  # backbone depth L
    width: int = 0  # r; 0 = d/8 (sane range d/16 – d/2)
    layers: list[int] = field(default_factory=list)  # chosen layers; empty = every `every`-th
    every: int = 1  # use every k-th layer (fewer bytes on the wire); sane range 1–4
    act: str = "gelu"
    gates: bool = False  # LST-style learned gates
    gate_temperature: float = 0.1
    dropout: float = 0.0  # on the side state x while training; sane range 0–0.5
    kind: str = "spa"  # 'spa': this file's network; 'lst': LST's ladder network (edge_agent/ladder.py)

    def __post_init__(self) -> None:
        if self.width <= 0:
            self.width = max(8, self.d_model // 8)
        if self.every < 1:
            raise InputError(f"side network: every must be >= 1, got {self.every}")
        if not self.layers:
            chosen = list(range(self.every, self.n_layers + 1, self.every))
            if self.n_layers not in chosen:
                chosen.append(self.n_layers)  # z is free: it travels in every frame
            self.layers = chosen
        bad = [i for i in self.layers if not 1 <= i <= self.n_layers]
        if bad:
            raise InputError(f"side network: layers {bad} outside 1..{self.n_layers}")
        if self.kind not in ("spa", "lst"):
            raise InputError(f"side network: unknown kind {self.kind!r}: expected spa or lst")
        if self.act not in _ACTS:
            raise InputError(f"side network: unknown activation {self.act!r}")
        self.layers = sorted(set(int(i) for i in self.layers))

    @property
    def wire_layers(self) -> list[int]:
        """Backbone states a HIDDEN message carries: h0 and the chosen layers except z."""
        return [0] + [i for i in self.layers if i != self.n_layers]

    def to_dict(self) -> dict:
        return asdict(self)


class SideNetwork(nn.Module):
    def __init__(self, cfg: SideConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, r = cfg.d_model, cfg.width
        self.w_in = nn.Linear(d, r)
        self.down = nn.ModuleList(nn.Linear(d, r) for _ in cfg.layers)  # D_i
        self.adapt = nn.ModuleList(  # A_i, residual MLP
            nn.Sequential(nn.Linear(r, r), _ACTS[cfg.act](), nn.Linear(r, r)) for _ in cfg.layers
        )
        self.act = _ACTS[cfg.act]()
        self.drop = nn.Dropout(cfg.dropout)
        self.alpha = nn.Parameter(torch.zeros(len(cfg.layers))) if cfg.gates else None
        self.w_out = nn.Linear(r, d, bias=False)
        nn.init.zeros_(self.w_out.weight)  # Δ = 0 at start: 'add' starts as the backbone

    def assemble(self, wire: Tensor, z: Tensor) -> Tensor:
        """wire: (N, len(wire_layers), d) from HIDDEN; z: (N, d) -> states (N, 1+len(layers), d)."""
        parts = [wire[:, j] for j in range(wire.shape[1])]
        if self.cfg.n_layers in self.cfg.layers:
            parts.append(z)
        return torch.stack(parts, dim=1)

    def parts(self, states: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The network's affine inputs: W_in · h0 (N, r) and D_i · norm(h_i) (N, r) per chosen
        layer. Affine in the weights: under a blend θ0 + Σ w_k (θ_k − θ0) they are θ0's plus
        Σ w_k × each member's difference (lab/blend_basis.py computes them once per member)."""
        states = states.to(self.w_in.weight.dtype)
        d = states.shape[-1]
        return self.w_in(states[:, 0]), [self.down[j](F.rms_norm(states[:, j + 1], (d,)))
                                         for j in range(len(self.cfg.layers))]

    def forward(self, states: Tensor | None, project: bool = True,
                parts: tuple[Tensor, Sequence[Tensor]] | None = None) -> Tensor:
        """states: (N, 1 + len(layers), d) ordered [h0, h_layers…] -> Δ (N, d); with `project`
        False the side state x (N, r) before Δ = W_out · x (lab/blend.py maps Δ through the
        lm_head's rows: (M · W_out) · x costs r/N + r/d of M · (W_out · x)). `parts`: this
        network's `parts(states)` when already computed (states is then not read)."""
        x0, skips = parts if parts is not None else self.parts(states)
        x = self.drop(x0)  # (N, r)
        for j, skip in enumerate(skips):
            x = self.drop(self.act(x))
            if self.alpha is not None:
                mu = torch.sigmoid(self.alpha[j] / self.cfg.gate_temperature)
                x = mu * (x + self.adapt[j](x)) + (1 - mu) * skip
            else:
                x = skip + x + self.adapt[j](x)
        return self.w_out(x) if project else x  # (N, d) or (N, r)


N_STATS = 3  # entropy, top-1 log-probability, top-1 − top-2 logit margin of P_base


def base_stats(z: Tensor, lm_head: nn.Module, logits: Tensor | None = None) -> Tensor:
    """What the backbone's own distribution says about its confidence. z: (N, d) -> (N, 3);
    `logits`: lm_head(z) (N, V) when the caller has them already (one full-vocabulary pass)."""
    logits = (lm_head(z.to(lm_head.weight.dtype)) if logits is None else logits).float()  # (N, V)
    logp = logits.log_softmax(-1)
    top = logits.topk(2, dim=-1).values  # (N, 2)
    entropy = -(logp.exp() * logp).sum(-1)
    return torch.stack([entropy, logp.max(-1).values, top[:, 0] - top[:, 1]], dim=-1)


class Classifier(nn.Module):
    """`C`: z_t (and optionally the backbone distribution's confidence, from the edge's own
    lm_head copy) -> probability g_t that the side network is needed. Linear, or an MLP."""

    def __init__(self, d_model: int, features: str = "z", hidden: int = 0) -> None:
        super().__init__()
        if features not in ("z", "z+stats"):
            raise InputError(f"classifier: unknown features {features!r}: expected z or z+stats")
        self.cfg = {"features": features, "hidden": int(hidden)}
        d_in = d_model + (N_STATS if features == "z+stats" else 0)
        if hidden > 0:
            self.linear = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.linear = nn.Linear(d_in, 1)

    @property
    def uses_stats(self) -> bool:
        return self.cfg["features"] == "z+stats"

    def features(self, z: Tensor, lm_head: nn.Module | None, logits: Tensor | None = None) -> Tensor:
        """z: (N, d) -> (N, d_in); `logits`: lm_head(z) when already computed."""
        z = z.float()
        if not self.uses_stats:
            return z
        if lm_head is None:
            raise InputError("classifier with z+stats features needs the lm_head")
        return torch.cat([z, base_stats(z, lm_head, logits)], dim=-1)

    def forward(self, z: Tensor, lm_head: nn.Module | None = None) -> Tensor:  # (N, d) -> (N,)
        return torch.sigmoid(self.logit(z, lm_head))

    def logit(self, z: Tensor, lm_head: nn.Module | None = None) -> Tensor:
        x = self.features(z, lm_head)
        return self.head(x)

    def head(self, x: Tensor) -> Tensor:
        """Features (N, d_in) -> logit (N,)."""
        w = next(self.linear.parameters())
        return self.linear(x.to(w.dtype)).squeeze(-1)
