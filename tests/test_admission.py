"""The broker's admission and placement (issue 15 part 3, issue 20 item 4), against a live broker
on 127.0.0.1 with raw ZeroMQ sockets as workers and agents (no model: the broker only routes).

Queued OPENs are placed in order as capacity frees (no BUSY while the queue has room); a full
queue answers BUSY; the queue is fair across keys; OPENs that wait too long are answered BUSY;
a worker's claim is capped and its refusals lower the broker's estimate (the OPEN waits again,
unseen by the agent); sessions go to the worker with the most free slots; while OPENs wait, a
key that holds slots and never reads loses them after a lease although it beats.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq
from inbox import received

from broker.broker import Broker
from broker.config import BrokerConfig
from routing.batch import split_batch
from routing.protocol import MsgType, decode, encode, msg
from spa.stack import free_port

FP = "fp-test"


class Harness:
    def __init__(self, **cfg) -> None:
        self.agents, self.workers = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        self.broker = Broker(self.agents, self.workers, None,
                             BrokerConfig(**({"heartbeat_s": 0.25, "liveness": 100, "tick_ms": 5} | cfg)))
        self.thread = threading.Thread(target=self.broker.mediate, daemon=True)
        self.thread.start()
        self.sockets: list[zmq.Socket] = []

    def socket(self, addr: str, rid: bytes) -> zmq.Socket:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTING_ID, rid)
        s.connect(addr)
        self.sockets.append(s)
        return s

    def worker(self, capacity: int, name: bytes = b"W1") -> zmq.Socket:
        w = self.socket(self.workers, name)
        w.send_multipart(encode(msg(MsgType.READY, fingerprint=FP, capacity=capacity)))
        wait_for(lambda: name in self.broker.workers)
        return w

    def agent(self, name: bytes) -> zmq.Socket:
        return self.socket(self.agents, name)

    def close(self) -> None:
        self.broker.running = False
        self.thread.join(5)
        self.broker.close()
        for s in self.sockets:
            s.close(0)


@pytest.fixture
def harness():
    made: list[Harness] = []

    def make(**cfg) -> Harness:
        made.append(Harness(**cfg))
        return made[-1]

    yield make
    for h in made:
        h.close()


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def open_msg(sid: bytes) -> list:
    return encode(msg(MsgType.OPEN, session=sid, prompt=[1, 2, 3], max_new_tokens=4, mode="base", window=1,
                      sampling={}, fingerprint=FP, wire_layers=[], eos=None))


def worker_got(w: zmq.Socket, timeout_ms: int = 2000) -> list:
    """The session messages a fake worker received (BATCHes split, beats skipped) until quiet."""
    return received(w, timeout_ms, 200)


def agent_got(a: zmq.Socket, timeout_ms: int = 300) -> list:
    """The session messages a fake agent received (the broker's BATCHes split, beats skipped)."""
    return received(a, timeout_ms, timeout_ms)


def done(w: zmq.Socket, sid: bytes) -> None:
    w.send_multipart(encode(msg(MsgType.DONE, session=sid, wasted=0)))


def frame(w: zmq.Socket, sid: bytes, pos: int = 3) -> None:
    import numpy as np

    w.send_multipart(encode(msg(MsgType.FRAME, [np.zeros(4, np.float16)], session=sid, pos=pos, epoch=0,
                                token=1)))


def test_queued_opens_are_placed_in_order_as_capacity_frees(harness):
    h = harness()
    w = h.worker(capacity=2)
    a = h.agent(b"alice")
    sids = [os.urandom(16) for _ in range(5)]
    for sid in sids:
        a.send_multipart(open_msg(sid))
    assert [m.session for m in worker_got(w)] == sids[:2]
    assert agent_got(a) == [], "an OPEN was refused while the queue had room"
    assert len(h.broker.queue) == 3
    for k in range(3):  # each finished session lets the next queued OPEN in, in order
        done(w, sids[k])
        assert [m.session for m in worker_got(w)] == [sids[k + 2]]
    assert len(h.broker.queue) == 0
    assert [m.type for m in agent_got(a)] == [MsgType.DONE] * 3  # the DONEs, no refusal


def test_full_queue_answers_busy(harness):
    h = harness(queue_max=2)
    w = h.worker(capacity=1)
    a = h.agent(b"alice")
    sids = [os.urandom(16) for _ in range(4)]
    for sid in sids:
        a.send_multipart(open_msg(sid))
    assert [m.session for m in worker_got(w)] == sids[:1]
    got = agent_got(a)
    assert [(m.type, m["code"], m.session) for m in got] == [(MsgType.ERROR, "BUSY", sids[3])]
    assert "queue is full" in got[0]["detail"]


def test_queue_is_fair_across_keys(harness):
    h = harness()
    w = h.worker(capacity=2)
    greedy, polite = h.agent(b"greedy"), h.agent(b"polite")
    g = [os.urandom(16) for _ in range(6)]
    for sid in g:
        greedy.send_multipart(open_msg(sid))
    assert [m.session for m in worker_got(w)] == g[:2]
    p = os.urandom(16)
    polite.send_multipart(open_msg(p))
    time.sleep(0.1)
    done(w, g[0])  # the polite key holds no slot, the greedy one still holds one: polite first
    assert [m.session for m in worker_got(w)] == [p]
    done(w, g[1])
    assert [m.session for m in worker_got(w)] == [g[2]]  # then the greedy key's line, in order


def test_an_open_waiting_too_long_is_answered_busy_and_close_withdraws_one(harness):
    h = harness(queue_wait_s=0.5)
    w = h.worker(capacity=1)
    a = h.agent(b"alice")
    s0, s1, s2 = (os.urandom(16) for _ in range(3))
    for sid in (s0, s1, s2):
        a.send_multipart(open_msg(sid))
    assert [m.session for m in worker_got(w)] == [s0]
    a.send_multipart(encode(msg(MsgType.CLOSE, session=s2)))  # withdrawn while it waits
    got = agent_got(a, 1500)
    assert [(m["code"], m.session) for m in got] == [("BUSY", s1)] and "stayed full" in got[0]["detail"]
    assert len(h.broker.queue) == 0


def test_claims_are_capped_and_a_refusal_lowers_the_estimate(harness):
    h = harness(worker_capacity_max=4)
    w = h.worker(capacity=65_536)
    a = h.agent(b"alice")
    sids = [os.urandom(16) for _ in range(6)]
    for sid in sids:
        a.send_multipart(open_msg(sid))
    placed = [m.session for m in worker_got(w)]
    assert placed == sids[:4]
    for sid in sids[:3]:
        frame(w, sid)
    # the worker is fuller than it said: BUSY on the 4th; the agent never sees it, the OPEN waits
    w.send_multipart(encode(msg(MsgType.ERROR, code="BUSY", detail="KV full", session=sids[3])))
    assert [m.type for m in agent_got(a)] == [MsgType.FRAME] * 3
    wait_for(lambda: h.broker.workers[b"W1"].estimate == 3)
    assert sids[3] in h.broker.queue
    done(w, sids[0])  # a slot frees (and the estimate grows back by one): the refused OPEN first
    assert [m.session for m in worker_got(w)] == [sids[3], sids[4]]
    assert h.broker.workers[b"W1"].estimate == 4


def test_sessions_go_to_the_worker_with_the_most_free_slots(harness):
    h = harness()
    big, small = h.worker(4, b"big"), h.worker(2, b"small")
    a = h.agent(b"alice")
    sids = [os.urandom(16) for _ in range(6)]
    for sid in sids:
        a.send_multipart(open_msg(sid))
    on_big, on_small = worker_got(big), worker_got(small)
    assert len(on_big) == 4 and len(on_small) == 2, (len(on_big), len(on_small))


def test_a_worker_that_answers_nothing_gets_few_sessions(harness):
    unanswered_max = 32
    h = harness(lease_s=120, worker_unanswered_max=unanswered_max)
    thief, honest = h.worker(4096, b"thief"), h.worker(64, b"honest")
    a = h.agent(b"alice")
    n = unanswered_max + 40
    for _ in range(n):
        a.send_multipart(open_msg(os.urandom(16)))
    served = []
    for _ in range(4):  # the honest worker answers what it gets; more comes its way
        got = [m for m in worker_got(honest, 1000) if m.type is MsgType.OPEN]
        for m in got:
            frame(honest, m.session)
        served += got
    stolen = [m for m in worker_got(thief) if m.type is MsgType.OPEN]
    assert len(stolen) == unanswered_max and len(served) == n - unanswered_max


def test_a_burst_of_opens_reaches_a_roomy_worker_in_one_round_trip(harness):
    """By default a worker is given up to 256 unanswered OPENs at once (a GPU step's worth),
    not 32: a burst of 200 from one key is placed before the worker answers any of them."""
    h = harness(lease_s=120, queue_per_key=1024, max_agent_sessions=1024)
    w = h.worker(1024)
    a = h.agent(b"alice")
    for _ in range(200):
        a.send_multipart(open_msg(os.urandom(16)))
    got = [m for m in worker_got(w) if m.type is MsgType.OPEN]
    assert len(got) == 200


def test_squatter_loses_slots_while_others_wait_but_not_when_nobody_does(harness):
    h = harness(lease_s=0.6)
    w = h.worker(capacity=2)
    squatter, polite = h.agent(b"squatter"), h.agent(b"polite")
    held = [os.urandom(16) for _ in range(2)]
    for sid in held:
        squatter.send_multipart(open_msg(sid))
    worker_got(w)
    for sid in held:
        frame(w, sid)  # one frame each; the squatter never ACKs (never reads)
    stop = threading.Event()

    def beats():  # …but beats, listing its sessions
        while not stop.is_set():
            squatter.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=held)))
            time.sleep(0.1)

    t = threading.Thread(target=beats, daemon=True)
    t.start()
    try:
        time.sleep(1.5)  # nobody waits: beats keep the sessions (a slow reader is not evicted)
        assert all(s in h.broker.routes for s in held)
        p = os.urandom(16)
        started = time.monotonic()
        polite.send_multipart(open_msg(p))
        got = worker_got(w, 3000)
        assert p in [m.session for m in got if m.type is MsgType.OPEN]
        assert time.monotonic() - started < 0.6 + 0.25 + 1.5  # within about one lease
        assert all(s not in h.broker.routes for s in held)
    finally:
        stop.set()
        t.join(2)
    codes = {(m.get("code"), m.session) for m in agent_got(squatter)}
    assert {("LEASE_EXPIRED", s) for s in held} <= codes


