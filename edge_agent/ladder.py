"""Ladder side-tuning as Sung et al. build it (LST, NeurIPS 2022), for the `lst`/`choice` modes:
the side network replaces the backbone's output (P_side = softmax(lm_head(U·x))).

    x = D_0 · h0                                         # (N, r), r = d / reduction factor
    for every backbone layer i = 1..L (a ladder from each):
        μ_i = sigmoid(α_i / T)                           # a learned gate per ladder, T = 0.1
        x = μ_i · x + (1 − μ_i) · D_i · ĥ_i             # ĥ_i = rms_norm(h_i); ĥ_L = z as it is
        x = x + B_i(x)                                   # a side block (SwiGLU MLP, width r)
    out = U · x                                          # (N, d), into the backbone's lm_head

Per position, like the adding network (edge_agent/side_network.py): no attention over positions,
so no side KV cache and a skipped position costs nothing later; LST's side blocks are pruned
copies of the backbone's blocks, here the MLP part of a block at the side's width.

The initialisation is what LST's pruning is for — the side network starts as a small copy of
what the backbone computes, not from nothing. `init_from` sets D_i (every ladder) and U to the
top-r principal directions of the backbone's final state z on training positions, the last
ladder's gate open (μ_L ≈ 0) and every block's output to zero: at step 0 the side network's
distribution is lm_head(U Uᵀ z), the best rank-r reading of the backbone's own (the old
replacing network started from uniform logits, 10.8 nats). Training (at LST's higher learning
rate) then moves the gates and blocks to use the other layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_agent.side_network import SideConfig, SideNetwork

GATE_T = 0.1  # LST's gate temperature
OPEN_LAST = -0.5  # α_L at init: μ_L = sigmoid(−5) ≈ 0.007, the z ladder carries the state


class _Block(nn.Module):
    """A side block: pre-norm SwiGLU MLP at width r (hidden `mult`·r), residual."""

    def __init__(self, r: int, mult: int = 2) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.ones(r))
        self.gate = nn.Linear(r, mult * r, bias=False)
        self.up = nn.Linear(r, mult * r, bias=False)
        self.down = nn.Linear(mult * r, r, bias=False)
        nn.init.zeros_(self.down.weight)  # starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        h = F.rms_norm(x, (x.shape[-1],)) * self.norm
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class LadderSide(nn.Module):
    """LST's ladder side network over [h0, h_layers…] (the SideConfig's layers; LST: all)."""

    def __init__(self, cfg: SideConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, r, n = cfg.d_model, cfg.width, len(cfg.layers)
        self.first = nn.Linear(d, r, bias=False)  # D_0
        self.down = nn.ModuleList(nn.Linear(d, r, bias=False) for _ in range(n))  # D_i
        self.alpha = nn.Parameter(torch.zeros(n))
        self.blocks = nn.ModuleList(_Block(r) for _ in range(n))
        self.out = nn.Linear(r, d, bias=False)  # U
        self.drop = nn.Dropout(cfg.dropout)
        with torch.no_grad():
            self.alpha[-1] = OPEN_LAST

    def assemble(self, wire: Tensor, z: Tensor) -> Tensor:
        """wire: (N, len(wire_layers), d) from HIDDEN; z: (N, d) -> states (N, 1+len(layers), d)."""
        parts = [wire[:, j] for j in range(wire.shape[1])]
        if self.cfg.n_layers in self.cfg.layers:
            parts.append(z)
        return torch.stack(parts, dim=1)

    def _ladder(self, states: Tensor, j: int) -> Tensor:
        h = states[:, j + 1]
        if self.cfg.layers[j] != self.cfg.n_layers:  # z is normed already (the final norm)
            h = F.rms_norm(h, (h.shape[-1],))
        return self.down[j](h)

    def forward(self, states: Tensor) -> Tensor:
        """states: (N, 1 + len(layers), d) ordered [h0, h_layers…] -> the state for lm_head (N, d)."""
        states = states.to(self.out.weight.dtype)
        x = self.drop(self.first(F.rms_norm(states[:, 0], (states.shape[-1],))))
        mu = torch.sigmoid(self.alpha / GATE_T)
        for j in range(len(self.cfg.layers)):
            x = mu[j] * x + (1 - mu[j]) * self._ladder(states, j)
            x = self.drop(self.blocks[j](x))
        return self.out(x)

    @torch.no_grad()
    def init_from(self, states: Tensor) -> None:
        """LST's start from the backbone: D_i = Uᵀ and U the top-r right singular vectors of z
        over training positions `states` (M, 1 + len(layers), d), so the network starts as
        lm_head(U Uᵀ z). Without z among the layers, the last chosen layer's directions."""
        j = len(self.cfg.layers) - 1
        z = states[:, j + 1].float()
        if self.cfg.layers[j] != self.cfg.n_layers:
            z = F.rms_norm(z, (z.shape[-1],))
        _, _, vh = torch.linalg.svd(z, full_matrices=False)  # (min(M, d), d)
        r = self.cfg.width
        basis = vh[:r]  # (r', d), r' ≤ r when fewer positions than r
        w = torch.zeros(r, z.shape[-1], device=z.device)
        w[: len(basis)] = basis
        w = w.to(self.out.weight.dtype)
        for lin in (self.first, *self.down):
            lin.weight.copy_(w)
        self.out.weight.copy_(w.T)

    def gates(self) -> list[float]:
        """μ_i per ladder (how much of the side state each layer's ladder keeps)."""
        return torch.sigmoid(self.alpha.detach() / GATE_T).tolist()


def build_side(cfg: SideConfig) -> SideNetwork | LadderSide:
    """The side network a SideConfig names (its `kind`)."""
    return LadderSide(cfg) if cfg.kind == "lst" else SideNetwork(cfg)
