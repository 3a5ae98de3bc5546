"""What runs on the device: classifier gate, side network, lm_head copy.

The same object serves the reference generator and the edge agent, so the distributed system
and its oracle share every line of edge-side arithmetic. Inputs arrive as they do over the wire:
z and hidden states in fp16, or dequantised from int8/int4 codes on the kit's grid (`unwire`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from edge_agent.ladder import LadderSide, build_side
from edge_agent.side_network import Classifier, SideConfig, SideNetwork
from routing import quant
from routing.errors import InputError
from routing.modes import Combine, Mode
from routing.quant import WireDtype
from routing.sampling import Sampling, pick_token

WIRE_DTYPE = torch.float16  # z and hidden states travel as fp16 (DESIGN.md §4)


@dataclass
class Head:
    """One combine setting's private parts: side network, classifier and threshold τ."""

    combine: str  # 'add' (full/spa) or 'replace' (lst/choice)
    side: SideNetwork | LadderSide
    classifier: Classifier
    # The gate fires when g > τ. It is kept as a threshold on the classifier's logit: a
    # confident classifier saturates g at 1.0 in fp32, and a logit keeps the ranking.
    threshold: float = 0.0
    info: dict = field(default_factory=dict)  # how it was trained and calibrated
    lead: int = 0  # the answer's first `lead` tokens always consult the side network (0–16)
    # after a token where the side network's differed from the backbone's, the next `follow`
    # tokens consult it whatever the gate says (0–4): the rest of a phrase the user owns
    follow: int = 0
    # a copy of the prompt under way: when the answer's last `copy` tokens occur in the prompt
    # and the backbone's token continues none of those places, it consults the side network
    # (0–8; 0: off): the backbone on its own drifts from a message into its own words
    copy: int = 0

    @property
    def tau(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.threshold)) if abs(self.threshold) < 700 else float(
            self.threshold > 0)


class EdgeModel(nn.Module):
    def __init__(
        self,
        lm_head: nn.Linear,
        fingerprint: str,
        n_layers: int,
        tokenizer=None,
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.lm_head = lm_head.float().requires_grad_(False)
        self.fingerprint = fingerprint
        self.n_layers = n_layers
        self.d_model = lm_head.in_features
        self.tokenizer = tokenizer
        self.eos_token_id = eos_token_id
        self.heads: dict[str, Head] = {}
        # the backbone's per-channel wire grid (L+1, d), from the edge kit (routing/quant.py)
        self.grid: Tensor | None = None
        self._modules_by_combine = nn.ModuleDict()

    @classmethod
    def for_backbone(cls, backbone) -> EdgeModel:
        """A copy of the backbone's public edge pieces (lm_head, tokenizer), no heads yet."""
        src = backbone.lm_head
        head = nn.Linear(src.in_features, src.out_features, bias=src.bias is not None)
        head.load_state_dict({k: v.detach().float().cpu() for k, v in src.state_dict().items()})
        edge = cls(head, backbone.fingerprint, backbone.n_layers, backbone.tokenizer,
                   backbone.eos_token_id)
        edge.grid = quant.calibrate(backbone)  # once per backbone; the kit stores it
        return edge

    def new_head(self, combine: str, side_cfg: SideConfig) -> Head:
        if combine not in ("add", "replace"):
            raise InputError(f"unknown combine {combine!r}")
        head = Head(combine, build_side(side_cfg), Classifier(self.d_model))
        self.set_head(head)
        return head

    def set_head(self, head: Head) -> None:
        self.heads[head.combine] = head
        self._modules_by_combine[head.combine] = nn.ModuleDict(
            {"side": head.side, "classifier": head.classifier}
        )

    # ---------------------------------------------------------------- per mode
    def head_for(self, mode: Mode) -> Head:
        if not mode.uses_side:
            raise InputError(f"mode {mode.value} uses no side network")
        if mode.combine not in self.heads:
            have = ", ".join(sorted(self.heads)) or "none"
            raise InputError(
                f"mode {mode.value} needs a '{mode.combine}' side network; this bundle has: {have}"
            )
        return self.heads[mode.combine]

    def supports(self, mode: Mode) -> bool:
        return not mode.uses_side or mode.combine in self.heads

    def wire_layers(self, mode: Mode) -> list[int]:
        return self.head_for(mode).side.cfg.wire_layers if mode.uses_side else []

    # ---------------------------------------------------------------- the wire
    def check_grid(self, wire: WireDtype) -> None:
        """Raise InputError when this edge cannot take `wire` frames."""
        if wire.quantised and self.grid is None:
            raise InputError(f"wire dtype {wire.value} needs the backbone's per-channel grid, and this "
                             "edge kit has none: rebuild the kit (`spa train` / `spa build-models`)")
        if wire is WireDtype.INT4 and self.d_model % 2:
            raise InputError(f"int4 frames need an even width, the backbone has d={self.d_model}")

    def grid_rows(self, layers: list[int]) -> np.ndarray:
        """The grid an OPEN carries: rows of `layers` then z's, float16 (K+1, d)."""
        return self.grid[layers + [self.n_layers]].half().numpy()

    def chan(self, layers: list[int] | None) -> Tensor | None:
        """Grid rows of the wire layers (K, d), or of z (d,) when layers is None."""
        if self.grid is None:
            return None
        return self.grid[self.n_layers] if layers is None else self.grid[layers]

    def unwire(self, tensors: list, wire: WireDtype, mode: Mode, layers: list[int] | None) -> Tensor:
        """A frame's z (layers None: (d,)) or its wire layers ((K, d)) as the edge computes with
        them, float32: fp16 widened, or dequantised on the kit's grid. ValueError on a mismatch."""
        shape = (self.d_model,) if layers is None else (len(layers), self.d_model)
        return quant.decode(tensors, self.chan(layers), wire, shape).float()

    def roundtrip(self, x: Tensor, wire: WireDtype, layers: list[int] | None) -> Tensor:
        """What `unwire` gives for a state x the cloud holds (the reference generator's path)."""
        chan = self.chan(layers)
        return quant.roundtrip(x, None if chan is None else chan.to(x.device), wire).float()

    @torch.inference_mode()
    def gate(self, mode: Mode, z: Tensor) -> tuple[bool, float]:
        """Does this position need the side network? z: (d,) wire dtype -> (fire, g)."""
        if not mode.gated:
            return mode.lockstep, float(mode.lockstep)
        head = self.head_for(mode)
        logit = float(head.classifier.logit(z.float()[None], self.lm_head)[0])
        return logit > head.threshold, 1.0 / (1.0 + math.exp(-max(-700.0, min(700.0, logit))))

    @torch.inference_mode()
    def gate_batch(self, mode: Mode, z: Tensor) -> tuple[list[bool], list[float]]:
        """`gate` for many positions at once. z: (N, d) wire dtype -> (fire, g) per row."""
        if not mode.gated:
            return [mode.lockstep] * len(z), [float(mode.lockstep)] * len(z)
        head = self.head_for(mode)
        logit = head.classifier.logit(z.float(), self.lm_head).double()  # (N,)
        return (logit > head.threshold).tolist(), torch.sigmoid(logit).tolist()

    def side_logits(self, mode: Mode, z: Tensor, wire: Tensor) -> Tensor:
        """z: (N, d); wire: (N, len(wire_layers), d) -> logits (N, V)."""
        head = self.head_for(mode)
        delta = head.side(head.side.assemble(wire.float(), z.float()))  # (N, d)
        state = z.float() + delta if head.combine == Combine.ADD else delta
        return self.lm_head(state)

    @torch.inference_mode()
    def side_token(self, mode: Mode, z: Tensor, wire: Tensor, sampling: Sampling, pos: int) -> int:
        """The side-augmented token at `pos`. z: (d,), wire: (len(wire_layers), d)."""
        return pick_token(self.side_logits(mode, z[None], wire[None])[0], sampling, pos)
