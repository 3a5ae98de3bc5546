"""The side network's training data: one frozen backbone pass over the task records collects,
at every answer position, the states the side network reads (cast to the wire dtype, as served).
The side network has no attention over positions, so training is a per-position problem;
`Features.wired` puts them through the kit's quantisation grid for a quantised wire.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from cloud_worker.backbone import Backbone
from edge_agent.edge_model import WIRE_DTYPE, EdgeModel
from edge_agent.side_network import SideConfig
from lab.data import Example
from lab.train_config import TrainConfig
from routing import quant
from routing.quant import WireDtype


@dataclass
class Features:
    states: Tensor  # (N, K, d) wire dtype, [h0, h_layers…] as SideNetwork.forward reads them
    z: Tensor  # (N, d) wire dtype
    y: Tensor  # (N,) target token ids
    layers: list[int] = field(default_factory=list)  # the backbone layer of each state column

    def __len__(self) -> int:
        return len(self.y)

    def select(self, layers: list[int]) -> Features:
        """The columns [h0, h_layers…] for a side network over `layers` (a subset)."""
        cols = [self.layers.index(i) for i in [0] + layers]
        if cols == list(range(len(self.layers))):
            return self
        return Features(self.states[:, cols], self.z, self.y, [0] + layers)

    def wired(self, edge: EdgeModel, wire: str) -> Features:
        """The features as the edge receives them over `wire` (quantise→dequantise on the kit's
        grid, per state; float32). Training on them is quantisation-aware for the wire only."""
        w = WireDtype.parse(wire)
        if not w.quantised:
            return self
        edge.check_grid(w)
        grid = edge.grid.to(self.z.device)
        states = torch.stack([quant.roundtrip(self.states[:, j].float(), grid[i], w)
                              for j, i in enumerate(self.layers)], 1)
        return Features(states, quant.roundtrip(self.z.float(), grid[edge.n_layers], w), self.y, self.layers)

    def batches(self, size: int, gen: torch.Generator | None = None):
        n = len(self)
        order = (torch.randperm(n, generator=gen) if gen is not None else torch.arange(n))
        order = order.to(self.y.device)
        for i in range(0, n, size):
            idx = order[i : i + size]
            yield self.states[idx].float(), self.z[idx].float(), self.y[idx]


def extract_features(backbone: Backbone, examples: list[Example], side_cfg: SideConfig | None,
                     cfg: TrainConfig, progress: bool = True, batch_size: int = 0) -> Features:
    """Run the frozen backbone once; keep the states at positions that predict answer tokens.
    side_cfg None: every layer (for sweeps over which layers travel). Batches are filled up
    to `cfg.feature_tokens` padded tokens (or `batch_size` sequences)."""
    from tqdm import tqdm

    tok, eos = backbone.tokenizer, backbone.eos_token_id
    layers = [0] + (side_cfg.layers if side_cfg is not None else list(range(1, backbone.n_layers + 1)))
    seqs = []
    for ex in examples:
        p = ex.prompt_ids(tok, cfg.max_prompt_tokens)
        a = ex.answer_ids(tok, cfg.max_answer_tokens) + [eos]
        seqs.append((p, a))
    seqs.sort(key=lambda s: len(s[0]) + len(s[1]))
    states, zs, ys = [], [], []
    bar = tqdm(total=len(seqs), desc="backbone features", unit="seq", disable=not progress)
    i = 0
    while i < len(seqs):
        n = 1
        while (i + n < len(seqs) and (batch_size == 0 or n < batch_size)  # sorted: the last
               and (n + 1) * (len(seqs[i + n][0]) + len(seqs[i + n][1])) <= cfg.feature_tokens):
            n += 1  # is the widest
        chunk = seqs[i : i + n]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), eos)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, (p, a) in enumerate(chunk):
            seq = p + a
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
        out = backbone.forward(ids, attention_mask=mask, logits_last_only=True)
        for r, (p, a) in enumerate(chunk):
            pos = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=out.z.device)
            states.append(torch.stack([out.hidden[j][r, pos] for j in layers], 1).to(WIRE_DTYPE))
            zs.append(out.z[r, pos].to(WIRE_DTYPE))
            ys.append(torch.tensor(a, device=out.z.device))
        i += n
        bar.update(n)
    bar.close()
    return Features(torch.cat(states), torch.cat(zs), torch.cat(ys), layers)
