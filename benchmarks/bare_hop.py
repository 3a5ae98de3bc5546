"""The baseline for broker overhead: a bare pyzmq forwarding hop (ROUTER ↔ ROUTER, no
decoding, no validation): worker messages go to the one agent that said hello.

    python benchmarks/bare_hop.py FRONT_ADDR BACK_ADDR   # the hop (benchmarks/broker_overhead.py)
    python benchmarks/bare_hop.py --smoke                # a few messages through it, timed
"""

from __future__ import annotations

import sys
import threading
import time

import zmq


def main(front_addr: str, back_addr: str, stop: threading.Event | None = None) -> None:
    ctx = zmq.Context.instance()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for s, a in ((front, front_addr), (back, back_addr)):
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.bind(a)
    agent = front.recv_multipart()[0]  # hello
    poller = zmq.Poller()
    poller.register(back, zmq.POLLIN)
    while stop is None or not stop.is_set():
        if not poller.poll(100):
            continue
        for _ in range(1024):
            try:
                frames = back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            front.send_multipart([agent, *frames[1:]])
    front.close(0)
    back.close(0)


def smoke(n: int = 2000) -> None:
    """The hop in a thread; a worker DEALER sends `n` messages, the agent DEALER receives them."""
    front, back, stop = "inproc://bare-hop-front", "inproc://bare-hop-back", threading.Event()
    hop = threading.Thread(target=main, args=(front, back, stop), daemon=True)
    hop.start()
    ctx = zmq.Context.instance()
    agent, worker = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for s in (agent, worker):
        s.setsockopt(zmq.LINGER, 0)
    time.sleep(0.2)  # inproc: the hop binds first
    agent.connect(front)
    worker.connect(back)
    agent.send(b"hello")
    time.sleep(0.2)
    t = time.perf_counter()
    for i in range(n):
        worker.send_multipart([b"FRAME", i.to_bytes(4, "little")])
    got = 0
    while got < n and agent.poll(5000):
        agent.recv_multipart()
        got += 1
    dt = time.perf_counter() - t
    stop.set()
    hop.join(timeout=2)
    agent.close(0)
    worker.close(0)
    if got != n:
        raise SystemExit(f"bare hop: {got}/{n} messages through")
    print(f"bare hop (inproc, one process): {n} messages in {dt * 1e3:.0f} ms, {n / dt:,.0f} msg/s")


if __name__ == "__main__":
    if sys.argv[1:] == ["--smoke"]:
        smoke()
    else:
        main(sys.argv[1], sys.argv[2])
