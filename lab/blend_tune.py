"""A few fine-tuning steps on the blended side network (issue 19, after lab/blend.py's coefficients).

The coefficient fit can only move inside the span of the pool: θ0 + Σ w_k (θ_k − θ0). A user whose
style no member has (a new signature, another closing) is out of that span. This step starts
from the blend and takes `cfg.tune_steps` Adam steps on ALL of the side network's parameters, on
the same frozen features of the same ≤ 16 examples, with

  * the softmax over the candidate vocabulary of the coefficient fit (every target and the top
    tokens of the backbone and of every member), so a step costs the side network and a few
    thousand lm_head rows, not 49k: logits = (z W_cᵀ + b_c) + Δ W_cᵀ, the first term once;
  * at the positions the answer copies from the prompt (a run of ≥ 3 tokens the prompt holds:
    the message passed on), the blend's own distribution kept (a KL term, `tune_copies`
    'keep') instead of the tokens fitted: fitted there, 16 examples teach a prior over their
    messages' first words ("It …"), not copying — bo's turn from the opening to the message fell
    from 48 % to 12 % right (teacher-forced, 48 held-out records), his blends lost the message
    ("Ahoy, matey! It is so! Arr, Captain Bo."). The frame (opening, signature, stop) is fitted;
  * an L2 pull towards the blend (`tune_anchor`), not towards zero: the pool's prior stays;
  * the side network's own dropout on (as in training), the kept weights those of the step
    with the lowest loss on a held-back slice of the examples' records (`tune_holdout`), or the
    last step when there is no slice.

This is few-step fine-tuning, not pool blending: the pool gives the start, the examples the
steps. It runs on the device's CPU inside the blend's 10 s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edge_agent.side_network import SideNetwork
from lab.blend_config import BlendConfig


def delta_logits(x: torch.Tensor, w_out: torch.Tensor, rows: torch.Tensor,
                 base: torch.Tensor | None = None) -> torch.Tensor:
    """The side network's logit shift over the lm_head `rows` (V, d) from its side state x (N, r)
    and W_out (d, r): x · W_outᵀ · rowsᵀ (N, V), plus `base` (N, V) when given (one fused add).
    In the cheaper order: through rows · W_out (V·d·r once, then N·r·V) when that is fewer
    multiplications than through Δ = x · W_outᵀ (N·d·V) — a third of them for 400 positions,
    r = 72, d = 576, V = 49k."""
    (n, r), (v, d) = x.shape, rows.shape
    if v * d * r + n * r * v < n * d * v:
        a, b = x, rows @ w_out  # (N, r), (V, r)
    else:
        a, b = x @ w_out.T, rows  # (N, d), (V, d)
    return torch.addmm(base, a, b.T) if base is not None else a @ b.T


def layout(examples: list, tokenizer, tcfg) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids + eos) per record in the order lab/features.py's
    extract_features lays them out (sorted by prompt + answer length, stable)."""
    eos = tokenizer.eos_token_id
    seqs = [(ex.prompt_ids(tokenizer, tcfg.max_prompt_tokens),
             ex.answer_ids(tokenizer, tcfg.max_answer_tokens) + [eos]) for ex in examples]
    return sorted(seqs, key=lambda s: len(s[0]) + len(s[1]))


def answer_lengths(examples: list, tokenizer, tcfg) -> list[int]:
    """Answer positions per record, in the features' order."""
    return [len(a) for _, a in layout(examples, tokenizer, tcfg)]


def copied_positions(examples: list, tokenizer, tcfg, span: int = 3) -> torch.Tensor:
    """(N,) bool in the features' order: the answer positions inside a run of ≥ `span` tokens
    that the prompt holds word for word — the message passed on, a quote — as opposed to what
    the user writes of their own (an opening, a signature)."""
    flags = []
    for p, a in layout(examples, tokenizer, tcfg):
        grams = {tuple(p[i : i + span]) for i in range(len(p) - span + 1)}
        f = [False] * len(a)
        for j in range(len(a) - span + 1):
            if tuple(a[j : j + span]) in grams:
                f[j : j + span] = [True] * span
        flags += f
    return torch.tensor(flags, dtype=torch.bool)


def record_starts(lengths: list[int]) -> torch.Tensor:
    """Each record's first answer position when the features hold records of `lengths` answer
    positions end to end."""
    return torch.tensor([0, *lengths[:-1]], dtype=torch.long).cumsum(0)


