"""The single-process reference generator: the oracle of DESIGN.md §2.

All five modes, greedy and seeded sampling, EOS and max_new_tokens, one sequence and one
backbone call per token. The per-token logic is `edge_agent.decoding.Decoder`, the state
machine the edge agent drives too; the edge-side arithmetic is `EdgeModel`, fed with z and
hidden states as the agent receives them: fp16, or through the int8/int4 grid (`wire_dtype`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from edge_agent.budget import BudgetConfig
from edge_agent.decoding import Act, Decoder, check_request
from edge_agent.edge_model import EdgeModel
from routing.errors import FingerprintMismatch, InputError
from routing.modes import Mode
from routing.quant import WireDtype
from routing.sampling import Sampling, pick_token
from routing.transmissions import Transmissions

if TYPE_CHECKING:
    from cloud_worker.backbone import Backbone

__all__ = ["Generation", "ReferenceGenerator", "check_request"]


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # 'base' or 'side' per token
    corrected: list[bool] = field(default_factory=list)  # side token ≠ backbone token (CORRECT)
    gates: list[float] = field(default_factory=list)  # classifier probability g_t
    differs: list[bool] = field(default_factory=list)  # side consulted and disagreed (any mode)
    z: list[torch.Tensor] | None = None  # per token z_t (wire dtype), with keep_z
    stats: Transmissions = field(default_factory=Transmissions)
    seconds: float = 0.0
    finished_by: str = "length"  # 'eos' or 'length'

    @classmethod
    def of(cls, dec: Decoder, z: list[torch.Tensor] | None, seconds: float) -> Generation:
        return cls(dec.tokens, dec.paths, dec.corrected, dec.gates, dec.differs, z, dec.stats,
                   seconds, dec.finished_by or "length")


def check_modes(edge: EdgeModel | None, mode: Mode) -> None:
    if mode.uses_side:
        if edge is None:
            raise InputError(f"mode {mode.value} needs an edge bundle")
        edge.head_for(mode)  # raises with the reason when the bundle lacks it


class ReferenceGenerator:
    def __init__(self, backbone: Backbone, edge: EdgeModel | None) -> None:
        if edge is not None and edge.fingerprint != backbone.fingerprint:
            raise FingerprintMismatch(edge.fingerprint, backbone.fingerprint)
        self.backbone = backbone
        self.edge = edge

    def generate(
        self,
        prompt_ids: list[int],
        max_new_tokens: int,
        mode: Mode | str = Mode.BASE,
        sampling: Sampling | None = None,
        stop_at_eos: bool = True,
        keep_z: bool = False,
        budget: BudgetConfig | None = None,
        wire_dtype: str | WireDtype = WireDtype.FP16,
    ) -> Generation:
        mode = Mode.parse(mode)
        wire = WireDtype.parse(wire_dtype)
        check_request(prompt_ids, max_new_tokens)
        check_modes(self.edge, mode)
        sampling = sampling or Sampling()
        edge = self.edge
        wire_layers = edge.wire_layers(mode) if mode.uses_side else []
        eos = self.backbone.eos_token_id if stop_at_eos else None
        dec = Decoder.start(mode, max_new_tokens, eos, prompt_ids, edge, budget)
        zs: list[torch.Tensor] | None = [] if keep_z else None
        start = time.perf_counter()
        out = self.backbone.forward(torch.tensor([prompt_ids]), use_cache=True, logits_last_only=True)
        while True:
            base_tok = pick_token(out.logits[0, -1], sampling, dec.pos)
            z = out.z[0, -1].cpu()  # (d,) then as the edge receives it from a FRAME
            z = edge.roundtrip(z, wire, None) if mode.uses_side else z.to(torch.float16)
            if zs is not None:
                zs.append(z)
            fire, g = edge.gate(mode, z) if mode.uses_side else (False, 0.0)
            step = dec.frame(base_tok, fire, g)
            if step.act is not Act.EMIT:  # REQUEST → HIDDEN, or lockstep states in the frame
                states = torch.stack([out.hidden[i][0, -1] for i in wire_layers]).cpu()  # (K, d)
                states = edge.roundtrip(states, wire, wire_layers)
                step = dec.side(edge.side_token(mode, z, states, sampling, step.pos))
            if step.done:
                break
            out = self.backbone.forward(torch.tensor([[step.token]]),
                                        past_key_values=out.past_key_values, use_cache=True)
        return Generation.of(dec, zs, time.perf_counter() - start)
