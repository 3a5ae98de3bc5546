"""Broker overhead: messages/s of FRAME-sized messages through `spa broker` vs through a bare
pyzmq forwarding hop, same run, same messages (worker → agent, the hot direction).

    .venv/bin/python benchmarks/broker_overhead.py [--messages 50000] [--d 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import zmq
from common import ROOT, median

from routing.protocol import MsgType, decode, encode, msg, peek
from spa.stack import free_port


def dealer(addr: str, identity: bytes | None = None, keys=None) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    if keys is not None:
        from routing.security import connect_as

        connect_as(s, keys)
    if identity:
        s.setsockopt(zmq.IDENTITY, identity)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.SNDHWM, 0)
    s.setsockopt(zmq.RCVHWM, 0)
    s.connect(addr)
    return s


def measure(front: str, back: str, n: int, d: int, via_broker: bool, keys=None) -> float:
    from routing.security import ClientKeys

    sid = os.urandom(16)
    worker = dealer(back, b"W-bench", keys and ClientKeys.from_dir(keys, "worker"))
    agent = dealer(front, None, keys and ClientKeys.from_dir(keys, "agent"))
    if via_broker:
        worker.send_multipart(encode(msg("READY", fingerprint="bench", capacity=8)))
        time.sleep(0.3)
        agent.send_multipart(encode(msg("OPEN", session=sid, prompt=[1], max_new_tokens=1, mode="base",
                                        window=1, sampling={}, fingerprint="bench", wire_layers=[],
                                        eos=None)))
        got = None
        while got is None or got.type == "HEARTBEAT":  # the broker beats to its workers
            assert worker.poll(5000)
            got = decode(worker.recv_multipart())
        assert got.type == "OPEN", got
    else:
        agent.send_multipart([b"hello"])
        time.sleep(0.3)
    z = np.zeros(d, dtype=np.float16)
    frames = [bytes(f) for f in encode(msg("FRAME", [z], session=sid, pos=1, epoch=0, token=1))]

    def blast() -> None:
        for _ in range(n):
            worker.send_multipart(frames, copy=False)

    t = threading.Thread(target=blast)
    t0 = time.perf_counter()
    t.start()
    got = first = 0  # FRAMEs received: the broker coalesces a tick's FRAMEs for a connection into a BATCH
    while got < n:
        parts = agent.recv_multipart()
        head, _ = peek(parts)
        got += len(decode(parts, tensors=False)["counts"]) if head is MsgType.BATCH else 1
        if not first:  # the clock starts at the first arrival
            first, t0 = got, time.perf_counter()
    rate = (n - first) / max(time.perf_counter() - t0, 1e-9)
    t.join()
    worker.close(0)
    agent.close(0)
    return rate


def start(args: list[str], port: int) -> subprocess.Popen:
    """Start a hop and wait until it listens on `port` (`spa` may take long to import)."""
    import socket

    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            time.sleep(0.3)
            return p
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{args[:3]} did not listen on {port} within 180 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=50000)
    ap.add_argument("--d", type=int, default=128, help="width of z in each FRAME")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--curve", action="store_true", help="the broker with CURVE (the bare hop stays plaintext)")
    ap.add_argument("--smoke", action="store_true", help="seconds: 500 messages, one repeat (for the tests)")
    a = ap.parse_args()
    if a.smoke:
        a.messages, a.repeats = 500, 1
    keys = None
    if a.curve:
        import tempfile

        from routing.security import create_keys

        keys = tempfile.mkdtemp(prefix="spa-bench-keys-")
        create_keys(keys, ["agent"], ["worker"])
    ours, bare = [], []
    for _ in range(a.repeats):  # interleaved
        for kind in ("broker", "bare"):
            f, b = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            # plaintext like the bare hop; a high-water mark above the 50k unacknowledged frames
            # this blast queues (real agents have at most window × sessions in flight)
            security = ["--keys", keys] if keys else ["--plaintext"]
            cmd = (["-m", "spa", "broker", "--agents", f, "--workers", b, *security,
                    "--hwm", "1000000"] if kind == "broker"
                   else [str(ROOT / "benchmarks" / "bare_hop.py"), f, b])
            p = start(cmd, int(f.rsplit(':', 1)[1]))
            try:
                (ours if kind == "broker" else bare).append(
                    measure(f, b, a.messages, a.d, kind == "broker", keys if kind == "broker" else None))
            finally:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    size = sum(len(bytes(x)) for x in encode(msg("FRAME", [np.zeros(a.d, np.float16)], session=b"0" * 16,
                                                      pos=1, epoch=0, token=1)))
    print(f"{a.messages} FRAME messages of {size} bytes, worker → agent, {a.repeats} repeats")
    print(f"spa broker ({'CURVE' if keys else 'plaintext'}): median {median(ours):9.0f} msg/s  {[round(x) for x in ours]}")
    print(f"bare hop:   median {median(bare):9.0f} msg/s  {[round(x) for x in bare]}")
    print(f"ratio: {median(ours) / median(bare):.2f}x")


if __name__ == "__main__":
    main()
