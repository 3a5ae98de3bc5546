"""Quantised wire tensors (routing/quant.py): the grid's error bounds, int4 packing, and the
contract refusing bad wire dtypes, malformed quantised frames and bad scales."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from routing import quant
from routing.errors import ErrorCode
from routing.protocol import Limits, ProtocolError, decode, encode, msg
from routing.quant import WireDtype

QUANTISED = [WireDtype.INT8, WireDtype.INT4]
_floats = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16).map(lambda n: 2 * n)),
                elements=_floats),
       wire=st.sampled_from(QUANTISED), seed=st.integers(0, 2**16))
@example(x=np.full((1, 2), 1e-4, np.float32), wire=WireDtype.INT8, seed=0)  # an fp16-subnormal scale
def test_roundtrip_error_is_within_half_a_step(x, wire, seed):
    """|x̂ − x| ≤ half the row's step (a·c per channel), plus fp32 rounding."""
    t = torch.from_numpy(x)
    chan = quant.channel_scales(torch.rand(1, 50, t.shape[1], generator=torch.Generator().manual_seed(seed))
                                * 10 + 0.01)[0]
    codes, scales = quant.quantise(t, chan, wire)
    assert codes.dtype == (torch.int8 if wire is WireDtype.INT8 else torch.uint8)
    assert codes.shape[-1] == wire.code_width(t.shape[1]) and scales.shape == t.shape[:1]
    y = quant.dequantise(codes, scales, chan, wire)
    step = scales.float()[:, None] * chan  # (N, d)
    assert ((y - t).abs() <= step / 2 * (1 + 1e-3) + 1e-6 * t.abs()).all()
    assert (scales.float() > 0).all() and torch.isfinite(scales.float()).all()


@settings(max_examples=60, deadline=None)
@given(q=arrays(np.int8, st.tuples(st.integers(1, 3), st.integers(1, 20).map(lambda n: 2 * n)),
                elements=st.integers(-7, 7)))
