"""Memory bounded per key whatever the number of connections (issue 20 item 3).

A real `spa broker` process (CURVE) and a stand-in worker in this process that answers every OPEN
with a FRAME and every REQUEST with a SmolLM2-sized HIDDEN (30 layers × 576 float16 = 34.6 KB).
One key opens CONNECTIONS connections, a session on each, and floods REQUESTs without ever
reading. Before the fix one connection doing this took the broker from 44 to 378 MB and four of
them to 1,719 MB; now a session's HIDDENs stay within its FRAMEs plus `max_requests_in_flight`,
the key's ERROR answers within its budget, and the broker's RSS within a stated bound.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from routing import security
from routing.batch import split_batch
from routing.protocol import MsgType, decode, encode, msg
from spa.stack import free_port

FP = "fp-mem"
HIDDEN = np.zeros((30, 576), np.float16)  # SmolLM2-135M: 30 layers, d=576
CONNECTIONS, REQUESTS = 16, 2000
BOUND_MB = 64.0  # broker RSS growth allowed, stated in RESULTS.md


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class StandInWorker(threading.Thread):
    def __init__(self, keys, addr: str) -> None:
        super().__init__(daemon=True)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        security.connect_as(self.sock, security.ClientKeys.from_dir(keys, "worker", "w0"))
        self.sock.connect(addr)
        self.running, self.hiddens = True, 0

    def run(self) -> None:
        s = self.sock
        s.send_multipart(encode(msg(MsgType.READY, fingerprint=FP, capacity=256)))
        next_beat = 0.0
        while self.running:
            if time.monotonic() > next_beat:
                s.send_multipart(encode(msg(MsgType.HEARTBEAT, load=0)))
                next_beat = time.monotonic() + 0.3
            if not s.poll(50):
                continue
            frames = s.recv_multipart()
            m = decode(frames, tensors=False)
            for part in split_batch(m, frames) if m.type is MsgType.BATCH else [frames]:
                m = decode(part, tensors=False)
                if m.type is MsgType.OPEN:
                    s.send_multipart(encode(msg(MsgType.FRAME, [np.zeros(576, np.float16)], session=m.session,
                                                pos=len(m["prompt"]), epoch=0, token=1)))
                elif m.type is MsgType.REQUEST:
                    s.send_multipart(encode(msg(MsgType.HIDDEN, [HIDDEN], session=m.session, pos=m["pos"],
                                                epoch=0)))
                    self.hiddens += 1


@pytest.fixture
def stack(tmp_path):
    security.create_keys(tmp_path, ["mallory", "probe"], ["w0"])
    agents, workers = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    proc = subprocess.Popen([sys.executable, "-m", "spa", "broker", "--agents", agents, "--workers", workers,
                             "--keys", str(tmp_path), "--lease-s", "60"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = StandInWorker(tmp_path, workers)
    worker.start()
    yield proc, tmp_path, agents, worker
    worker.running = False
    worker.join(5)
    worker.sock.close(0)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        raise AssertionError("the broker did not stop on SIGTERM within 30 s") from None


def client(keys, addr: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 10)  # a device that reads nothing: what it is sent backs up
    security.connect_as(s, security.ClientKeys.from_dir(keys, "agent", "mallory"))
    s.connect(addr)
    return s


def test_one_key_on_many_connections_flooding_requests_stays_bounded(stack):
    proc, keys, addr, worker = stack
    probe = zmq.Context.instance().socket(zmq.DEALER)
    probe.setsockopt(zmq.LINGER, 0)
    security.connect_as(probe, security.ClientKeys.from_dir(keys, "agent", "probe"))
    probe.connect(addr)
    deadline = time.monotonic() + 180  # `spa` may take long to import on a loaded machine
    while True:  # ready when the broker answers an OPEN with a FRAME (the worker registered)
        probe.send_multipart(encode(msg(MsgType.OPEN, session=os.urandom(16), prompt=[1], max_new_tokens=2,
                                        mode="base", window=1, sampling={}, fingerprint=FP,
                                        wire_layers=[], eos=None)))
        if probe.poll(1000) and decode(probe.recv_multipart()).type is MsgType.FRAME:
            break
        assert time.monotonic() < deadline, "the stand-in worker never registered"
    time.sleep(0.5)
    base = rss_mb(proc.pid)
    socks, peak = [], base
    try:
        for _ in range(CONNECTIONS):
            s = client(keys, addr)
            socks.append(s)
            sid = os.urandom(16)
            s.send_multipart(encode(msg(MsgType.OPEN, session=sid, prompt=[1, 2, 3], max_new_tokens=64,
                                        mode="spa", window=4, sampling={}, fingerprint=FP,
                                        wire_layers=list(range(30)), eos=None)))
            time.sleep(0.05)
            for _ in range(REQUESTS):
                s.send_multipart(encode(msg(MsgType.REQUEST, session=sid, pos=3, epoch=0)))
            peak = max(peak, rss_mb(proc.pid))
        for _ in range(20):
            time.sleep(0.25)
            peak = max(peak, rss_mb(proc.pid))
        print(f"broker RSS MB: baseline {base:.0f}, peak {peak:.0f}; HIDDENs the worker made: "
              f"{worker.hiddens} for {CONNECTIONS * REQUESTS} REQUESTs on {CONNECTIONS} connections")
        assert proc.poll() is None
        assert peak - base < BOUND_MB, (base, peak)
        # each session got at most its frames (1) + max_requests_in_flight (8) HIDDENs
        assert worker.hiddens <= CONNECTIONS * (1 + 8)
    finally:
        for s in socks:
            s.close(0)
        probe.close(0)
