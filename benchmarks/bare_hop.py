"""The baseline for broker overhead: a bare pyzmq forwarding hop (ROUTER ↔ ROUTER, no
decoding, no validation): worker messages go to the one agent that said hello."""

from __future__ import annotations

import sys

import zmq


def main(front_addr: str, back_addr: str) -> None:
    ctx = zmq.Context.instance()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.ROUTER)
    for s, a in ((front, front_addr), (back, back_addr)):
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.bind(a)
    agent = front.recv_multipart()[0]  # hello
    poller = zmq.Poller()
    poller.register(back, zmq.POLLIN)
    while True:
        poller.poll()
        for _ in range(1024):
            try:
                frames = back.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            front.send_multipart([agent, *frames[1:]])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
