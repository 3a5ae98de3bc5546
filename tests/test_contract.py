"""The contract cannot be crashed: property-based fuzzing of the codec (random and mutated
headers, nested msgpack types anywhere) and the model limits. `decode` either returns a message
that satisfies its spec or raises ProtocolError with a known code — nothing else."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.errors import ErrorCode
from routing.protocol import (
    SPECS,
    Limits,
    MsgType,
    ProtocolError,
    Role,
    decode,
    encode,
    msg,
)

SID = os.urandom(16)
Z = np.zeros(8, dtype=np.float16)

VALID = [
    msg(MsgType.OPEN, session=SID, prompt=[1, 2, 3], max_new_tokens=8, mode="spa", window=4,
        sampling={"temperature": 0.7, "top_k": 5, "seed": 3}, fingerprint="f" * 64,
        wire_layers=[0, 2], eos=2),
    msg(MsgType.FRAME, [Z], session=SID, pos=3, epoch=0, token=7),
    msg(MsgType.FRAME, [Z, np.zeros((2, 8), np.float16)], session=SID, pos=3, epoch=0, token=7),
    msg(MsgType.REQUEST, session=SID, pos=3, epoch=1),
    msg(MsgType.HIDDEN, [np.zeros((2, 8), np.float16)], session=SID, pos=3, epoch=1),
    msg(MsgType.CORRECT, session=SID, pos=3, epoch=1, token=9),
    msg(MsgType.ACK, session=SID, pos=3),
    msg(MsgType.TOKEN, session=SID, pos=3, epoch=0, token=9),
    msg(MsgType.DONE, session=SID, wasted=2),
    msg(MsgType.CLOSE, session=SID),
    msg(MsgType.ERROR, code="BUSY", detail="full", session=SID),
    msg(MsgType.READY, fingerprint="f" * 64, capacity=8),
    msg(MsgType.HEARTBEAT, load=3),
    msg(MsgType.HEARTBEAT, sessions=[SID]),
    msg(MsgType.HEARTBEAT, broker=b"12345678"),
    msg(MsgType.RECONNECT, broker=b"12345678"),
]

# Any msgpack value, nested: the shapes that once killed the broker (a list or map where a
# string was expected) and everything around them.
ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
scalars = (st.none() | st.booleans() | ints | st.floats()
           | st.text(max_size=20) | st.binary(max_size=40))
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                      | st.dictionaries(st.text(max_size=8) | ints, kids, max_size=4),
                      max_leaves=12)
type_names = st.sampled_from([t.value for t in MsgType]) | values


def _frames(m):
    return [bytes(f) for f in encode(m)]


def _check(frames) -> None:
    """decode's only outcomes: a message within its spec, or ProtocolError with a known code."""
    for sender in (None, Role.AGENT, Role.WORKER):
        try:
            m = decode(frames, sender=sender)
        except ProtocolError as e:
            assert isinstance(e.code, ErrorCode)
            continue
        spec = SPECS[m.type]
        assert set(spec.fields) <= set(m.fields) <= set(spec.fields) | set(spec.optional)
        for name, value in m.fields.items():
            assert (spec.fields.get(name) or spec.optional[name]).check(value) is None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.dictionaries(st.sampled_from(["v", "type", "session", "pos", "epoch", "token",
                                               "prompt", "tensors", "sampling", "code", "counts", "sizes",
                                               "wire_layers", "sessions"]) | st.text(max_size=6),
                              values, max_size=8),
       v=st.sampled_from([1, None]), t=type_names, extra=st.lists(st.binary(max_size=64), max_size=3))
def test_random_headers_never_crash(header, v, t, extra):
    if v is not None:
        header = {**header, "v": v, "type": t}
    _check([msgpack.packb(header, use_bin_type=True), *extra])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(i=st.integers(0, len(VALID) - 1), data=st.data())
def test_mutated_valid_messages_never_crash(i, data):
    frames = _frames(VALID[i])
    header = msgpack.unpackb(frames[0], raw=False)
    key = data.draw(st.sampled_from(sorted(header) + ["extra"]))
    header[key] = data.draw(values)
    if data.draw(st.booleans()) and isinstance(header.get("tensors"), list) and header["tensors"]:
        header["tensors"][0] = {"dtype": data.draw(values), "shape": data.draw(values)}
    _check([msgpack.packb(header, use_bin_type=True), *frames[1:]])


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200))
def test_garbage_never_crashes(raw):
    _check([raw])


def test_valid_messages_round_trip():
    for m in VALID:
        got = decode(_frames(m))
        assert got.type is m.type and got.fields == m.fields


