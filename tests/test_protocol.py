"""Codec round trips and strict validation."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.batch import coalesce, encode_batch, split_batch
from routing.protocol import ProtocolError, decode, encode, msg

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


@given(pos=st.lists(st.integers(0, 1000), min_size=1, max_size=40), widths=st.lists(st.integers(0, 64), max_size=40),
       most=st.integers(1, 8))
def test_coalesce_then_split_gives_back_every_message_in_order(pos, widths, most):
    """Runs of at most `most` messages, each run one BATCH of two frames (a lone message as it is),
    split back into the same messages, tensors included."""
    msgs = [msg("FRAME", [np.full(widths[i % len(widths)] if widths else 4, i, np.float16)], session=SID, pos=p,
                epoch=0, token=1) for i, p in enumerate(pos)]
    encoded = [frames_of(m) for m in msgs]
    back, covered = [], 0
    for frames, i, j in coalesce(encoded, most):
        assert i == covered and 0 < j - i <= most
        covered = j
        m = decode(frames)
        parts = split_batch(m, frames) if m.type == "BATCH" else [frames]
        assert len(frames) == 2 or j - i == 1
        back += [decode(p) for p in parts]
    assert covered == len(msgs)
    assert [m["pos"] for m in back] == pos
    assert all(np.array_equal(a.tensors[0], b.tensors[0]) for a, b in zip(back, msgs, strict=True))


def test_a_batch_whose_sizes_lie_is_refused():
    parts = [frames_of(msg("ACK", session=SID, pos=i)) for i in range(3)]
    head, blob = encode_batch(parts)
    for bad in ([head, blob[:-1]], [head, blob + b"x"], [head, blob, b""], [head]):
        with pytest.raises(ProtocolError):
            split_batch(decode(bad), bad)


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


def test_coalesce_cuts_a_run_at_the_byte_cap(monkeypatch):
    import routing.batch as batch

    monkeypatch.setattr(batch, "MAX_BATCH_BYTES", 300)
    encoded = [frames_of(msg("FRAME", [np.zeros(64, np.float16)], session=SID, pos=i, epoch=0, token=1))
               for i in range(6)]  # ~250 bytes each: one fits 300 bytes
    runs = [(i, j) for _, i, j in coalesce(encoded)]
    assert runs[0][0] == 0 and runs[-1][1] == 6 and all(j - i == 1 for i, j in runs)
    monkeypatch.setattr(batch, "MAX_BATCH_BYTES", 1200)
    runs = [(i, j) for _, i, j in coalesce(encoded)]
    assert all(1 < j - i < 6 for i, j in runs[:-1]) and runs[-1][1] == 6
