"""`spa worker`: the cloud worker loop. DEALER to the broker; READY, then heartbeats every
interval (busy or not); between scheduler steps it drains every pending message."""

from __future__ import annotations

import logging
import os
import time

import zmq

from cloud_worker.backbone import Backbone
from cloud_worker.scheduler import Scheduler
from monitoring import metrics
from routing.protocol import ProtocolError, decode, encode, msg, split_batch

log = logging.getLogger("spa.worker")
HEARTBEAT_S = 0.5  # sane range 0.1–5 s; the broker expires a worker after 4 missed beats


class Worker:
    def __init__(self, backbone: Backbone, broker: str, max_sessions: int = 64,
                 identity: bytes | None = None) -> None:
        self.scheduler = Scheduler(backbone, max_sessions)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, identity or b"W" + os.urandom(7))
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(broker)
        self.running = True
        self.next_beat = 0.0

    def send(self, m) -> None:
        frames = encode(m)
        metrics.count_message("worker", m.type, "out", sum(len(f) for f in frames))
        if m.type == "ERROR":
            metrics.ERRORS.labels("worker", m["code"]).inc()
        self.sock.send_multipart(frames, copy=False)

    def _beat(self) -> None:
        now = time.monotonic()
        if now >= self.next_beat:
            self.send(msg("HEARTBEAT", load=len(self.scheduler.sessions)))
            self.next_beat = now + HEARTBEAT_S

    def _on_frames(self, frames: list) -> None:
        try:
            m = decode(frames)
            parts = split_batch(m, frames) if m.type == "BATCH" else [frames]
        except ProtocolError as e:
            self.send(msg("ERROR", code=e.code, detail=e.detail, **({"session": e.session} if e.session else {})))
            return
        for part in parts:
            try:
                pm = m if m.type != "BATCH" else decode(part)
                metrics.count_message("worker", pm.type, "in", sum(len(f) for f in part))
                for answer in self.scheduler.handle(pm):
                    self.send(answer)
            except ProtocolError as e:
                extra = {"session": e.session} if e.session else {}
                self.send(msg("ERROR", code=e.code, detail=e.detail, **extra))
                if e.session and e.code not in ("UNKNOWN_SESSION", "DUPLICATE_SESSION", "BUSY"):
                    self.scheduler.close(e.session)  # a broken session is freed, not left stuck

    def run(self) -> None:
        sched = self.scheduler
        self.send(msg("READY", fingerprint=sched.backbone.fingerprint, capacity=sched.max_sessions))
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        while self.running:
            timeout = 0 if sched.has_work() else int(HEARTBEAT_S * 1000)
            if poller.poll(timeout):
                while True:  # drain everything pending before the next step
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_frames(frames)
            for m in sched.step():
                self.send(m)
            self._beat()

    def close(self) -> None:
        self.running = False
        self.sock.close(0)


def main(backbone: str, broker: str, device: str = "cpu", max_sessions: int = 64,
         dtype: str | None = None, threads: int = 0, metrics_port: int = 0) -> None:
    import torch

    # On a CPU the broker and agents share the cores: by default the worker takes half.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    bb = Backbone.load(backbone, device, dtype)
    w = Worker(bb, broker, max_sessions)
    metrics.serve(metrics_port)  # after the load: /metrics answering means ready (healthchecks)
    print(f"worker {w.sock.getsockopt(zmq.IDENTITY).hex()} ready: backbone "
          f"{bb.fingerprint[:12]}… on {device}, broker {broker}", flush=True)
    try:
        w.run()
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