@pytest.mark.parametrize("frames,code", [
    ([msgpack.packb({"v": 1, "type": ["OPEN"]})], ErrorCode.UNKNOWN_TYPE),
    ([msgpack.packb({"v": 1, "type": {"a": 1}})], ErrorCode.UNKNOWN_TYPE),
    ([msgpack.packb({"v": [1], "type": "ACK"})], ErrorCode.BAD_VERSION),
    ([msgpack.packb({"v": 1, "type": "FRAME", "session": SID, "pos": 1, "epoch": 0, "token": 1,
                     "tensors": [{"dtype": ["float16"], "shape": [1]}]}), b"\0\0"], ErrorCode.BAD_TENSOR),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID, "pos": 2**62})], ErrorCode.BAD_MESSAGE),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID, "pos": -1})], ErrorCode.BAD_MESSAGE),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID, "pos": True})], ErrorCode.BAD_MESSAGE),
    ([msgpack.packb({"v": 1, "type": "ACK", "session": SID, "pos": 1, "x": 1})], ErrorCode.BAD_MESSAGE),
])
def test_shapes_that_once_killed_the_broker(frames, code):
    with pytest.raises(ProtocolError) as e:
        decode(frames)
    assert e.value.code is code


def _open(**over):
    fields = dict(VALID[0].fields) | over
    return _frames(msg(MsgType.OPEN, **fields))


@pytest.mark.parametrize("over,needle", [
    ({"wire_layers": list(range(2000))}, "wire_layers"),
    ({"wire_layers": list(range(200_000))}, "max_array_len"),
    ({"wire_layers": [1, 1]}, "repeated"),
    ({"max_new_tokens": 10**9}, "max_new_tokens"),
    ({"window": 10**9}, "window"),
    ({"mode": ["spa"]}, "mode"),
    ({"sampling": {"temperature": [1]}}, "temperature"),
    ({"sampling": {"nested": {"a": 1}}}, "unknown key"),
    ({"prompt": [1, "x"]}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"eos": -1}, "eos"),
])
def test_open_fields_are_bounded(over, needle):
    with pytest.raises(ProtocolError, match=needle) as e:
        decode(_open(**over))
    assert e.value.code is ErrorCode.BAD_MESSAGE
    assert e.value.session == SID or needle == "max_array_len"  # unparsed: no session to name


def test_senders_are_enforced():
    with pytest.raises(ProtocolError) as e:
        decode(_frames(VALID[1]), sender=Role.AGENT)  # agents do not send FRAME
    assert e.value.code is ErrorCode.FORBIDDEN
    with pytest.raises(ProtocolError):
        decode(_frames(VALID[0]), sender=Role.WORKER)  # workers do not OPEN
    assert decode(_frames(VALID[12]), sender=Role.AGENT).type is MsgType.HEARTBEAT


def test_model_limits():
    lim = Limits(vocab=100, n_layers=4, context=64)
    ok = decode(_open(prompt=[1, 2], max_new_tokens=8, wire_layers=[0, 3], eos=None))
    lim.check(ok)
    cases = [
        (_open(prompt=[1, 200]), ErrorCode.BAD_MESSAGE, "vocabulary"),
        (_open(prompt=[1] * 60, max_new_tokens=8), ErrorCode.TOO_LARGE, "context"),
        (_open(wire_layers=[4]), ErrorCode.BAD_MESSAGE, "wire_layers"),
        (_open(eos=100), ErrorCode.BAD_MESSAGE, "eos"),
        (_frames(msg(MsgType.CORRECT, session=SID, pos=3, epoch=0, token=10**6)), ErrorCode.BAD_MESSAGE, "token"),
        (_frames(msg(MsgType.TOKEN, session=SID, pos=3, epoch=0, token=100)), ErrorCode.BAD_MESSAGE, "token"),
        (_frames(msg(MsgType.ACK, session=SID, pos=64)), ErrorCode.BAD_POSITION, "context"),
    ]
    for frames, code, needle in cases:
        with pytest.raises(ProtocolError, match=needle) as e:
            lim.check(decode(frames))
        assert e.value.code is code


def test_error_codes_say_what_they_do():
    assert ErrorCode.WORKER_LOST.retryable and ErrorCode.BROKER_RESTARTED.retryable
    assert not ErrorCode.BAD_MESSAGE.retryable and not ErrorCode.NOT_OWNER.retryable
    # a stranger's message must never end someone else's session
    assert not ErrorCode.NOT_OWNER.ends_session and not ErrorCode.DUPLICATE_SESSION.ends_session
    assert ErrorCode.BAD_MESSAGE.ends_session and ErrorCode.LEASE_EXPIRED.ends_session
