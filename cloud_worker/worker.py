"""`spa worker`: the cloud worker. Two threads, one job each.

* `Link` (I/O thread) owns the DEALER to the broker: it beats every `heartbeat_s` even while a
  long step runs, hears the broker's beats, and when the broker is silent, restarted (a new
  instance id) or says RECONNECT, it resets the compute side and registers again (READY) —
  Majordomo's heartbeating both ways.
* `Worker.run` (compute thread) applies the broker's messages to the scheduler and runs its steps.
  Every message is checked against the contract and the backbone's limits first; a bad message
  or a failure on one session ends that session with an ERROR, never the process.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import zmq

from cloud_worker.backbone import Backbone
from cloud_worker.config import WorkerConfig
from cloud_worker.scheduler import Scheduler
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode
from routing.protocol import (
    Message,
    MsgType,
    ProtocolError,
    decode,
    encode,
    error,
    msg,
    split_batch,
)

log = logging.getLogger("spa.worker")
FROM_BROKER = frozenset({MsgType.OPEN, MsgType.REQUEST, MsgType.CORRECT, MsgType.ACK, MsgType.TOKEN,
                         MsgType.CLOSE})
_RESET = b"RESET"  # link → compute: the broker forgot us, drop every session


class Link(threading.Thread):
    """The worker's connection to the broker (one thread owns every socket it touches)."""

    def __init__(self, ctx: zmq.Context, broker: str, ready: Message, cfg: WorkerConfig,
                 keys: security.ClientKeys | None, pipe_addr: str) -> None:
        super().__init__(daemon=True, name="spa-worker-link")
        self.ctx, self.broker, self.ready, self.cfg, self.keys = ctx, broker, ready, cfg, keys
        self.pipe = ctx.socket(zmq.PAIR)
        self.pipe.bind(pipe_addr)
        self.load = 0  # sessions held: the compute thread keeps it current
        self.registrations = 0
        self.running = True
        self.sock: zmq.Socket | None = None
        self.broker_id: bytes | None = None

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"W" + os.urandom(7))
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.cfg.link_hwm)
        s.setsockopt(zmq.RCVHWM, self.cfg.link_hwm)
        if self.keys is not None:
            security.connect_as(s, self.keys)
        s.connect(self.broker)
        self.sock = s

    def _register(self, why: str) -> None:
        """Reset the compute side (its sessions died with the broker's routes), then READY."""
        if self.registrations:
            log.warning("registering again with the broker: %s", why)
            self.pipe.send(_RESET)
        self.registrations += 1
        self.sock.send_multipart(encode(self.ready))

    def run(self) -> None:
        self._connect()
        self._register("start")
        period = self.cfg.heartbeat_s
        heard = next_beat = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.pipe, zmq.POLLIN)
        while self.running:
            poller.register(self.sock, zmq.POLLIN)
            events = dict(poller.poll(int(period * 1000 / 2)))
            if self.pipe in events:  # compute → broker
                for _ in range(10_000):
                    try:
                        self.sock.send_multipart(self.pipe.recv_multipart(zmq.NOBLOCK, copy=False), copy=False)
                    except zmq.Again:
                        break
            if self.sock in events:  # broker → compute (beats and RECONNECT stay here)
                for _ in range(10_000):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    heard = time.monotonic()
                    if self._control(frames):
                        continue
                    self.pipe.send_multipart(frames, copy=False)
            now = time.monotonic()
            if now - heard > period * self.cfg.liveness:  # the broker is dead: a new connection
                poller.unregister(self.sock)
                self._connect()
                self.broker_id = None
                self._register(f"no broker beat for {now - heard:.1f}s")
                heard = now
            if now >= next_beat:
                self.sock.send_multipart(encode(msg(MsgType.HEARTBEAT, load=min(self.load, 1 << 20))))
                next_beat = now + period
        self.sock.close(0)
        self.pipe.close(0)

    def _control(self, frames: list) -> bool:
        """Handle HEARTBEAT/RECONNECT from the broker; False for everything else."""
        try:
            m = decode(frames, tensors=False)
        except ProtocolError:
            return False  # the compute side answers it
        if m.type not in (MsgType.HEARTBEAT, MsgType.RECONNECT):
            return False
        instance = m.get("broker")
        if m.type is MsgType.RECONNECT:
            self.broker_id = instance
            self._register("the broker does not know us (it restarted, or expired us)")
        elif instance is not None and self.broker_id not in (None, instance):
            self.broker_id = instance
            self._register("the broker restarted")
        elif instance is not None:
            self.broker_id = instance
        return True


