"""Allow-lists reloaded while the broker runs (issue 20 item 5): a removed agent key is refused at
once on the connection it already has and its sessions end with REVOKED (the worker is told to
CLOSE them); a removed worker is unregistered and its sessions are lost to their agents
(WORKER_LOST: they replay elsewhere). Another key is not touched. CURVE on 127.0.0.1."""

from __future__ import annotations

import os
import threading
import time

import pytest
import zmq
from inbox import received

from broker.broker import Broker
from broker.config import BrokerConfig
from routing import security
from routing.protocol import MsgType, decode, encode, msg
from spa.stack import free_port

FP = "fp-test"


@pytest.fixture
def live(tmp_path):
    security.create_keys(tmp_path, ["alice", "bob"], ["w0"])
    agents, workers = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    broker = Broker(agents, workers, security.ServerKeys.from_dir(tmp_path),
                    BrokerConfig(heartbeat_s=1.0, liveness=100, lease_s=300, tick_ms=5, reload_s=0.2))
    t = threading.Thread(target=broker.mediate, daemon=True)
    t.start()
    socks: list[zmq.Socket] = []

    def connect(role: str, name: str) -> zmq.Socket:
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        security.connect_as(s, security.ClientKeys.from_dir(tmp_path, role, name))
        s.connect(workers if role == "worker" else agents)
        socks.append(s)
        return s

    yield broker, connect, tmp_path
    broker.running = False
    t.join(5)
    broker.close()
    for s in socks:
        s.close(0)


def messages(sock: zmq.Socket, timeout_ms: int = 1500) -> list:
    return received(sock, timeout_ms, 300)


def open_session(agent: zmq.Socket) -> bytes:
    sid = os.urandom(16)
    agent.send_multipart(encode(msg(MsgType.OPEN, session=sid, prompt=[1, 2], max_new_tokens=4, mode="base",
                                    window=1, sampling={}, fingerprint=FP, wire_layers=[], eos=None)))
    return sid


def test_removed_keys_are_refused_and_their_sessions_end(live):
    broker, connect, keys = live
    worker = connect("worker", "w0")
    worker.send_multipart(encode(msg(MsgType.READY, fingerprint=FP, capacity=8)))
    deadline = time.monotonic() + 10
    while not broker.workers:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    alice, bob = connect("agent", "alice"), connect("agent", "bob")
    a, b = open_session(alice), open_session(bob)
    assert {m.session for m in messages(worker) if m.type is MsgType.OPEN} == {a, b}

    (keys / "agents" / "alice.key").unlink()  # revoke alice while her session runs
    got = messages(alice, 3000)
    assert [(m.type, m["code"], m.session) for m in got] == [(MsgType.ERROR, "REVOKED", a)]
    assert "removed from the broker's allow-list" in got[0]["detail"]
    assert [(m.type, m.session) for m in messages(worker)] == [(MsgType.CLOSE, a)]
    alice.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=[])))  # her open connection
    assert [m["code"] for m in messages(alice)] == ["REVOKED"]
    assert a not in broker.routes and b in broker.routes  # bob untouched

    (keys / "workers" / "w0.key").unlink()  # revoke the worker: unregistered, bob's session lost
    got = messages(bob, 3000)
    assert [(m["code"], m.session) for m in got] == [("WORKER_LOST", b)]
    assert broker.workers == {} and broker.routes == {}
    worker.send_multipart(encode(msg(MsgType.READY, fingerprint=FP, capacity=8)))  # cannot come back
    time.sleep(0.5)
    assert broker.workers == {}


def test_sighup_reloads_when_polling_is_off(live):
    broker, connect, keys = live
    broker.cfg = broker.cfg.replace(reload_s=0.0)
    bob = connect("agent", "bob")
    bob.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=[])))
    assert bob.poll(3000) and decode(bob.recv_multipart()).type is MsgType.HEARTBEAT
    (keys / "agents" / "bob.key").unlink()
    time.sleep(0.5)
    bob.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=[])))
    assert bob.poll(3000) and decode(bob.recv_multipart()).type is MsgType.HEARTBEAT  # not re-read yet
    broker.reload_now.set()  # what `spa broker`'s SIGHUP handler does
    time.sleep(0.3)
    bob.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=[])))
    assert [m["code"] for m in messages(bob)] == ["REVOKED"]
