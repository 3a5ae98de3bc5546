"""Quantised wire tensors (issue 22): the grid every side of the system applies the same way.

A hidden state x (…, d) travels as fp16, or on a grid of int8 / int4 codes:

    y = x / c                 c: (d,) per-channel scales of this backbone state (the "grid"),
                              calibrated once per backbone on public text and kept in the edge
                              kit — Quadapter's point: outlier channels must not set the step
                              of every other channel
    a = max|y| / qmax         one fp16 scale per vector (per token and state), sent with it
    q = round(y / a)          in [−qmax, qmax]; qmax = 127 (int8) or 7 (int4)
    x̂ = q · a · c             what the device computes with

int4 codes are packed two to a byte (element 2j in the low nibble, 2j+1 in the high one, each
stored as q + 8). On the wire a quantised tensor is two frames: codes (int8 (…, d) or uint8
(…, d/2)) and scales (float16 (…)). The worker quantises on its device inside the step, the
edge dequantises before its classifier and side network, the reference generator and the
side network's training apply `roundtrip` — so served sessions equal the oracle token for token.

This module is torch-free at import (the broker validates frames with numpy only); the tensor
functions import torch when called.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

# fp16's smallest normal: an all-zero vector keeps a valid scale, and a tiny vector's scale is not
# rounded among the subnormals, whose spacing (2^-24) could round it down by up to a third and
# saturate every code (|x̂ − x| then far above half a step; found by tests/test_quant.py)
MIN_SCALE = 2.0**-14
MAX_SCALE = 65504.0  # fp16's largest
GRID_FLOOR = 1e-4  # relative to the mean channel scale: a dead channel does not divide by ~0


class WireDtype(StrEnum):
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def quantised(self) -> bool:
        return self is not WireDtype.FP16

    @property
    def qmax(self) -> int:
        return {WireDtype.INT8: 127, WireDtype.INT4: 7}[self]

    @property
    def code_dtype(self) -> str:
        """numpy/wire name of the codes' dtype."""
        return {WireDtype.INT8: "int8", WireDtype.INT4: "uint8"}[self]

    def code_width(self, d: int) -> int:
        return d // 2 if self is WireDtype.INT4 else d

    def payload_bytes(self, d: int) -> int:
        """Bytes one vector of width d takes on the wire (codes + its scale)."""
        return 2 * d if self is WireDtype.FP16 else self.code_width(d) + 2

    @classmethod
    def parse(cls, value: str | WireDtype) -> WireDtype:
        try:
            return cls(value)
        except ValueError:
            from routing.errors import InputError

            raise InputError(f"unknown wire dtype {value!r}: expected one of "
                             f"{', '.join(w.value for w in cls)}") from None


WIRE_DTYPES = tuple(w.value for w in WireDtype)


def parse_wire_dtypes(text: str) -> list[WireDtype]:
    """'fp16,int8' → [FP16, INT8] (a load test's devices take them in turn); '' is an error."""
    wires = [WireDtype.parse(part.strip()) for part in text.split(",") if part.strip()]
    if not wires:
        from routing.errors import InputError

        raise InputError(f"no wire dtypes given in {text!r}: expected e.g. fp16 or fp16,int8")
    if len(set(wires)) != len(wires):
        from routing.errors import InputError

        raise InputError(f"--wire-dtype {text!r}: a dtype given twice")
    return wires
_BY_CODE = {"int8": WireDtype.INT8, "uint8": WireDtype.INT4}


# ----------------------------------------------------------------------------- the grid (torch)
def quantise(x: Tensor, chan: Tensor, wire: WireDtype) -> tuple[Tensor, Tensor]:
    """x: (…, d) any float dtype; chan: (…, d) or (d,) float32 per-channel scales ->
    (codes (…, d) int8 or (…, d/2) uint8, scales (…) float16). Runs on x's device."""
    import torch

    q_max = wire.qmax
    y = x.float() / chan
    a = (y.abs().amax(-1) / q_max).clamp(MIN_SCALE, MAX_SCALE).half()  # (…,)
    q = torch.round(y / a.float().unsqueeze(-1)).clamp_(-q_max, q_max)
    if wire is WireDtype.INT8:
        return q.to(torch.int8), a
    u = (q + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4), a