class Worker:
    def __init__(self, backbone: Backbone, broker: str, max_sessions: int | None = None,
                 keys: security.ClientKeys | None = None, engine: WorkerConfig | None = None) -> None:
        self.scheduler = Scheduler(backbone, max_sessions, config=engine)
        self.cfg = self.scheduler.config  # one WorkerConfig: engine and link
        self.ctx = zmq.Context.instance()
        addr = f"inproc://spa-worker-{os.urandom(4).hex()}"
        ready = msg(MsgType.READY, fingerprint=backbone.fingerprint, capacity=self.scheduler.max_sessions)
        self.link = Link(self.ctx, broker, ready, self.cfg, keys, addr)
        self.pipe = self.ctx.socket(zmq.PAIR)
        self.pipe.connect(addr)
        self.seen: dict[bytes, float] = {}  # session -> last message from its agent (idle lease)
        self.running = True

    def send(self, m: Message) -> None:
        frames = encode(m)
        metrics.count_message("worker", m.type, "out", sum(len(f) for f in frames))
        if m.type is MsgType.ERROR:
            metrics.ERRORS.labels("worker", m["code"]).inc()
        self.pipe.send_multipart(frames, copy=False)

    def _fail(self, sid: bytes | None, code: ErrorCode, detail: str) -> None:
        """Answer an ERROR; a session-ending one frees the session here too (the broker drops
        its route when it forwards the ERROR)."""
        self.send(error(code, detail, sid))
        if sid is not None and code.ends_session and sid in self.scheduler.sessions:
            self.scheduler.close(sid)
            self.seen.pop(sid, None)

    def on_frames(self, frames: list) -> None:
        if len(frames) == 1 and frames[0].bytes == _RESET:
            for sid in list(self.scheduler.sessions):
                self.scheduler.close(sid)
            self.seen.clear()
            return
        try:
            m = decode(frames)
            parts = split_batch(m, frames) if m.type is MsgType.BATCH else [frames]
        except ProtocolError as e:
            self._fail(e.session, e.code, e.detail)
            return
        for part in parts:
            sid = None
            try:
                pm = m if m.type is not MsgType.BATCH else decode(part)
                sid = pm.session
                metrics.count_message("worker", pm.type, "in", sum(len(memoryview(f)) for f in part))
                if pm.type not in FROM_BROKER:
                    raise ProtocolError(ErrorCode.FORBIDDEN, f"a worker does not take {pm.type.value}", sid)
                for answer in self.scheduler.handle(pm):
                    self.send(answer)
                if sid in self.scheduler.sessions:  # its agent is alive: the idle lease restarts
                    self.seen[sid] = time.monotonic()
                else:
                    self.seen.pop(sid, None)
            except ProtocolError as e:
                self._fail(e.session or sid, e.code, e.detail)
            except Exception as exc:  # a bug on one session must not end the worker
                log.exception("worker failed on a message of session %s", sid.hex() if sid else None)
                self._fail(sid, ErrorCode.INTERNAL, f"worker failed: {type(exc).__name__}: {exc}"[:500])

    def _step(self) -> None:
        try:
            out = self.scheduler.step()
        except Exception as exc:  # the batch failed: end its sessions (their agents replay)
            log.exception("step failed")
            for sid, s in list(self.scheduler.sessions.items()):
                if getattr(s, "runnable", True):
                    self._fail(sid, ErrorCode.INTERNAL, f"step failed: {type(exc).__name__}: {exc}"[:500])
            return
        for m in out:
            self.send(m)

    def _expire_idle(self) -> None:
        now, limit = time.monotonic(), self.cfg.session_idle_s
        for sid in [s for s, t in self.seen.items() if now - t > limit]:
            self._fail(sid, ErrorCode.LEASE_EXPIRED, f"no message for session {sid.hex()} in {limit}s")
            self.seen.pop(sid, None)

    def run(self) -> None:
        sched = self.scheduler
        self.link.start()
        poller = zmq.Poller()
        poller.register(self.pipe, zmq.POLLIN)
        next_check = 0.0
        while self.running:
            timeout = 0 if sched.has_work() else int(self.cfg.heartbeat_s * 1000)
            if poller.poll(timeout):
                while True:  # drain everything pending before the next step
                    try:
                        frames = self.pipe.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.on_frames(frames)
            if sched.has_work():
                self._step()
            now = time.monotonic()
            if now >= next_check:
                self._expire_idle()
                next_check = now + 1.0
            self.link.load = len(sched.sessions)
            metrics.ACTIVE_SESSIONS.labels("worker").set(len(sched.sessions))

    def close(self) -> None:
        self.running = False
        self.link.running = False
        self.link.join(timeout=2)
        self.pipe.close(0)


def main(backbone: str, broker: str, device: str = "cpu", max_sessions: int = 64,
         dtype: str | None = None, threads: int = 0, metrics_port: int = 0,
         keys: security.ClientKeys | None = None, metrics_addr: str = "127.0.0.1",
         engine: WorkerConfig | None = None) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    # On a CPU the broker and agents share the cores: by default the worker takes half.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    bb = Backbone.load(backbone, device, dtype)
    w = Worker(bb, broker, max_sessions, keys, engine=engine)
    metrics.serve(metrics_port, metrics_addr)  # after the load: /metrics answering means ready
    mode = "CURVE" if keys else "PLAINTEXT"
    print(f"worker ready: backbone {bb.fingerprint[:12]}… on {device}, broker {broker} ({mode})",
          flush=True)
    try:
        w.run()
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
