"""Codec round trips and strict validation."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.protocol import ProtocolError, decode, encode, encode_batch, msg, split_batch

SID = os.urandom(16)


def frames_of(m):
    return [bytes(f) for f in encode(m)]


def test_round_trip_with_tensors():
    z = np.arange(8, dtype=np.float16)
    h = np.ones((3, 8), dtype=np.float16)
    m = decode(frames_of(msg("FRAME", [z, h], session=SID, pos=5, epoch=1, token=42)))
    assert m.type == "FRAME" and m["pos"] == 5 and m.session == SID
    assert np.array_equal(m.tensors[0], z) and np.array_equal(m.tensors[1], h)


def test_batch_round_trip():
    parts = [frames_of(msg("ACK", session=SID, pos=i)) for i in range(3)]
    frames = encode_batch(parts)
    m = decode(frames)
    assert [decode(p)["pos"] for p in split_batch(m, frames)] == [0, 1, 2]


@pytest.mark.parametrize("frames,code", [
    ([b"\xc1garbage"], "BAD_MESSAGE"),
    ([msgpack.packb([1, 2])], "BAD_MESSAGE"),
    ([msgpack.packb({"v": 99, "type": "ACK"})], "BAD_VERSION"),
    ([msgpack.packb({"v": 1, "type": "NOPE"})], "UNKNOWN_TYPE"),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID})], "BAD_MESSAGE"),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID, "pos": "x"})], "BAD_MESSAGE"),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": b"short", "pos": 1})], "BAD_MESSAGE"),
    ([b"x" * (2 << 20)], "TOO_LARGE"),
])
def test_rejects(frames, code):
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.code == code


def _frame_header(**tensor):
    return msgpack.packb({"v": 1, "type": "FRAME", "session": SID, "pos": 1, "epoch": 0, "token": 1,
                          "tensors": [tensor]}, use_bin_type=True)


def test_tensor_validation():
    with pytest.raises(ProtocolError, match="BAD_TENSOR"):
        decode([_frame_header(dtype="float16", shape=[4]), b"\0" * 6])  # wrong byte count
    with pytest.raises(ProtocolError, match="BAD_TENSOR"):
        decode([_frame_header(dtype="object", shape=[4]), b"\0" * 8])  # not allowed dtype
    with pytest.raises(ProtocolError, match="TOO_LARGE"):
        decode([_frame_header(dtype="float32", shape=[1 << 30]), b""])
    with pytest.raises(ProtocolError, match="tensor frames"):
        decode([_frame_header(dtype="float16", shape=[4])])  # frame missing


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
def test_garbage_never_crashes(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass
