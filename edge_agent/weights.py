"""Edge weights stored int8 (issue 22, "small devices"): the side network, the classifier and the
edge kit's lm_head on disk as int8 codes with one scale per output channel — the same grid as the
wire (routing/quant.py: per-row absmax, channel scales of 1) — dequantised at load.

    <name>          int8 (out, in)   codes of a 2-D weight
    <name>.qscale   float16 (out,)   its per-output-channel scales
    (1-D tensors — biases, gates — stay float32)

One stored bundle serves every wire dtype chosen per session, and at load either as float32
weights (`resident="fp32"`: fastest) or with its Linear layers kept int8 in memory
(`resident="int8"`: a quarter of the memory, dequantised per call). Both compute with the same
dequantised matrices, so they give the same tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from routing import quant
from routing.errors import InputError
from routing.quant import WireDtype

SCALE = ".qscale"
STORED = ("fp32", "int8")  # how a bundle / kit keeps its weights on disk
RESIDENT = ("fp32", "int8")  # how a loaded bundle keeps them in memory


def pack(state: dict[str, Tensor], stored: str) -> dict[str, Tensor]:
    """A state dict as stored: float32, or its 2-D weights as int8 codes + scales."""
    if stored not in STORED:
        raise InputError(f"unknown weight storage {stored!r}: expected one of {', '.join(STORED)}")
    out = {}
    for k, v in state.items():
        v = v.detach().float().cpu().contiguous()
        if stored == "int8" and v.dim() == 2:
            codes, scales = quant.quantise(v, torch.ones(v.shape[1]), WireDtype.INT8)
            out[k], out[k + SCALE] = codes.contiguous(), scales.contiguous()
        else:
            out[k] = v
    return out


def stored_as(tensors: dict[str, Tensor]) -> str:
    return "int8" if any(k.endswith(SCALE) for k in tensors) else "fp32"


def dequantise(codes: Tensor, scales: Tensor) -> Tensor:
    return quant.dequantise(codes, scales, torch.ones(codes.shape[1]), WireDtype.INT8)


def unpack(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The stored tensors as a float32 state dict (int8 weights dequantised)."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(SCALE):
            continue
        scales = tensors.get(k + SCALE)
        if scales is not None:
            if v.dtype != torch.int8 or v.dim() != 2 or tuple(scales.shape) != (v.shape[0],) or not bool(
                    torch.isfinite(scales.float()).all() and (scales.float() > 0).all()):
                raise InputError(f"stored weight {k}: int8 (out, in) codes with positive (out,) scales expected")
            out[k] = dequantise(v, scales)
        else:
            out[k] = v.float()
    return out


class Int8Linear(nn.Module):
    """A Linear whose weight stays int8 codes + per-row scales in memory."""

    def __init__(self, codes: Tensor, scales: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("scales", scales)
        self.bias = nn.Parameter(bias.float(), requires_grad=False) if bias is not None else None
        self.in_features, self.out_features = codes.shape[1], codes.shape[0]

    @property
    def weight(self) -> Tensor:
        return dequantise(self.codes, self.scales)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


def keep_int8(module: nn.Module, tensors: dict[str, Tensor], prefix: str) -> int:
    """Swap module's Linear layers whose stored weights are int8 for Int8Linear; returns how many."""
    swapped = 0
    for name, child in list(module.named_modules()):
        if not isinstance(child, nn.Linear) or f"{prefix}{name}.weight{SCALE}" not in tensors:
            continue
        key = f"{prefix}{name}."
        q = Int8Linear(tensors[key + "weight"], tensors[key + "weight" + SCALE],
                       child.bias.detach() if child.bias is not None else None)
        parent = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
        setattr(parent, name.rpartition(".")[2], q)
        swapped += 1
    return swapped
