"""Liveness both ways (Majordomo): a worker busy in a step far longer than the broker's expiry
keeps beating (its link thread), and a worker the broker does not know is told to register again."""

from __future__ import annotations

import os
import threading
import time

import zmq

from broker.broker import Broker, BrokerConfig
from cloud_worker.config import WorkerConfig
from cloud_worker.worker import Worker
from routing.protocol import MsgType, decode, encode, msg
from spa.stack import free_port


def test_worker_beats_through_a_long_step_and_registers_again(backbone):
    agents, workers = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = BrokerConfig(heartbeat_s=0.2, liveness=3)  # a silent worker is dead after 0.6 s
    broker = Broker(agents, workers, None, cfg)
    bt = threading.Thread(target=broker.mediate, daemon=True)
    bt.start()
    worker = Worker(backbone, workers, config=WorkerConfig(max_sessions=4, heartbeat_s=0.2, liveness=3))
    slow = {"steps": 0}
    real_step = worker.scheduler.step

    def long_step():  # one step of 3 s: five times the broker's expiry
        slow["steps"] += 1
        time.sleep(3.0)
        return real_step()

    worker.scheduler.step = long_step
    wt = threading.Thread(target=worker.run, daemon=True)
    wt.start()
    agent = zmq.Context.instance().socket(zmq.DEALER)
    agent.setsockopt(zmq.LINGER, 0)
    agent.connect(agents)
    try:
        deadline = time.monotonic() + 10
        while not broker.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(broker.workers) == 1
        sid = os.urandom(16)
        agent.send_multipart(encode(msg(MsgType.OPEN, session=sid, prompt=backbone.encode("hello"),
                                        max_new_tokens=2, mode="base", window=1, sampling={},
                                        fingerprint=backbone.fingerprint, wire_layers=[], eos=None)))
        assert agent.poll(10_000), "no frame after the long step"
        m = decode(agent.recv_multipart())
        assert m.type is MsgType.FRAME and m.session == sid, m.fields
        assert slow["steps"] >= 1 and len(broker.workers) == 1
        assert "WORKER_LOST" not in broker.errors and "unregistered_worker" not in broker.dropped
        # the broker forgets the worker (as after a restart): told RECONNECT, it registers again
        wid = next(iter(broker.workers))
        broker.workers.clear()
        deadline = time.monotonic() + 5
        while wid not in broker.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wid in broker.workers and worker.link.registrations >= 2
        deadline = time.monotonic() + 10  # the compute thread resets after its current step
        while worker.scheduler.sessions and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.scheduler.sessions == {}  # its sessions died with the broker's routes
    finally:
        worker.scheduler.step = real_step
        worker.running = broker.running = False
        wt.join(5)
        worker.close()
        bt.join(5)
        broker.close()
        agent.close(0)


# ------------------------------------------------------------------ connection liveness (issue 20)
class BlackHole:
    """A TCP proxy 127.0.0.1:port → target in threads. `swallow()`: every current connection stays
    open and every byte is dropped (a phone changing networks, an expired NAT mapping); new
    connections still pass."""

    def __init__(self, target: int) -> None:
        import socket

        self.target, self.conns, self.lock = target, [], threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                down, _ = self.srv.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            c = {"dead": False, "socks": (down, up)}
            with self.lock:
                self.conns.append(c)
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b, c), daemon=True).start()

    @staticmethod
    def _pump(a, b, c) -> None:
        try:
            while data := a.recv(1 << 16):
                if not c["dead"]:
                    b.sendall(data)
        except OSError:
            pass

    def swallow(self) -> None:
        with self.lock:
            for c in self.conns:
                c["dead"] = True

    def close(self) -> None:
        self.srv.close()
        for c in self.conns:
            for s in c["socks"]:
                s.close()


def _disconnected(monitor: zmq.Socket, timeout_s: float) -> float | None:
    """Seconds until the monitor reports a disconnect, or None."""
    from zmq.utils.monitor import recv_monitor_message

    start = time.monotonic()
    while (left := timeout_s - (time.monotonic() - start)) > 0:
        if monitor.poll(int(left * 1000)) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
            return time.monotonic() - start
    return None


def test_a_dead_path_is_noticed_by_both_ends_within_seconds_and_the_socket_recovers(tmp_path):
    from routing import security

    security.create_keys(tmp_path, ["alice"], ["w0"])
    agents, workers = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    cfg = BrokerConfig(zmq_heartbeat_s=0.5, zmq_timeout_s=2.0)
    broker = Broker(agents, workers, security.ServerKeys.from_dir(tmp_path), cfg)
    broker_mon = broker.front.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    bt = threading.Thread(target=broker.mediate, daemon=True)
    bt.start()
    hole = BlackHole(int(agents.rsplit(":", 1)[1]))
    client = zmq.Context.instance().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    security.connect_as(client, security.ClientKeys.from_dir(tmp_path, "agent", "alice"))
    client_mon = client.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    client.connect(f"tcp://127.0.0.1:{hole.port}")

    def beat(timeout_ms: int) -> bool:
        client.send_multipart(encode(msg(MsgType.HEARTBEAT, sessions=[])), zmq.NOBLOCK)
        return client.poll(timeout_ms) and decode(client.recv_multipart()).type is MsgType.HEARTBEAT

    try:
        assert beat(10_000), "no answer through the proxy"
        hole.swallow()  # every byte of the current connection is dropped from now on
        broker_saw = _disconnected(broker_mon, cfg.zmq_timeout_s + 3)
        client_saw = _disconnected(client_mon, security.CLIENT_TIMEOUT_S + 3)
        print(f"dead path noticed: broker {broker_saw}s, client {client_saw}s")
        assert broker_saw is not None and client_saw is not None, (broker_saw, client_saw)
        # ZeroMQ reconnects the same socket on a new TCP connection; the broker let go of the old
        # one first, so the same routing id is served again
        deadline = time.monotonic() + 10
        while not beat(500):
            assert time.monotonic() < deadline, "the socket did not come back"
    finally:
        broker.running = False
        bt.join(5)
        for s in (client, client_mon, broker_mon):
            s.close(0)
        broker.close()
        hole.close()