def test_answer_budget_per_key():
    from broker.budget import Budgets

    b = Budgets(rate=10.0, burst=40.0)
    assert sum(b.take(b"k", 0.0) for _ in range(100)) == 40  # the burst, then nothing
    assert b.take(b"other", 0.0)  # another key has its own bucket
    assert sum(b.take(b"k", 1.0) for _ in range(100)) == 10  # one second refills `rate`


def test_a_workers_batch_is_taken_message_by_message(harness):
    """Issue 15 part 2, broker side: the broker offers `batches` in its beats and a worker's BATCH
    (a step's FRAMEs for several sessions in one send) reaches each session's agent."""
    from routing.batch import encode_batch
    from routing.protocol import MAX_BATCH

    h = harness()
    w = h.socket(h.workers, b"W1")
    w.send_multipart(encode(msg(MsgType.READY, fingerprint=FP, capacity=4)))
    assert w.poll(5000)
    beat = decode(w.recv_multipart(), tensors=False)
    assert beat.type is MsgType.HEARTBEAT and beat["batches"] == MAX_BATCH
    a, b = h.agent(b"alice"), h.agent(b"bob")
    sa, sb = os.urandom(16), os.urandom(16)
    a.send_multipart(open_msg(sa))
    b.send_multipart(open_msg(sb))
    assert {m.session for m in worker_got(w)} == {sa, sb}
    import numpy as np

    frames = [encode(msg(MsgType.FRAME, [np.zeros(4, np.float16)], session=sid, pos=3, epoch=0, token=1))
              for sid in (sa, sb)]
    w.send_multipart(encode_batch(frames))
    assert [(m.type, m.session) for m in agent_got(a)] == [(MsgType.FRAME, sa)]
    assert [(m.type, m.session) for m in agent_got(b)] == [(MsgType.FRAME, sb)]


