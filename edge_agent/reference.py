"""The single-process reference generator: the oracle of DESIGN.md §2.

All five modes, greedy and seeded sampling, EOS and max_new_tokens. Per token it records which
path produced it (base or side) and whether it corrected the backbone; M and the side-usage and
correction counts follow DESIGN.md §4. The edge-side arithmetic is `EdgeModel`, the code the
edge agent runs, fed with z and hidden states cast to the wire dtype as the agent receives them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from cloud_worker.backbone import Backbone
from edge_agent.edge_model import WIRE_DTYPE, EdgeModel
from routing.errors import InputError
from routing.modes import Mode
from routing.sampling import Sampling, pick_token
from routing.transmissions import Transmissions


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # 'base' or 'side' per token
    corrected: list[bool] = field(default_factory=list)  # side token ≠ backbone token
    gates: list[float] = field(default_factory=list)  # classifier probability g_t
    differs: list[bool] = field(default_factory=list)  # side consulted and disagreed (any mode)
    z: list[torch.Tensor] | None = None  # per token z_t (wire dtype), with keep_z
    stats: Transmissions = field(default_factory=Transmissions)
    seconds: float = 0.0
    finished_by: str = "length"  # 'eos' or 'length'


def check_request(prompt_ids: list[int], max_new_tokens: int) -> None:
    if not prompt_ids:
        raise InputError("empty prompt: give at least one token")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


class ReferenceGenerator:
    def __init__(self, backbone: Backbone, edge: EdgeModel | None) -> None:
        if edge is not None and edge.fingerprint != backbone.fingerprint:
            from routing.errors import FingerprintMismatch

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
    ) -> Generation:
        mode = Mode.parse(mode)
        check_request(prompt_ids, max_new_tokens)
        sampling = sampling or Sampling()
        edge = self.edge
        if mode is not Mode.BASE:
            if edge is None:
                raise InputError(f"mode {mode.value} needs an edge bundle")
            wire_layers = edge.wire_layers(mode)
        eos = self.backbone.eos_token_id
        gen = Generation(z=[] if keep_z else None)
        start = time.perf_counter()
        ids = torch.tensor([prompt_ids])
        out = self.backbone.forward(ids, use_cache=True, logits_last_only=True)
        pos = len(prompt_ids)  # the position the next token will take
        for _ in range(max_new_tokens):
            base_tok = pick_token(out.logits[0, -1], sampling, pos)
            token, path, corrected, g = base_tok, "base", False, 0.0
            z = out.z[0, -1].to(WIRE_DTYPE).cpu()  # (d,) as a FRAME carries it
            if keep_z:
                gen.z.append(z.cpu())
            if mode is not Mode.BASE:
                fire, g = edge.gate(mode, z)
                if fire:
                    wire = torch.stack([out.hidden[i][0, -1] for i in wire_layers]).to(WIRE_DTYPE)
                    token = edge.side_token(mode, z, wire.cpu(), sampling, pos)
                    path = "side"
                    gen.stats.side_used += 1
                    if mode.lockstep:
                        gen.stats.lockstep += 1  # the worker waits for every TOKEN
                    else:
                        gen.stats.requests += 1  # REQUEST → HIDDEN
                        corrected = token != base_tok
                        gen.stats.corrections += int(corrected)  # CORRECT → rollback
            gen.tokens.append(token)
            gen.paths.append(path)
            gen.corrected.append(corrected)
            gen.gates.append(g)
            gen.differs.append(path == "side" and token != base_tok)
            gen.stats.tokens += 1
            if stop_at_eos and token == eos:
                gen.finished_by = "eos"
                break
            if len(gen.tokens) == max_new_tokens:
                break
            out = self.backbone.forward(
                torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True
            )
            pos += 1
        gen.seconds = time.perf_counter() - start
        return gen
