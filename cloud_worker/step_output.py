"""What a step hands back, and how it reaches the host in ONE copy: the emitting rows' tokens,
z encoded in each session's wire dtype (fp16, or int8/int4 codes + scales: `routing.quant`, on
the device), lockstep rows' wire layers encoded to ship with the FRAME, gated rows' kept on the
device for the ring; every host-bound tensor laid end to end as bytes (`Staging`) for the one
non-blocking transfer of the step (`model_runner.ModelRunner.run`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cloud_worker.session import Session
from routing import quant
from routing.quant import WireDtype

Row = tuple[Session, int]  # a session and how many of its new tokens run this step
_NP = {torch.int32: np.int32, torch.float16: np.float16, torch.int8: np.int8, torch.uint8: np.uint8}


class Staging:
    """The step's device tensors, laid end to end as bytes for the one copy to the host, and
    rebuilt as numpy arrays (views into the host copy) afterwards."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.meta: list[tuple[torch.dtype, tuple[int, ...]]] = []

    def add(self, t: Tensor) -> int:
        self.parts.append(t.contiguous().reshape(-1).view(torch.uint8))
        self.meta.append((t.dtype, tuple(t.shape)))
        return len(self.meta) - 1

    def flat(self) -> Tensor:
        return torch.cat(self.parts)

    def unpack(self, host: np.ndarray) -> list[np.ndarray]:
        out, o = [], 0
        for (dtype, shape), p in zip(self.meta, self.parts, strict=True):
            n = p.numel()
            out.append(host[o : o + n].view(_NP[dtype]).reshape(shape))
            o += n
        return out


@dataclass
class StepOutput:
    """Host-side results of the rows that emit a FRAME, in `rows` order."""

    rows: list[Row]  # every row of the step, in the order the runner ran them
    emit: list[int]  # indices into rows of those that reached their last token
    tokens: list[int]  # per emitting row
    z: list[list[np.ndarray]]  # per emitting row: z's wire tensors, [(d,) fp16] or [codes, scale]
    shipped: dict[int, list[np.ndarray]]  # row index -> wire tensors of its (k, d) layers (lockstep)
    ring: dict[int, list[Tensor]]  # row index -> the same, kept on the device (gated rows)


def encode_wire(rows: list[Row], emit: list[int], zz: Tensor, hidden: Tensor, stage: Staging,
                to: Callable[[object], Tensor]) -> tuple[list[list], dict[int, list[int]],
                                                         dict[int, list[Tensor]]]:
    """Per wire dtype (fp16 / int8 / int4), the emitting rows' z (`zz`, (E, d)) and wire layers
    (from `hidden`, (L+1, B, d)) encoded on the device: z and shipped layers added to `stage`,
    gated rows' layers kept on the device. `to` puts index lists on the device. Returns per
    emitting row its z's (stage handle, row) pairs, row index -> shipped layers' stage handles,
    row index -> kept (ring) tensors."""
    E = len(emit)
    groups: dict[WireDtype, list[int]] = {}
    for e, i in enumerate(emit):
        groups.setdefault(rows[i][0].wire, []).append(e)
    z_parts: list[list[int]] = [[] for _ in range(E)]  # per emitting row: stage handles
    shipped_h: dict[int, list[int]] = {}
    ring: dict[int, list[Tensor]] = {}
    for wire, es in groups.items():
        sess = [rows[emit[e]][0] for e in es]
        sel = zz if len(es) == E else zz[to(es)]
        chan = torch.stack([s.grid[-1] for s in sess]) if wire.quantised else None
        hs = [stage.add(t) for t in quant.encode(sel, chan, wire)]  # (n, d) or (n, ·) + (n,)
        for j, e in enumerate(es):
            z_parts[e] = [(h, j) for h in hs]
        # wire layers: lockstep rows ship them with the FRAME, gated rows keep them in the ring
        for ships in (True, False):
            rs = [(emit[e], s) for e, s in zip(es, sess, strict=True)
                  if s.wire_layers and s.ships_hidden == ships]
            if not rs:
                continue
            lay = [k for _, s in rs for k in s.wire_layers]
            at = [i for i, s in rs for _ in s.wire_layers]
            sel_h = hidden[to(lay), to(at)]  # (Σk, d)
            hchan = torch.cat([s.grid[:-1] for _, s in rs]) if wire.quantised else None
            enc = quant.encode(sel_h, hchan, wire)
            o = 0
            for i, s in rs:
                k = len(s.wire_layers)
                if ships:
                    shipped_h[i] = [stage.add(t[o : o + k]) for t in enc]
                else:
                    ring[i] = [t[o : o + k] for t in enc]  # stays on the device
                o += k
    return z_parts, shipped_h, ring
