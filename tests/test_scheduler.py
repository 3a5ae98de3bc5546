"""Continuous batching is real: one backbone forward per scheduler iteration, whatever the
number of sessions; sessions join between steps; rollback and lockstep on the worker."""

from __future__ import annotations

import os

import pytest

from cloud_worker.config import WorkerConfig
from cloud_worker.scheduler import Scheduler
from lab.reference import ReferenceGenerator
from routing.protocol import ProtocolError, msg


def open_msg(backbone, prompt, mode="base", max_new=8, window=64, wire_layers=()):
    return msg("OPEN", session=os.urandom(16), prompt=prompt, max_new_tokens=max_new, mode=mode,
               window=window, sampling={}, fingerprint=backbone.fingerprint,
               wire_layers=list(wire_layers), eos=None)


def test_one_forward_per_iteration(backbone):
    sched = Scheduler(backbone)
    prompts = [backbone.encode(t) for t in ["the cat", "a river ran", "the old king saw the dog", "x"]]
    opens = [open_msg(backbone, p) for p in prompts]
    for m in opens[:2]:
        sched.handle(m)
    frames = sched.step()  # prefill of 2
    assert sched.runner.forwards == 1 and len(frames) == 2
    for m in opens[2:]:
        sched.handle(m)  # join between steps: prefill rides with the others' decodes
    for i in range(7):
        frames = sched.step()
        assert sched.runner.forwards == 2 + i
        assert len(frames) == 4 if i < 6 else len(frames) >= 2
    # the batched tokens equal the single-sequence reference
    ref = ReferenceGenerator(backbone, None)
    while sched.has_work():
        sched.step()
    for m, p in zip(opens, prompts, strict=True):
        s = sched.sessions[m.session]
        assert s.seq[len(p):] == ref.generate(p, 8, "base", stop_at_eos=False).tokens


def test_window_limits_decode_ahead(backbone):
    sched = Scheduler(backbone)
    m = open_msg(backbone, backbone.encode("the cat"), max_new=50, window=3)
    sched.handle(m)
    n = sum(len(sched.step()) for _ in range(10))
    assert n == 3 and not sched.has_work()
    s = sched.sessions[m.session]
    sched.handle(msg("ACK", session=m.session, pos=s.n_prompt))
    assert sched.has_work() and len(sched.step()) == 1


def test_rollback_and_close_free_state(backbone):
    sched = Scheduler(backbone)
    m = open_msg(backbone, backbone.encode("the cat"), mode="spa", max_new=10, wire_layers=[0, 1])
    sched.handle(m)
    for _ in range(5):
        sched.step()
    s = sched.sessions[m.session]
    n = s.n_prompt
    assert sorted(s.ring) == list(range(n, n + 5))
    hidden = sched.handle(msg("REQUEST", session=m.session, pos=n + 1, epoch=0))[0]
    assert hidden.tensors[0].shape == (2, backbone.d_model)
    sched.handle(msg("CORRECT", session=m.session, pos=n + 1, epoch=0, token=7))
    assert s.epoch == 1 and s.seq[n + 1] == 7 and len(s.seq) == n + 2 and s.kv_len <= n + 1
    assert s.wasted == 4 and sorted(s.ring) == []
    frames = sched.step()
    assert frames[0]["pos"] == n + 2 and frames[0]["epoch"] == 1
    with pytest.raises(ProtocolError, match="BAD_POSITION"):
        sched.handle(msg("CORRECT", session=m.session, pos=n, epoch=0, token=1))
    done = sched.handle(msg("CLOSE", session=m.session))
    assert done[0].type == "DONE" and m.session not in sched.sessions


def test_lockstep_waits_for_token(backbone):
    sched = Scheduler(backbone)
    m = open_msg(backbone, backbone.encode("the cat"), mode="full", wire_layers=[0])
    sched.handle(m)
    f = sched.step()[0]
    assert len(f.tensors) == 2 and not sched.has_work()
    sched.handle(msg("TOKEN", session=m.session, pos=f["pos"], epoch=0, token=5))
    assert sched.has_work() and sched.sessions[m.session].seq[-1] == 5


def test_open_validation(backbone):
    sched = Scheduler(backbone, WorkerConfig(max_sessions=1))
    bad = open_msg(backbone, [backbone.vocab_size + 5])
    with pytest.raises(ProtocolError, match="BAD_MESSAGE"):
        sched.handle(bad)
    sched.handle(open_msg(backbone, [1]))
    with pytest.raises(ProtocolError, match="BUSY"):
        sched.handle(open_msg(backbone, [1]))


def test_worker_registers_once_per_broker_instance():
    """A restarted broker answers every beat the worker queued while it was down with RECONNECT
    (they arrive together): the worker registers once for it, not once per answer (each READY
    drops its sessions). A RECONNECT long after (the broker expired us) registers again."""
    import time

    import zmq

    from cloud_worker.worker import _RESET, Link
    from routing.protocol import MsgType, decode, encode

    ctx = zmq.Context.instance()
    broker = ctx.socket(zmq.ROUTER)
    broker.setsockopt(zmq.LINGER, 0)
    port = broker.bind_to_random_port("tcp://127.0.0.1")
    cfg = WorkerConfig(heartbeat_s=0.05, liveness=20)  # a RECONNECT is news after 1 s
    addr = f"inproc://link-test-{os.urandom(4).hex()}"
    link = Link(ctx, f"tcp://127.0.0.1:{port}", msg(MsgType.READY, fingerprint="f" * 64, capacity=4),
                cfg, None, addr)
    compute = ctx.socket(zmq.PAIR)
    compute.setsockopt(zmq.LINGER, 0)
    compute.connect(addr)
    link.start()
    worker = None

    def listen(seconds: float, instance: bytes) -> int:
        """READYs heard in `seconds`, beating as broker `instance` meanwhile."""
        nonlocal worker
        readies, end, beat = 0, time.monotonic() + seconds, 0.0
        while time.monotonic() < end:
            if worker is not None and time.monotonic() >= beat:
                broker.send_multipart([worker, *encode(msg(MsgType.HEARTBEAT, broker=instance))])
                beat = time.monotonic() + 0.05
            if broker.poll(20):
                ident, *frames = broker.recv_multipart()
                worker = ident
                readies += decode(frames, tensors=False).type is MsgType.READY
        return readies

    def resets() -> int:
        n = 0
        while compute.poll(0):
            n += compute.recv() == _RESET
        return n

    try:
        assert listen(0.5, b"A" * 8) == 1 and resets() == 0
        for _ in range(3):  # the new instance answers three queued beats at once
            broker.send_multipart([worker, *encode(msg(MsgType.RECONNECT, broker=b"B" * 8))])
        assert listen(0.5, b"B" * 8) == 1 and resets() == 1
        assert link.registrations == 2
        time.sleep(1.1)  # no beat for a while would reconnect: keep it short of that
        broker.send_multipart([worker, *encode(msg(MsgType.RECONNECT, broker=b"B" * 8))])
        assert listen(0.3, b"B" * 8) == 1 and resets() == 1  # expired by B: registers again
    finally:
        link.running = False
        link.join(timeout=2)
        compute.close(0)
        broker.close(0)
