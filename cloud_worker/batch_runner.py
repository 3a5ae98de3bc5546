"""One batched backbone forward over many sessions of different lengths.

Each session keeps its own KV as per-layer (k, v) tensors of shape (1, H, T_i, hd). A step
left-pads them to the longest, runs ONE forward with a 2-D attention mask and explicit
position ids, and slices each session's new KV back out. Rolling back a session is slicing
its KV to a shorter length (the length counter vLLM uses for rejected drafts).

The padding copy costs O(total KV) per step: right for the CPU and small models this project
tests on; a paged-attention kernel is the path for large batches of long sequences.
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
        self.forwards = 0  # backbone forwards run (the continuous-batching test counts them)

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
                ks, vs = [], []
                for (kv, _), pl in zip(rows, past_lens, strict=True):
                    if kv is None:  # a new session joining a batch with pasts
                        empty = some[layer][0][:, :, :0]
                        k, v = empty, empty
                    else:
                        k, v = kv[layer]
                    pad = P - pl
                    if pad:
                        k = torch.nn.functional.pad(k, (0, 0, pad, 0))
                        v = torch.nn.functional.pad(v, (0, 0, pad, 0))
                    ks.append(k)
                    vs.append(v)
                cache.update(torch.cat(ks), torch.cat(vs), layer)
        out = bb.forward(ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                         use_cache=True, logits_last_only=True)
        self.forwards += 1
        hidden = torch.stack([h[:, -1] for h in out.hidden], dim=1)  # (B, L+1, d)
        results = []
        for r, (pl, nl) in enumerate(zip(past_lens, new_lens, strict=True)):
            start = P - pl  # the row's first real cache slot
            keep = [(layer.keys[r : r + 1, :, start : P], layer.values[r : r + 1, :, start : P])
                    for layer in out.past_key_values.layers]
            new = [(layer.keys[r : r + 1, :, P + N - nl :], layer.values[r : r + 1, :, P + N - nl :])
                   for layer in out.past_key_values.layers]
            kv = [(torch.cat([k0, k1], 2), torch.cat([v0, v1], 2))
                  for (k0, v0), (k1, v1) in zip(keep, new, strict=True)]
            results.append(RowResult(out.logits[r, -1], out.z[r, -1], hidden[r], kv))
        return results

def crop(kv: KV, length: int) -> KV:
    """Keep the first `length` positions of a session's KV (rollback)."""
    return [(k[:, :, :length], v[:, :, :length]) for k, v in kv]
