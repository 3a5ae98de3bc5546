"""One batched backbone forward over many sessions of different lengths.

Each session keeps its own KV as per-layer (k, v) tensors of shape (1, H, T_i, hd). A step
left-pads them to the longest, runs ONE forward with a 2-D attention mask and explicit
position ids, and slices each session's new KV back out. Rolling back a session is slicing
its KV to a shorter length (the length counter vLLM uses for rejected drafts).

The padding copy costs O(total KV) per step: the paged engine (`model_runner.py`, `llama.py`)
serves Llama-family backbones; this path keeps every other HF causal LM working (`HFEngine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache

from cloud_worker.backbone import Backbone

KV = list[tuple[Tensor, Tensor]]  # per layer: (1, H, T, hd) keys and values


@dataclass
class RowResult:
    logits: Tensor  # (V,) at the row's last position
    z: Tensor  # (d,)
    hidden: Tensor  # (L+1, d) all states at the last position
    kv: KV


class BatchRunner:
    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def step(self, rows: list[tuple[KV | None, list[int]]]) -> list[RowResult]:
        """rows: (past KV or None, new token ids) per session -> results at each last token.

        One forward for all rows: pasts are left-padded to the longest past, new tokens
        left-padded to the most new tokens."""
        bb = self.backbone
        past_lens = [0 if kv is None else kv[0][0].shape[2] for kv, _ in rows]
        new_lens = [len(ids) for _, ids in rows]
        P, N, B = max(past_lens), max(new_lens), len(rows)
        pad_id = bb.eos_token_id or 0
        ids = torch.full((B, N), pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + N), dtype=torch.long)
        pos = torch.zeros((B, N), dtype=torch.long)
        for r, ((_, new), pl, nl) in enumerate(zip(rows, past_lens, new_lens, strict=True)):
            ids[r, N - nl :] = torch.tensor(new)
            mask[r, P - pl : P] = 1
            mask[r, P + N - nl :] = 1
            pos[r, N - nl :] = torch.arange(pl, pl + nl)
        cache = DynamicCache()
        if P > 0:
            some = next(kv for kv, _ in rows if kv is not None)
            for layer in range(bb.n_layers):
                k0 = some[layer][0]
                ks = k0.new_zeros((B, k0.shape[1], P, k0.shape[3]))  # (B, H, P, hd), left-padded
                vs = torch.zeros_like(ks)
                for r, ((kv, _), pl) in enumerate(zip(rows, past_lens, strict=True)):
                    if pl:
                        ks[r, :, P - pl :] = kv[layer][0][0]
                        vs[r, :, P - pl :] = kv[layer][1][0]
                cache.update(ks, vs, layer)
        out = bb.forward(ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_last_only=True)
        hidden = torch.stack([h[:, -1] for h in out.hidden], dim=1)  # (B, L+1, d)
        results = []
        layers = out.past_key_values.layers
        for r, (pl, nl) in enumerate(zip(past_lens, new_lens, strict=True)):
            start = P - pl  # the row's first real cache slot
            if nl == N:  # past and new tokens are contiguous: a view, no copy
                kv = [(la.keys[r : r + 1, :, start:], la.values[r : r + 1, :, start:]) for la in layers]
            else:  # padding sits between the past and the new tokens
                new = P + N - nl
                kv = [(torch.cat([la.keys[r : r + 1, :, start:P], la.keys[r : r + 1, :, new:]], 2),
                       torch.cat([la.values[r : r + 1, :, start:P], la.values[r : r + 1, :, new:]], 2))
                      for la in layers]
            results.append(RowResult(out.logits[r, -1], out.z[r, -1], hidden[r], kv))
        return results


class HFEngine:
    """The model runner's forward for any HF causal LM: per-session KV kept here, cut to the
    session's KV length (a rollback) before each step."""

    def __init__(self, backbone: Backbone) -> None:
        self.runner = BatchRunner(backbone)
        self.kv: dict[bytes, KV] = {}

    def forward(self, rows: list) -> tuple[Tensor, Tensor, Tensor]:
        """rows: (session, n new tokens) -> logits (B, V), z (B, d), hidden (L+1, B, d)."""
        items = []
        for s, n in rows:
            kv = self.kv.get(s.id) if s.kv_len else None
            if kv is not None and kv[0][0].shape[2] > s.kv_len:
                kv = crop(kv, s.kv_len)
            items.append((kv, s.seq[s.kv_len : s.kv_len + n]))
        results = self.runner.step(items)
        for (s, _), r in zip(rows, results, strict=True):
            self.kv[s.id] = r.kv
        logits = torch.stack([r.logits for r in results])
        z = torch.stack([r.z for r in results])
        hidden = torch.stack([r.hidden for r in results], dim=1)  # (L+1, B, d)
        return logits, z, hidden

    def free(self, sid: bytes) -> None:
        self.kv.pop(sid, None)


def crop(kv: KV, length: int) -> KV:
    """Keep the first `length` positions of a session's KV (rollback)."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in kv]
