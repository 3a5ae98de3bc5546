"""Batched generation for evaluation and training rollouts: many sequences per backbone forward.

Every mode, driving the same per-token state machine as the edge agent and the reference
generator (`edge_agent.decoding.Decoder`), one decoder per row:

    prefill   left-padded prompts (B, T), position ids from the mask, a DynamicCache
    per step  base tokens (B,) · gate on z (B, d) in one call · side logits for the fired rows
              in one call · Decoder.frame / .side per row · finished rows leave the cache
              · one backbone forward of the chosen tokens (B, 1)

The reference generator stays the oracle: on CPU in fp32 this equals it token for token
(tests/test_batched.py). Prompts are sorted by length so a batch pads little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from edge_agent.budget import BudgetConfig
from edge_agent.decoding import Act, Decoder, check_request
from edge_agent.edge_model import EdgeModel
from lab.reference import Generation, check_modes
from routing.errors import FingerprintMismatch
from routing.modes import Mode
from routing.quant import WireDtype
from routing.sampling import Sampling, pick_tokens

if TYPE_CHECKING:
    from cloud_worker.backbone import Backbone


@dataclass
class BatchConfig:
    batch_size: int = 64  # sequences per backbone forward; sane range 4–32 (CPU), 64–1024 (GPU)
    max_prefill_tokens: int = 1 << 17  # padded prompt tokens per prefill call; 4k–256k
    progress: bool = True  # a tqdm bar with rates and ETA


class BatchedGenerator:
    def __init__(self, backbone: Backbone, edge: EdgeModel | None,
                 cfg: BatchConfig | None = None) -> None:
        if edge is not None and edge.fingerprint != backbone.fingerprint:
            raise FingerprintMismatch(edge.fingerprint, backbone.fingerprint)
        self.backbone, self.edge, self.cfg = backbone, edge, cfg or BatchConfig()

    def generate(self, prompts: list[list[int]], max_new_tokens: int, mode: Mode | str = Mode.BASE,
                 sampling: Sampling | None = None, stop_at_eos: bool = True, keep_z: bool = False,
                 desc: str | None = None, budget: BudgetConfig | None = None,
                 wire_dtype: str | WireDtype = WireDtype.FP16) -> list[Generation]:
        """One Generation per prompt, in the order given; z and hidden states reach the edge's
        arithmetic through `wire_dtype`'s grid, as served."""
        wire = WireDtype.parse(wire_dtype)
        from tqdm import tqdm

        mode = Mode.parse(mode)
        for p in prompts:
            check_request(p, max_new_tokens)
        check_modes(self.edge, mode)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc=desc or f"generate {mode.value}", unit="seq",
                   disable=not self.cfg.progress, leave=False)
        start, i = time.perf_counter(), 0
        while i < len(order):
            n, longest = 0, 0  # grow the chunk while it fits both limits (at least one row)
            while i + n < len(order) and n < self.cfg.batch_size:
                widest = max(longest, len(prompts[order[i + n]]))
                if n and (n + 1) * widest > self.cfg.max_prefill_tokens:
                    break
                n, longest = n + 1, widest
            chunk = order[i : i + n]
            gens = self._chunk([prompts[j] for j in chunk], max_new_tokens, mode,
                               sampling or Sampling(), stop_at_eos, keep_z, budget, wire)
            for j, g in zip(chunk, gens, strict=True):
                out[j] = g
            i += n
            bar.update(n)
            tokens = sum(g.stats.tokens for g in out if g is not None)
            bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
        bar.close()
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _chunk(self, prompts: list[list[int]], max_new: int, mode: Mode, sampling: Sampling,
               stop_at_eos: bool, keep_z: bool, budget: BudgetConfig | None = None,
               wire: WireDtype = WireDtype.FP16) -> list[Generation]:
        bb, edge = self.backbone, self.edge
        started = time.perf_counter()
        eos = bb.eos_token_id if stop_at_eos else None
        pad = bb.eos_token_id if bb.eos_token_id is not None else 0
        wire_layers = edge.wire_layers(mode) if mode.uses_side else []
        edge_dev = edge.lm_head.weight.device if edge is not None else None
        decs = [Decoder.start(mode, max_new, eos, p, edge, budget) for p in prompts]
        zs: list[list[torch.Tensor]] = [[] for _ in prompts]
        B, T = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, T), pad, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every row's last token is at T-1
            ids[r, T - len(p):] = torch.tensor(p)
            mask[r, T - len(p):] = 1
        posid = (mask.cumsum(-1) - 1).clamp(min=0)
        out = bb.forward(ids, attention_mask=mask, position_ids=posid, use_cache=True,
                         logits_last_only=True)
        cache, mask = out.past_key_values, mask.to(bb.device)
        next_pos = torch.tensor([len(p) for p in prompts], device=bb.device)  # (b,)
        rows = list(range(B))  # row i of the cache is decs[rows[i]]
        while True:
            z = out.z[:, -1]  # (b, d), then as FRAMEs bring it to the edge
            z = edge.roundtrip(z, wire, None) if mode.uses_side else z.to(torch.float16)
            base = pick_tokens(out.logits[:, -1], [sampling] * len(rows), [decs[r].pos for r in rows])
            if not mode.uses_side:
                fire, g = [False] * len(rows), [0.0] * len(rows)
            else:
                fire, g = edge.gate_batch(mode, z.to(edge_dev))
            steps = [decs[r].frame(base[i], fire[i], g[i]) for i, r in enumerate(rows)]
            need = [i for i, s in enumerate(steps) if s.act is not Act.EMIT]
            if need:  # REQUEST → HIDDEN or lockstep: the wire states of the fired rows only
                idx = torch.tensor(need, device=bb.device)
                states = torch.stack([out.hidden[k][idx, -1] for k in wire_layers], 1)  # (n, K, d)
                states = edge.roundtrip(states, wire, wire_layers)
                logits = edge.side_logits(mode, z[idx].to(edge_dev), states.to(edge_dev))
                toks = pick_tokens(logits, [sampling] * len(need), [steps[i].pos for i in need])
                for i, t in zip(need, toks, strict=True):
                    steps[i] = decs[rows[i]].side(t)
            if keep_z:
                zc = z.cpu()
                for i, r in enumerate(rows):
                    zs[r].append(zc[i])
            keep = [i for i, s in enumerate(steps) if not s.done]
            if not keep:
                break
            if len(keep) < len(rows):  # finished rows leave the batch and the cache
                k = torch.tensor(keep, device=bb.device)
                _select_rows(cache, k)
                mask, next_pos = mask[k], next_pos[k]
                rows, steps = [rows[i] for i in keep], [steps[i] for i in keep]
            tok = torch.tensor([[s.token] for s in steps], device=bb.device)  # (b, 1)
            mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
            out = bb.forward(tok, attention_mask=mask, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True, logits_last_only=True)
            next_pos = next_pos + 1
        seconds = time.perf_counter() - started
        total = max(1, sum(d.stats.tokens for d in decs))
        return [Generation.of(d, zs[r] if keep_z else None, seconds * d.stats.tokens / total)
                for r, d in enumerate(decs)]


def _select_rows(cache, rows: torch.Tensor) -> None:
    """Keep only `rows` of a DynamicCache's batch (transformers ≥ 5: per-layer keys/values)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
        return
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[rows], layer.values[rows]
