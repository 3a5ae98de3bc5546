"""`spa blend`: a new user's side network blended from the pool in seconds (issue 19 item 2).

Crayon's instant blending, on SPA's side networks: the user's network is

    θ(w) = θ0 + Σ_k w_k (θ_k − θ0)          (lab/pool.py: members fine-tuned from one start θ0)

with the K coefficients w chosen from ≤ 16 of the user's examples, then a few fine-tuning steps:

1. one frozen backbone pass over the examples gives the states the side network reads at every
   answer position (as in training; on a device these are the cloud's HIDDEN frames);
2. a few Adam steps on w minimise the examples' cross-entropy under lm_head(z + Δ_θ(w)), the
   softmax restricted to a candidate vocabulary — each position's target and the top tokens of
   the backbone and of every member there — so a step costs the side network, not the
   49k-row lm_head (pool blending, Crayon's). Only at the positions the answer copies from the
   prompt (`coef_on` 'copies', lab.blend_tune.copied_positions): there the pool's skill is what
   counts; the user's own words (a new opening, another signature) no member writes, and on
   all positions their few tokens of 20 nats chose the members (RESULTS §10.4). The w kept is
   the step's best at each copied run's first token — the turn from the user's opening into the
   message, which the copies' flat valley leaves undecided (`coef_keep` 'turn', §10.8, §10.11);
   each member's affine parts are computed once (lab/blend_basis.py), a step mixes them;
3. a few Adam steps on ALL of the network's weights from θ(w), on the same features and
   candidate softmax, fitting the user's own words and keeping the blend's distribution where
   the answer copies the prompt (lab/blend_tune.py: few-step fine-tuning, not blending;
   `tune_steps=0` leaves the pure blend);
4. the classifier and τ from the examples' teacher-forced positions (lab/blend_gate.py, no
   rollouts; by default on the mixture likelihood and the side's measured gain together: on
   the mixture alone the gate missed bo's first token on new prompts, RESULTS §10.5), and the
   head's `follow` (the token after each correction consults the side network: such a gate sits
   at the margin inside the user's own phrases, §10.10) and `copy` (a token where the backbone
   would leave a copy of the prompt under way consults it: teacher-forced, the examples never
   show the backbone drifting from the message into its own words, §10.12); the need router
   (edge_agent/need.py) learns the user's prompts against the pool's generic ones.

Blending runs on the CPU whatever device the backbone is on (the features come to the CPU, as
HIDDEN frames come to a device) with `cfg.threads` torch threads, and times itself in wall and
CPU seconds (on the shared 2-core machine wall time is mostly other people's work). The edge
kit (lm_head copy, wire grid) ships with the device: made before the clock starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from edge_agent.edge_model import EdgeModel, Head
from edge_agent.need import NeedConfig, NeedRouter
from edge_agent.side_network import Classifier, SideNetwork
from lab.blend_basis import PoolBasis
from lab.blend_config import BlendConfig
from lab.blend_gate import backbone_logits, finish_head
from lab.blend_tune import (
    copied_positions,
    delta_logits,
    layout,
    run_starts,
    tune_network,
)
from lab.data import Example
from lab.pool import Pool
from routing.errors import InputError


def train_config(cfg: BlendConfig):
    from lab.training import TrainConfig

    return TrainConfig(mode="spa", max_prompt_tokens=cfg.max_prompt_tokens, clf_epochs=cfg.clf_epochs,
                       clf_features=cfg.clf_features, clf_hidden=cfg.clf_hidden,
                       clf_objective="mixture", seed=cfg.seed)


def blend(backbone, pool: Pool, examples: list[Example], cfg: BlendConfig,
          edge: EdgeModel | None = None, features_out: list | None = None) -> tuple[EdgeModel, dict]:
    """The user's edge model (an 'add' head: side network, classifier, τ) and need router.
    `features_out`, when given, receives the examples' features (for a benchmark's reuse).
    Every random draw (inits, the tuning's dropout) comes from `cfg.seed`: the same seed, the
    same bundle; the caller's generator goes on where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _blend(backbone, pool, examples, cfg, edge, features_out)


def _blend(backbone, pool: Pool, examples: list[Example], cfg: BlendConfig,
           edge: EdgeModel | None, features_out: list | None) -> tuple[EdgeModel, dict]:
    from lab.training import extract_features

    if pool.fingerprint != backbone.fingerprint:
        from routing.errors import FingerprintMismatch

        raise FingerprintMismatch(pool.fingerprint, backbone.fingerprint, what=f"pool {pool.path}")
    examples = examples[: cfg.max_examples]
    if len(examples) < 2:
        raise InputError(f"blending needs at least 2 examples, got {len(examples)}")
    edge = (edge or EdgeModel.for_backbone(backbone)).cpu()  # the device's kit: not timed
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        tcfg = train_config(cfg)
        feats = _on_cpu(extract_features(backbone, examples, pool.side_cfg, tcfg, progress=False))
        t1, c1 = time.perf_counter(), time.process_time()
        tok = backbone.tokenizer
        copied = copied_positions(examples, tok, tcfg)
        answers = [a for _, a in layout(examples, tok, tcfg)]  # the features' order
        lengths = [len(a) for a in answers]
        base_logits = backbone_logits(edge, feats)  # (N, V): one full-vocabulary pass for all uses
        vocab, info = candidate_vocab(edge.lm_head, pool, feats, cfg, base_logits)
        w, fit = fit_coefficients(edge.lm_head, pool, feats, cfg, vocab, copied, run_starts(copied, lengths))
        net = blended_network(pool, w)
        t_tune = time.perf_counter()
        tuned = tune_network(net, edge.lm_head, feats, vocab, cfg, lengths, copied, backbone.eos_token_id)
        fit = {**info, **fit, "tune": {**tuned, "seconds": round(time.perf_counter() - t_tune, 3)}}
        head = Head("add", net, Classifier(backbone.d_model))
        finish_head(edge, head, feats, tcfg, cfg, answers, base_logits)
        need = NeedRouter.fit([ex.prompt_ids(tok, cfg.max_prompt_tokens) for ex in examples],
                              [tok(p, add_special_tokens=False)["input_ids"] for p in pool.generic()],
                              edge.lm_head, NeedConfig())
        t2, c2 = time.perf_counter(), time.process_time()
    finally:
        torch.set_num_threads(threads)
    edge.need = need
    if features_out is not None:
        features_out.append(feats)
    record = {"blend": {"pool": str(pool.path), "members": pool.names,
                        "coefficients": dict(zip(pool.names, [round(x, 4) for x in w.tolist()], strict=True)),
                        "examples": len(examples), "positions": len(feats), **fit,
                        "seconds": {"features": round(t1 - t0, 3), "blend": round(t2 - t1, 3),
                                    "total": round(t2 - t0, 3)},
                        "cpu_seconds": {"features": round(c1 - c0, 3), "blend": round(c2 - c1, 3),
                                        "total": round(c2 - c0, 3)},
                        "threads": cfg.threads, "cores": _cores(), "lead": head.lead,
                        "need": need.info}}
    head.info["blend"] = record["blend"]
    return edge.eval(), record


def _on_cpu(feats):
    """Features where the blend runs: the CPU (as the wire brings them: fp16)."""
    from lab.training import Features

    if feats.y.device.type == "cpu":
        return feats
    return Features(feats.states.cpu(), feats.z.cpu(), feats.y.cpu(), feats.layers)


def _cores() -> int:
    """CPU cores this process may run on (its affinity: `taskset -c 0,1` gives 2)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 0


def candidate_vocab(lm_head: torch.nn.Linear, pool: Pool, feats, cfg: BlendConfig,
                    base_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The sorted candidate vocabulary — the targets and the top `cfg.candidates` tokens of the
    backbone and of every member at each position — and the examples' NLL under each.
    `base_logits`: lm_head(feats.z) (N, V) when the caller has them."""
    n = min(len(feats), cfg.max_positions)
    states, z, y = feats.states[:n].float(), feats.z[:n].float(), feats.y[:n]
    net = pool.network("base")
    with torch.no_grad():
        z_logits = lm_head(z) if base_logits is None else base_logits[:n]
        cand = [feats.y, z_logits.topk(cfg.candidates, -1).indices.flatten()]  # every target
        member_nll = {}
        for m in pool.names:  # one module, each member's weights (building 6 modules costs ~1 CPU s)
            member = {k: v.float() for k, v in pool.members[m].items()}
            x = functional_call(net, member, (states,), {"project": False})  # (n, r)
            logits = delta_logits(x, member["w_out.weight"], lm_head.weight, z_logits)
            cand.append(logits.topk(cfg.candidates, -1).indices.flatten())
            member_nll[m] = round(F.cross_entropy(logits, y).item(), 4)
        base_nll = F.cross_entropy(z_logits, y).item()
    vocab = torch.unique(torch.cat(cand))
    return vocab, {"vocab": len(vocab), "nll_backbone": round(base_nll, 4), "nll_members": member_nll}


def fit_coefficients(lm_head: torch.nn.Linear, pool: Pool, feats, cfg: BlendConfig,
                     vocab: torch.Tensor | None = None, copied: torch.Tensor | None = None,
                     turn: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """w (K,) minimising the examples' cross-entropy under the blended network, from w = 0,
    the softmax over `vocab` (candidate_vocab's when None). With `cfg.coef_on` 'copies', only
    at the `copied` positions (lab.blend_tune.copied_positions; all when none is flagged), plus
    `cfg.coef_own` × the mean over the others when that is > 0 (the objective is then recorded).
    With `cfg.coef_keep` 'turn', the step's w with the lowest mean NLL at the `turn` positions
    (lab.blend_tune.run_starts: each copied run's first token) among the fitted ones, the fit
    stopped `cfg.coef_patience` steps after that best (the record keeps the turn's path)."""
    info: dict = {}
    if vocab is None:
        vocab, info = candidate_vocab(lm_head, pool, feats, cfg)
    n = min(len(feats), cfg.max_positions)
    idx = torch.arange(n)
    own = None  # with `coef_own`: the user's own words, a second term of that weight
    if cfg.coef_on == "copies":
        if copied is None or len(copied) != len(feats):
            raise ValueError("fit_coefficients: coef_on 'copies' needs one copy flag per position")
        if cfg.coef_own > 0 and bool(copied[:n].any()) and not bool(copied[:n].all()):
            own = ~copied[:n]
        elif bool(copied[:n].any()):
            idx = idx[copied[:n]]
    states, z, y = feats.states[idx].float(), feats.z[idx].float(), feats.y[idx]
    target = torch.searchsorted(vocab, y)
    weight = lm_head.weight[vocab].detach()
    bias = lm_head.bias[vocab].detach() if lm_head.bias is not None else None
    with torch.no_grad():
        fixed = F.linear(z, weight, bias)  # (n, V_c): the backbone's part, the same every step
    basis = PoolBasis(pool, states, weight, fixed)  # each member's affine parts, once
    if own is not None:  # the two terms' positions and targets, split once
        split = [(~own, target[~own], 1.0), (own, target[own], cfg.coef_own)]
    at_turn = None  # with `coef_keep` 'turn': the turn positions among those fitted
    if cfg.coef_keep == "turn" and cfg.coef_on == "copies":
        if turn is None or len(turn) != len(feats):
            raise ValueError("fit_coefficients: coef_keep 'turn' needs one turn flag per position")
        at_turn = turn[idx] if bool(turn[idx].any()) else None

    def loss_of(logits: torch.Tensor, cap: float = cfg.coef_cap) -> torch.Tensor:
        if own is None:
            return capped_nll(logits, target, cap)
        return sum(c * capped_nll(logits[m], t, cap) for m, t, c in split)

    def turn_nll(logits: torch.Tensor) -> float:
        return F.cross_entropy(logits[at_turn].detach(), target[at_turn]).item()

    w = torch.zeros(len(pool.names), requires_grad=True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    history, turns, best = [], [], (float("inf"), 0, w.detach().clone())
    for step in range(cfg.steps + (at_turn is not None)):  # + a pass scoring the last step's w
        logits = basis.logits(w)
        if at_turn is not None:
            turns.append(round(turn_nll(logits), 4))
            if turns[-1] < best[0]:
                best = (turns[-1], step, w.detach().clone())
            elif cfg.coef_patience and step - best[1] >= cfg.coef_patience:
                break
        if step == cfg.steps:
            break
        loss = loss_of(logits)
        history.append(round(loss.item(), 4))
        opt.zero_grad(set_to_none=True)
        (loss + cfg.l2 * (w * w).sum()).backward()
        opt.step()
    kept = best[1] if at_turn is not None else cfg.steps
    w = best[2] if at_turn is not None else w.detach()
    with torch.no_grad():  # the record's NLLs are plain means whatever the fit's cap
        final = loss_of(basis.logits(w), 0.0).item()
        start = history[0] if history and cfg.coef_cap == 0 else round(loss_of(basis.logits(torch.zeros_like(w)), 0.0).item(), 4)
    out = {**info, "nll_candidates_start": start, "nll_candidates_end": round(final, 4),
           "steps": cfg.steps, "kept_step": kept, "coef_positions": len(idx)}
    if turns:
        out["nll_turn"] = {"start": turns[0], "kept": best[0], "last": turns[-1],
                           "positions": int(at_turn.sum()), "path": turns}
        out["steps_run"] = len(history)
    return w, out


def capped_nll(logits: torch.Tensor, target: torch.Tensor, cap: float) -> torch.Tensor:
    """Mean NLL, each position's softly capped at `cap` nats (c·tanh(nll/c)) when cap > 0."""
    nll = F.cross_entropy(logits, target, reduction="none")
    return (cap * torch.tanh(nll / cap)).mean() if cap > 0 else nll.mean()


def blended_network(pool: Pool, w: torch.Tensor) -> SideNetwork:
    """θ0 + Σ w_k (θ_k − θ0) as a side network of the pool's shape."""
    net = pool.network("base")
    sd = {k: v + sum(float(wk) * (pool.members[m][k] - v) for wk, m in zip(w, pool.names, strict=True))
          for k, v in pool.base.items()}
    net.load_state_dict(sd)
    return net.eval()


def save_blended(edge: EdgeModel, record: dict, out: str | Path, kits: str | Path | None = None) -> Path:
    """The bundle as `spa train` writes it, plus the need router beside it (need.json)."""
    from edge_agent.bundle import save_bundle

    path = save_bundle(edge, out, record, kits)
    edge.need.save(path)
    return path
