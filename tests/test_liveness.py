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
    worker = Worker(backbone, workers, 4, engine=WorkerConfig(heartbeat_s=0.2, liveness=3))
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
        assert "WORKER_LOST" not in broker.errors and "UNREGISTERED" not in broker.errors
        # the broker forgets the worker (as after a restart): told RECONNECT, it registers again
        wid = next(iter(broker.workers))
        broker.workers.clear()
        deadline = time.monotonic() + 5
        while wid not in broker.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        assert wid in broker.workers and worker.link.registrations >= 2
        assert worker.scheduler.sessions == {}  # its sessions died with the broker's routes
    finally:
        worker.scheduler.step = real_step
        worker.running = broker.running = False
        wt.join(5)
        worker.close()
        bt.join(5)
        broker.close()
        agent.close(0)
