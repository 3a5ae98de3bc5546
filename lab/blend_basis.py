"""The pool's side networks at the examples' positions, precomputed once for the coefficient fit.

Under θ(w) = θ0 + Σ_k w_k (θ_k − θ0) (lab/blend.py) the side network's affine parts are blends
too: W_in · h0 and D_i · norm(h_i) (`SideNetwork.parts`) and the candidate lm_head rows · W_out
are θ0's plus Σ w_k × the member's difference. Computed once for θ0 and the K members, a step of
the fit then costs the residual MLPs A_i (r × r, blended per step), one (N, r) · (r, V_c) product
and K-term sums, instead of every chosen layer's (d × r) projection of every position again —
the same network and logits, by linearity (RESULTS §10.11: the same kept step, |Δw| ~1e-6).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from lab.pool import Pool


class PoolBasis:
    """θ0's parts and each member's difference at fixed positions; `logits(w)` is the blended
    network's logits over the candidate rows there, differentiable in w (K,)."""

    def __init__(self, pool: Pool, states: Tensor, rows: Tensor, fixed: Tensor) -> None:
        """states: (N, 1 + L, d) float, the positions the fit sees; rows: the candidate lm_head
        rows (V_c, d); fixed: the backbone's logits there (N, V_c)."""
        self.net = pool.network("base")  # eval: no dropout in the fit
        base = {k: v.float() for k, v in pool.base.items()}
        thetas = [base] + [{k: v.float() for k, v in pool.members[m].items()} for m in pool.names]
        x0, skips, out = [], [], []
        with torch.no_grad():
            for theta in thetas:
                self.net.load_state_dict(theta)
                x, s = self.net.parts(states)
                x0.append(x)  # (N, r)
                skips.append(torch.stack(s))  # (L, N, r)
                out.append(rows @ theta["w_out.weight"])  # (V_c, r)
        self.x0, self.skips, self.out = (_basis(t) for t in (x0, skips, out))  # (K + 1, …)
        # the residual MLPs (and gates) are not affine in the input: blended as weights per step
        blended = [k for k in base if k.startswith("adapt.") or k == "alpha"]
        self.base = {k: base[k] for k in blended}
        self.deltas = {k: torch.stack([t[k] - base[k] for t in thetas[1:]]) for k in blended}  # (K, …)
        self.fixed = fixed

    def logits(self, w: Tensor) -> Tensor:
        """(N, V_c): lm_head rows · (z + Δ_θ(w)) over the candidate rows, by linearity."""
        w1 = torch.cat([torch.ones(1, dtype=w.dtype), w])  # θ0's parts enter once
        params = {k: v + torch.tensordot(w, self.deltas[k], dims=1) for k, v in self.base.items()}
        x0 = torch.tensordot(w1, self.x0, dims=1)  # (N, r)
        skips = torch.tensordot(w1, self.skips, dims=1)  # (L, N, r)
        x = functional_call(self.net, params, (None,), {"project": False, "parts": (x0, skips)})
        return torch.addmm(self.fixed, x, torch.tensordot(w1, self.out, dims=1).T)  # (N, V_c)


def _basis(parts: list[Tensor]) -> Tensor:
    """[θ0's, θ1's, …] -> [θ0's, θ1's − θ0's, …] stacked (K + 1, …)."""
    stacked = torch.stack(parts)
    return torch.cat([stacked[:1], stacked[1:] - stacked[:1]])
