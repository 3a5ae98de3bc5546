"""Stop 35, a measurement (not production code): the coefficient fit with each member's affine
parts precomputed once — w_in·h0, D_j·norm(h_j) and the candidate lm_head rows · W_out are affine
in the parameters, so under θ(w) = θ0 + Σ w_k (θ_k − θ0) they are θ0's plus Σ w_k × the member's
difference — against lab.blend.fit_coefficients' functional_call path: wall seconds side by side,
the kept step, and the largest difference in w (local pool, one user, 2 threads). It repeats
SideNetwork.forward's arithmetic by hand (no gates), which is why it is not in lab/.

    python results/cpu_2026-12-05b/fastfit.py bo > results/cpu_2026-12-05b/fastfit.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

import lab.blend as B  # noqa: E402
from lab.blend_tune import copied_positions, layout, run_starts  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402


def affine_parts(pool, thetas: list[dict], states: torch.Tensor, weight: torch.Tensor) -> tuple:
    """θ0's value and each member's difference (K+1 rows) of w_in·h0, D_j·norm(h_j), rows·W_out."""
    d, n_layers = states.shape[-1], len(pool.side_cfg.layers)

    def split(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:1], x[1:] - x[:1]])

    with torch.no_grad():
        x0 = split(torch.stack([F.linear(states[:, 0], t["w_in.weight"], t["w_in.bias"]) for t in thetas]))
        skips = [split(torch.stack([F.linear(F.rms_norm(states[:, j + 1], (d,)), t[f"down.{j}.weight"],
                                             t[f"down.{j}.bias"]) for t in thetas])) for j in range(n_layers)]
        rows = split(torch.stack([weight @ t["w_out.weight"] for t in thetas]))
    return x0, skips, rows


def fast_fit(pool, feats, lm_head, cfg, vocab, copied, turn) -> tuple[torch.Tensor, int]:
    """fit_coefficients' recipe (coef_on 'copies', coef_keep last or turn) on the affine parts."""
    idx = torch.arange(len(feats))[copied]
    states, z, y = feats.states[idx].float(), feats.z[idx].float(), feats.y[idx]
    base = {k: v.float() for k, v in pool.base.items()}
    thetas = [base] + [{k: v.float() for k, v in pool.members[m].items()} for m in pool.names]
    target = torch.searchsorted(vocab, y)
    weight = lm_head.weight[vocab].detach()
    x0, skips, rows = affine_parts(pool, thetas, states, weight)
    with torch.no_grad():
        fixed = F.linear(z, weight)
    adapt = [k for k in base if k.startswith("adapt.")]
    deltas = {k: torch.stack([t[k] - base[k] for t in thetas[1:]]) for k in adapt}
    act, at_turn = pool.network("base").act, turn[idx]

    def logits_at(w: torch.Tensor) -> torch.Tensor:
        w1 = torch.cat([torch.ones(1), w])
        p = {k: base[k] + torch.tensordot(w, deltas[k], dims=1) for k in adapt}
        x = torch.tensordot(w1, x0, dims=1)
        for j, skip in enumerate(skips):
            x = act(x)
            h = F.linear(act(F.linear(x, p[f"adapt.{j}.0.weight"], p[f"adapt.{j}.0.bias"])),
                         p[f"adapt.{j}.2.weight"], p[f"adapt.{j}.2.bias"])
            x = torch.tensordot(w1, skip, dims=1) + x + h
        return torch.addmm(fixed, x, torch.tensordot(w1, rows, dims=1).T)

    w = torch.zeros(len(pool.names), requires_grad=True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    keep_turn, best = cfg.coef_keep == "turn", (float("inf"), 0, None)
    for step in range(cfg.steps + keep_turn):
        logits = logits_at(w)
        if keep_turn:
            nll = F.cross_entropy(logits[at_turn].detach(), target[at_turn]).item()
            if nll < best[0]:
                best = (nll, step, w.detach().clone())
            elif cfg.coef_patience and step - best[1] >= cfg.coef_patience:
                break
        if step == cfg.steps:
            break
        opt.zero_grad()
        (F.cross_entropy(logits, target) + cfg.l2 * (w * w).sum()).backward()
        opt.step()
    return (best[2], best[1]) if keep_turn else (w.detach(), cfg.steps)


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    assert not pool.side_cfg.gates
    torch.set_num_threads(2)
    user = sys.argv[1] if len(sys.argv) > 1 else "bo"
    ex = style_records(STYLES[user], 16, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens, corpus_file())
    got: list = []
    edge, _ = B.blend(bb, pool, ex, cfg, features_out=got)
    feats, tcfg = got[0], B.train_config(cfg)
    copied = copied_positions(ex, bb.tokenizer, tcfg)
    turn = run_starts(copied, [len(a) for _, a in layout(ex, bb.tokenizer, tcfg)])
    vocab, _ = B.candidate_vocab(edge.lm_head, pool, feats, cfg)
    for name, c in (("default", cfg), ("turn", cfg.replace(steps=60, l2=0.01, coef_keep="turn"))):
        for rep in range(3):
            t = time.perf_counter()
            w_e, info = B.fit_coefficients(edge.lm_head, pool, feats, c, vocab, copied, turn)
            t_e, t = time.perf_counter() - t, time.perf_counter()
            w_f, kept = fast_fit(pool, feats, edge.lm_head, c, vocab, copied, turn)
            t_f = time.perf_counter() - t
            print(f"{user} {name} #{rep}: exact {t_e:.3f} s (kept {info['kept_step']}), fast {t_f:.3f} s "
                  f"(kept {kept}), ratio {t_e / t_f:.2f}, max |Δw| {float((w_e - w_f).abs().max()):.2e}", flush=True)


if __name__ == "__main__":
    main()