def test_one_ticks_frames_reach_their_agent_in_one_batch_in_order(harness):
    """Issue 15 part 2, broker → agent: the FRAMEs of one worker step for sessions of one agent
    connection go out as one BATCH; a DONE after them (not coalesced) still arrives after them."""
    import numpy as np

    from routing.batch import encode_batch

    h = harness()
    w = h.worker(8)
    a = h.agent(b"alice")
    sids = [os.urandom(16) for _ in range(3)]
    for sid in sids:
        a.send_multipart(open_msg(sid))
    assert {m.session for m in worker_got(w)} == set(sids)
    step = [encode(msg(MsgType.FRAME, [np.zeros(4, np.float16)], session=sid, pos=3, epoch=0, token=1))
            for sid in sids]
    w.send_multipart(encode_batch([*step, encode(msg(MsgType.DONE, session=sids[0], wasted=0))]))
    sends = []
    while a.poll(1000):
        frames = a.recv_multipart()
        m = decode(frames, tensors=False)
        if m.type is not MsgType.HEARTBEAT:
            sends.append([decode(p, tensors=False) for p in split_batch(m, frames)] if m.type is MsgType.BATCH
                         else [m])
    assert [[(m.type, m.session) for m in send] for send in sends] == [
        [(MsgType.FRAME, sid) for sid in sids], [(MsgType.DONE, sids[0])]]