def run_starts(copied: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(N,) bool: the first position of each copied run (copied_positions) within its record —
    the turn from the user's own words into the message passed on."""
    prev = torch.zeros_like(copied)
    prev[1:] = copied[:-1]
    first = record_starts(lengths)
    prev[first[first < len(copied)]] = False
    return copied & ~prev


def opening_lead(answers: list[list[int]], share: float = 0.75, cap: int = 16) -> int:
    """The answer's tokens through the turn into the message: the longest opening (token
    prefix) that at least `share` of the examples' answers begin with, + 1 for the word after
    it (0 when they share none; at most `cap`) — the user's own opening and the turn, which a
    gate trained on a few examples misses at the margin (RESULTS §10.8)."""
    k = 0
    while k < cap and answers:
        heads = [tuple(a[: k + 1]) for a in answers if len(a) > k]
        if not heads or max(heads.count(h) for h in set(heads)) < share * len(answers):
            break
        k += 1
    return min(cap, k + 1) if k else 0


def record_slices(lengths: list[int], holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Position indices (train, held back) when the features hold records of `lengths` answer
    positions end to end: the last ⌈holdout · records⌉ records are held back (none when
    `holdout` is 0 or fewer than 4 records)."""
    n = len(lengths)
    k = 0 if holdout <= 0 or n < 4 else max(1, min(n - 2, round(holdout * n)))
    cut = sum(lengths[: n - k])
    total = sum(lengths)
    return torch.arange(cut), torch.arange(cut, total)


def tune_network(net: SideNetwork, lm_head: torch.nn.Linear, feats, vocab: torch.Tensor,
                 cfg: BlendConfig, lengths: list[int] | None = None,
                 copied: torch.Tensor | None = None, eos: int | None = None) -> dict:
    """Fine-tune `net` in place from its current weights (the blend); returns a record of the
    losses. `vocab`: sorted candidate token ids containing every target; `lengths`: answer
    positions per record in `feats`' order (for the held-back slice); `copied`: the positions
    copied from the prompt (copied_positions), which `cfg.tune_copies` = 'keep' does not fit;
    `eos`: the end-of-answer token (for `cfg.tune_no_stop`)."""
    if cfg.tune_steps <= 0:
        return {"steps": 0}
    states, z, y = feats.states.float(), feats.z.float(), feats.y
    target = torch.searchsorted(vocab, y)
    if not bool((vocab[target.clamp(max=len(vocab) - 1)] == y).all()):
        raise ValueError("tune_network: the candidate vocabulary must hold every target")
    weight = lm_head.weight[vocab].detach()
    with torch.no_grad():
        base = F.linear(z, weight, lm_head.bias[vocab] if lm_head.bias is not None else None)
    if not lengths or sum(lengths) != len(y):  # not the layout answer_lengths describes
        lengths = [len(y)]
    fit, held = record_slices(lengths, cfg.tune_holdout)
    start = {k: v.detach().clone() for k, v in net.state_dict().items()}
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad
             and (cfg.tune_params == "all" or n.startswith("w_out."))]
    params = [p for _, p in named]
    anchor = [start[n].clone() for n, _ in named]
    opt = torch.optim.Adam(params, lr=cfg.tune_lr)

    if copied is not None and len(copied) != len(y):
        raise ValueError(f"tune_network: {len(copied)} copy flags for {len(y)} positions")
    keep = torch.zeros(len(y), dtype=torch.bool)
    if cfg.tune_copies == "keep" and copied is not None:
        keep = copied  # 16 examples teach a prior over their messages' words, not copying: there
        net.eval()  # the tuned network keeps the blend's distribution (KL)
        with torch.no_grad():
            start_logp = F.log_softmax(delta_logits(net(states, project=False), net.w_out.weight,
                                                    weight, base), -1)
    # inside a copied run the answer does not stop: −log(1 − p(eos)) there (`tune_no_stop`)
    stop = int(torch.searchsorted(vocab, torch.tensor(eos))) if eos is not None else -1
    no_stop = (cfg.tune_no_stop and bool(keep.any()) and 0 <= stop < len(vocab)
               and int(vocab[stop]) == eos)

    def loss_on(idx: torch.Tensor) -> torch.Tensor:
        def at(t: torch.Tensor) -> torch.Tensor:  # every position (no held-back slice): no copy
            return t if len(idx) == len(y) else t[idx]

        logits = delta_logits(net(at(states), project=False), net.w_out.weight, weight, at(base))
        k, tgt = at(keep), at(target)
        if not bool(k.any()):
            return F.cross_entropy(logits, tgt)
        logp = F.log_softmax(logits[k], -1)
        nll = F.cross_entropy(logits[~k], tgt[~k], reduction="sum")
        kl = F.kl_div(logp, at(start_logp)[k], log_target=True, reduction="sum")
        go_on = -torch.log1p(-logp[:, stop].exp().clamp(max=1 - 1e-6)).sum() if no_stop else 0.0
        return (nll + kl + go_on) / len(idx)

    def held_loss() -> float:
        net.eval()
        with torch.no_grad():
            return loss_on(held).item()

    best = held_loss() if len(held) else float("inf")
    history, best_step, best_state = [], 0, None
    for step in range(1, cfg.tune_steps + 1):
        net.train(cfg.tune_dropout)
        loss = loss_on(fit)
        pull = sum(((p - a) ** 2).sum() for p, a in zip(params, anchor, strict=True))
        opt.zero_grad(set_to_none=True)
        (loss + cfg.tune_anchor * pull).backward()
        opt.step()
        h = held_loss() if len(held) else float("nan")
        history.append([round(loss.item(), 4), round(h, 4)])
        if len(held) and h < best:
            best, best_step = h, step
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if len(held):
        net.load_state_dict(best_state if best_state is not None else start)
    else:
        best_step = cfg.tune_steps
    net.eval()
    return {"steps": cfg.tune_steps, "kept_step": best_step, "lr": cfg.tune_lr,
            "copies": cfg.tune_copies, "positions_kept": int(keep.sum()), "no_stop": no_stop,
            "held_back_positions": len(held), "history": history}