def dequantise(codes: Tensor, scales: Tensor, chan: Tensor, wire: WireDtype) -> Tensor:
    """The inverse of `quantise`, in float32: (…, d)."""
    import torch

    if wire is WireDtype.INT4:
        c = codes.to(torch.uint8)
        q = torch.stack([c & 15, c >> 4], -1).flatten(-2).float() - 8.0
    else:
        q = codes.float()
    return q * scales.float().unsqueeze(-1) * chan.float()


def roundtrip(x: Tensor, chan: Tensor | None, wire: WireDtype) -> Tensor:
    """What the edge computes with when the cloud holds x: fp16, or quantise→dequantise (float32).
    The reference generator and training use this; worker + device do it in two halves."""
    if not wire.quantised:
        import torch

        return x.to(torch.float16)
    if chan is None:
        raise ValueError("a quantised wire needs the backbone's per-channel grid (edge kit)")
    return dequantise(*quantise(x, chan, wire), chan, wire)


def encode(x: Tensor, chan: Tensor | None, wire: WireDtype) -> list[Tensor]:
    """The wire tensors of x (…, d): [fp16] or [codes, scales]."""
    import torch

    if not wire.quantised:
        return [x.to(torch.float16)]
    return list(quantise(x, chan, wire))


def decode(tensors: list, chan: Tensor | None, wire: WireDtype, shape: tuple[int, ...]) -> Tensor:
    """Wire tensors (numpy or torch, as `encode` made them) of a state of `shape` (…, d) -> the
    state the edge computes with: fp16 as sent, or dequantised float32 (chan: the grid rows of
    that shape). Dtypes and shapes are checked against the session's choice; a mismatch raises
    ValueError (the frame came from a misbehaving worker)."""
    import torch

    ts = [torch.as_tensor(t) for t in tensors]
    want = tuple(shape)
    if not wire.quantised:
        if len(ts) != 1 or ts[0].dtype != torch.float16 or tuple(ts[0].shape) != want:
            raise ValueError(f"expected fp16 {want} on a {wire.value} session")
        return ts[0]
    codes_shape = want[:-1] + (wire.code_width(want[-1]),)
    if len(ts) != 2 or str(ts[0].dtype).removeprefix("torch.") != wire.code_dtype \
            or tuple(ts[0].shape) != codes_shape or tuple(ts[1].shape) != want[:-1]:
        raise ValueError(f"expected {wire.code_dtype} codes {codes_shape} + fp16 scales on a "
                         f"{wire.value} session")
    return dequantise(ts[0], ts[1], chan, wire)


# ----------------------------------------------------------------------------- calibration
# Public text for the per-channel grid (the opening of the Universal Declaration of Human Rights,
# 1948; public domain), and a second register so code-like and numeric tokens are seen too.
CALIBRATION_TEXT = (
    "Whereas recognition of the inherent dignity and of the equal and inalienable rights of all "
    "members of the human family is the foundation of freedom, justice and peace in the world, "
    "Whereas disregard and contempt for human rights have resulted in barbarous acts which have "
    "outraged the conscience of mankind, and the advent of a world in which human beings shall "
    "enjoy freedom of speech and belief and freedom from fear and want has been proclaimed as the "
    "highest aspiration of the common people, Whereas it is essential, if man is not to be "
    "compelled to have recourse, as a last resort, to rebellion against tyranny and oppression, "
    "that human rights should be protected by the rule of law. Article 1. All human beings are "
    "born free and equal in dignity and rights. They are endowed with reason and conscience and "
    "should act towards one another in a spirit of brotherhood. Article 2. Everyone is entitled "
    "to all the rights and freedoms set forth in this Declaration, without distinction of any "
    "kind, such as race, colour, sex, language, religion, political or other opinion, national "
    "or social origin, property, birth or other status.\n"
    "Summary: The report, published on 12 March 2019, found that 3.4 million people (about 41%) "
    "had moved; the minister said: \"We will act now.\" Q: What is 17 + 25? A: 42.\n"
)