def test_int4_packing_is_lossless_on_the_grid(q):
    """Codes already on the int4 grid pack two per byte and come back exactly."""
    t = torch.from_numpy(q).float()
    chan = torch.ones(t.shape[1])
    # a row whose max |q| is 7 has scale 1: quantise reproduces q exactly
    t[:, 0] = 7.0
    codes, scales = quant.quantise(t, chan, WireDtype.INT4)
    assert codes.shape == (t.shape[0], t.shape[1] // 2)
    assert torch.equal(scales.float(), torch.ones(t.shape[0]))
    assert torch.equal(quant.dequantise(codes, scales, chan, WireDtype.INT4), t)
    low = (codes & 15).to(torch.int16) - 8
    assert torch.equal(low.float(), t[:, 0::2])  # element 2j in the low nibble


def test_outlier_channel_does_not_set_the_grid_for_all():
    """Quadapter's point: with per-channel scales, a 100× channel leaves the others' error small."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g)
    x[:, 5] *= 100
    chan = quant.channel_scales(x[None])[0]
    flat = torch.ones(128)
    for wire in QUANTISED:
        err_grid = (quant.roundtrip(x, chan, wire) - x)[:, torch.arange(128) != 5].abs().mean()
        err_flat = (quant.roundtrip(x, flat, wire) - x)[:, torch.arange(128) != 5].abs().mean()
        assert err_grid < err_flat / 3, wire


def test_all_zero_vectors_keep_a_valid_scale():
    codes, scales = quant.quantise(torch.zeros(2, 8), torch.ones(8), WireDtype.INT8)
    assert (scales.float() > 0).all() and not codes.any()


# ----------------------------------------------------------------------------- the contract
SID = os.urandom(16)


def _open(**over):
    fields = dict(session=SID, prompt=[1, 2], max_new_tokens=4, mode="spa", window=4, sampling={},
                  fingerprint="f" * 64, wire_layers=[0, 2], eos=None)
    tensors = over.pop("tensors", [])
    fields.update(over)
    return msg("OPEN", tensors, **fields)


def _code(frames) -> ErrorCode:
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    return e.value.code


def test_open_wire_dtype_and_grid_are_validated():
    grid = np.ones((3, 8), np.float16)
    m = decode(encode(_open(wire_dtype="int8", tensors=[grid])))
    assert m["wire_dtype"] == "int8" and m.tensors[0].shape == (3, 8)
    assert decode(encode(_open())).get("wire_dtype") is None  # fp16, no grid
    assert _code(encode(_open(wire_dtype="int2", tensors=[grid]))) is ErrorCode.BAD_MESSAGE
    assert _code(encode(_open(wire_dtype=8, tensors=[grid]))) is ErrorCode.BAD_MESSAGE
    assert _code(encode(_open(wire_dtype="int8"))) is ErrorCode.BAD_TENSOR  # no grid
    assert _code(encode(_open(wire_dtype="fp16", tensors=[grid]))) is ErrorCode.BAD_TENSOR
    assert _code(encode(_open(wire_dtype="int4", tensors=[grid[:2]]))) is ErrorCode.BAD_TENSOR  # rows
    assert _code(encode(_open(wire_dtype="int4", tensors=[grid.astype(np.float32)]))) is ErrorCode.BAD_TENSOR
    for bad in (0.0, -1.0, np.inf, np.nan):
        g = grid.copy()
        g[1, 3] = bad
        assert _code(encode(_open(wire_dtype="int8", tensors=[g]))) is ErrorCode.BAD_TENSOR
    limits = Limits(vocab=100, n_layers=4, context=64, d_model=16)
    with pytest.raises(ProtocolError, match="width"):
        limits.check(decode(encode(_open(wire_dtype="int8", tensors=[grid]))))  # d=8, backbone 16


def _frame(tensors):
    return encode(msg("FRAME", tensors, session=SID, pos=3, epoch=0, token=1))


def test_quantised_frames_are_validated():
    z8, s = np.zeros(8, np.int8), np.array(0.5, np.float16)
    h8, hs = np.zeros((2, 8), np.int8), np.full(2, 0.25, np.float16)
    z4, h4 = np.zeros(4, np.uint8), np.zeros((2, 4), np.uint8)
    for good in ([z8, s], [z8, s, h8, hs], [z4, s, h4, hs], [np.zeros(8, np.float16)]):
        assert len(decode(_frame(good)).tensors) == len(good)
    hidden = encode(msg("HIDDEN", [h4, hs], session=SID, pos=3, epoch=0))
    assert decode(hidden).tensors[0].dtype == np.uint8
    bad = {
        "codes without scales": [z8],
        "scales of the wrong shape": [z8, hs],
        "mixed int8 and int4": [z8, s, h4, hs],
        "fp32 scales": [z8, s.astype(np.float32)],
        "int32 codes": [z8.astype(np.int32), s],
        "zero scale": [z8, np.array(0.0, np.float16)],
        "negative scales": [z8, s, h8, -hs],
        "nan scale": [z8, np.array(np.nan, np.float16)],
        "inf scale": [z8, np.array(np.inf, np.float16)],
        "three states": [z8, s, h8, hs, h8, hs][:4] + [np.zeros(8, np.float16)],
    }
    for why, tensors in bad.items():
        assert _code(_frame(tensors)) in (ErrorCode.BAD_TENSOR, ErrorCode.BAD_MESSAGE), why
    assert _code(encode(msg("HIDDEN", [h8, hs, h8, hs], session=SID, pos=3, epoch=0))) in (
        ErrorCode.BAD_TENSOR, ErrorCode.BAD_MESSAGE)


def test_edge_decode_refuses_a_frame_that_does_not_fit_the_session():
    chan = torch.ones(2, 8)
    codes, scales = quant.quantise(torch.randn(2, 8), chan, WireDtype.INT8)
    assert quant.decode([codes.numpy(), scales.numpy()], chan, WireDtype.INT8, (2, 8)).shape == (2, 8)
    for tensors, wire, shape in (([codes.numpy(), scales.numpy()], WireDtype.INT4, (2, 8)),
                                 ([codes.numpy(), scales.numpy()], WireDtype.INT8, (3, 8)),
                                 ([codes.numpy()], WireDtype.INT8, (2, 8)),
                                 ([np.zeros((2, 8), np.float16)], WireDtype.INT8, (2, 8)),
                                 ([codes.numpy(), scales.numpy()], WireDtype.FP16, (2, 8))):
        with pytest.raises(ValueError):
            quant.decode(tensors, chan, wire, shape)