def channel_scales(states: Tensor) -> Tensor:
    """states: (S, N, d) for S backbone states at N calibration positions -> grid (S, d):
    each channel's largest magnitude (floored against dead channels), rounded to fp16 so the
    grid travels in an OPEN exactly as the kit holds it."""
    import torch

    amax = states.float().abs().amax(1)  # (S, d)
    floor = amax.mean(-1, keepdim=True) * GRID_FLOOR
    g = torch.maximum(amax, floor).clamp(MIN_SCALE, MAX_SCALE)
    return g.half().float()


def calibrate(backbone, text: str = CALIBRATION_TEXT, max_tokens: int = 512) -> Tensor:
    """The grid (L+1, d) of a backbone (duck-typed: .tokenizer, .forward(ids) -> .hidden) over
    public text, computed once when its edge kit is made."""
    import torch

    ids = backbone.tokenizer(text)["input_ids"][:max_tokens]
    with torch.inference_mode():
        out = backbone.forward(torch.tensor([ids]), logits_last_only=True)
    states = torch.stack([h[0] for h in out.hidden]).cpu()  # (L+1, N, d)
    return channel_scales(states)


# ----------------------------------------------------------------------------- the contract
def wire_of(dtype_names: list[str]) -> WireDtype | None:
    """The wire dtype a FRAME/HIDDEN's tensor dtypes spell, or None when they spell none."""
    if all(n == "float16" for n in dtype_names):
        return WireDtype.FP16
    if len(dtype_names) % 2 == 0 and all(n == "float16" for n in dtype_names[1::2]):
        kinds = {_BY_CODE.get(n) for n in dtype_names[0::2]}
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop()
    return None


def check_wire(specs: list[dict], arrays: list[np.ndarray | None], per_state: int) -> str | None:
    """Why FRAME/HIDDEN tensors are malformed, or None. `per_state`: how many states one message
    may carry (FRAME: z, optionally the wire layers → 2; HIDDEN: 1). Quantised states come as
    (codes, scales) pairs whose scales have the codes' shape minus the last axis and are finite
    and positive (checked when the arrays are at hand)."""
    names = [s["dtype"] for s in specs]
    wire = wire_of(names)
    if wire is None:
        return f"tensor dtypes {names} are neither fp16 nor (int8|uint8 codes, fp16 scales) pairs"
    states = len(specs) // (2 if wire.quantised else 1)
    if not 1 <= states <= per_state:
        return f"{states} states, allowed 1–{per_state}"
    if not wire.quantised:
        return None
    for j in range(0, len(specs), 2):
        shape, sshape = specs[j]["shape"], specs[j + 1]["shape"]
        if not shape or shape[-1] == 0 or sshape != shape[:-1]:
            return f"codes of shape {shape} with scales of shape {sshape}"
        s = arrays[j + 1]
        if s is not None and s.size and not (np.isfinite(s).all() and (s > 0).all()):
            return "scales must be finite and positive"
    return None


def check_grid(spec: dict, array: np.ndarray | None, rows: int) -> str | None:
    """An OPEN's grid tensor: float16 (rows, d), finite and positive."""
    shape = spec["shape"]
    if spec["dtype"] != "float16" or len(shape) != 2 or shape[0] != rows or not shape[1]:
        return f"grid must be float16 ({rows}, d), got {spec['dtype']} {shape}"
    if array is not None and not (np.isfinite(array).all() and (array > 0).all()):
        return "grid scales must be finite and positive"
    return None
