"""`spa worker`: the cloud worker. Two threads, one job each.

* `Link` (I/O thread) owns the DEALER to the broker: it beats every `heartbeat_s` even while a
  long step runs, hears the broker's beats, and when the broker is silent, restarted (a new
  instance id) or says RECONNECT, it resets the compute side and registers again (READY) —
  Majordomo's heartbeating both ways. Once per broker instance: the beats queued while a broker
  was down reach its successor together and each is answered RECONNECT; only the first of those
  answers registers (each READY drops the worker's sessions).
  It also serializes and sends what the compute side produced: the compute thread hands over
  each batch of Message objects (a step's FRAMEs, the answers to what it just read) with one
  wake-up, and does no encoding or socket work for them. When the broker's beats say it takes
  BATCHes (`HEARTBEAT.batches`), each hand-over leaves in one send; otherwise message by message.
* `Worker.run` (compute thread) applies the broker's messages to the scheduler and runs its steps.
  Every message is checked against the contract and the backbone's limits first; a bad message
  or a failure on one session ends that session with an ERROR, never the process.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque

import zmq

from cloud_worker.backbone import Backbone
from cloud_worker.config import WorkerConfig
from cloud_worker.scheduler import Scheduler
from monitoring import metrics
from routing import security
from routing.batch import coalesce, split_batch
from routing.errors import ErrorCode
from routing.protocol import Message, MsgType, ProtocolError, decode, encode, error, msg

log = logging.getLogger("spa.worker")
FROM_BROKER = frozenset({MsgType.OPEN, MsgType.REQUEST, MsgType.CORRECT, MsgType.ACK, MsgType.TOKEN,
                         MsgType.CLOSE})
_RESET = b"RESET"  # link → compute: the broker forgot us, drop every session
_POSTED = b""  # compute → link: messages wait in `Link.outbox`


class Link(threading.Thread):
    """The worker's connection to the broker (one thread owns every socket it touches)."""

    def __init__(self, ctx: zmq.Context, broker: str, ready: Message, cfg: WorkerConfig,
                 keys: security.ClientKeys | None, pipe_addr: str) -> None:
        super().__init__(daemon=True, name="spa-worker-link")
        self.ctx, self.broker, self.ready, self.cfg, self.keys = ctx, broker, ready, cfg, keys
        self.pipe = ctx.socket(zmq.PAIR)
        self.pipe.bind(pipe_addr)
        self.load = 0  # sessions held: the compute thread keeps it current
        self.outbox: deque[list[Message]] = deque()  # compute → link, encoded and sent here
        self.registrations = 0
        self.running = True
        self.sock: zmq.Socket | None = None
        self.registered_for: bytes | None = None  # the broker instance our latest READY went to
        self.registered_at = 0.0
        self.batches = 0  # messages per BATCH the broker takes from us (its beats say; 0: none)

    def _connect(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.batches = 0  # until the (maybe new) broker says otherwise
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.IDENTITY, b"W" + os.urandom(7))
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.cfg.link_hwm)
        s.setsockopt(zmq.RCVHWM, self.cfg.link_hwm)
        if self.keys is not None:
            security.connect_as(s, self.keys)
        s.connect(self.broker)
        self.sock = s

    def _register(self, why: str, instance: bytes | None = None) -> None:
        """Reset the compute side (its sessions died with the broker's routes), then READY."""
        if self.registrations:
            log.warning("registering again with the broker: %s", why)
            self.pipe.send(_RESET)
        self.registrations += 1
        self.registered_for, self.registered_at = instance, time.monotonic()
        self.sock.send_multipart(encode(self.ready))

    def _answered(self, instance: bytes | None) -> bool:
        """A RECONNECT from `instance` answers a message sent before our latest READY to it (or
        to the fresh connection, instance unknown then): that READY is its answer already.
        Past one liveness period it is news — the broker really forgot (expired) us."""
        recent = time.monotonic() - self.registered_at < self.cfg.heartbeat_s * self.cfg.liveness
        return recent and self.registered_for in (None, instance)

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
            if self.pipe in events:  # compute → broker: wake-ups; the messages wait in the outbox
                for _ in range(10_000):
                    try:
                        self.pipe.recv(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                self._send_posted()
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
                self._register(f"no broker beat for {now - heard:.1f}s")  # instance unknown yet
                heard = now
            if now >= next_beat:
                self.sock.send_multipart(encode(msg(MsgType.HEARTBEAT, load=min(self.load, 1 << 20))))
                next_beat = now + period
        self.sock.close(0)
        self.pipe.close(0)

    def post(self, messages: list[Message], pipe: zmq.Socket) -> None:
        """Compute thread: hand over `messages` for the broker, with one wake-up on its `pipe`."""
        self.outbox.append(messages)
        pipe.send(_POSTED, copy=False)

    def _send_posted(self) -> None:
        """Encode and send everything posted, in order (this thread owns the socket)."""
        while self.outbox:
            encoded = []
            for m in self.outbox.popleft():
                frames = encode(m)
                metrics.count_message("worker", m.type, "out", sum(len(f) for f in frames))
                if m.type is MsgType.ERROR:
                    metrics.ERRORS.labels("worker", m["code"]).inc()
                encoded.append(frames)
            if self.batches > 1:
                for frames, _, _ in coalesce(encoded, self.batches):
                    self.sock.send_multipart(frames, copy=False)
            else:
                for frames in encoded:
                    self.sock.send_multipart(frames, copy=False)

    def _control(self, frames: list) -> bool:
        """Handle HEARTBEAT/RECONNECT from the broker; False for everything else."""
        try:
            m = decode(frames, tensors=False)
        except ProtocolError:
            return False  # the compute side answers it
        if m.type not in (MsgType.HEARTBEAT, MsgType.RECONNECT):
            return False
        instance = m.get("broker")
        if m.type is MsgType.HEARTBEAT:
            self.batches = m.get("batches", 0)
        if m.type is MsgType.RECONNECT:
            if self._answered(instance):
                self.registered_for = instance
            else:
                self._register("the broker does not know us (it restarted, or expired us)", instance)
        elif instance is not None and self.registered_for is None:
            self.registered_for = instance  # the broker our READY on a fresh connection reached
        elif instance is not None and self.registered_for != instance:
            self._register("the broker restarted", instance)
        return True


class Worker:
    def __init__(self, backbone: Backbone, broker: str, keys: security.ClientKeys | None = None,
                 config: WorkerConfig | None = None) -> None:
        self.scheduler = Scheduler(backbone, config)
        self.cfg = self.scheduler.config  # one WorkerConfig: engine and link
        self.ctx = zmq.Context.instance()
        addr = f"inproc://spa-worker-{os.urandom(4).hex()}"
        ready = msg(MsgType.READY, fingerprint=backbone.fingerprint, capacity=self.scheduler.capacity)
        self.link = Link(self.ctx, broker, ready, self.cfg, keys, addr)
        self.pipe = self.ctx.socket(zmq.PAIR)
        self.pipe.connect(addr)
        self.pending: list[Message] = []  # for the broker, handed to the link by flush()
        self.running = True

    def send(self, m: Message) -> None:
        self.pending.append(m)

    def flush(self) -> None:
        """Hand everything pending to the link thread at once (it encodes and sends)."""
        if self.pending:
            self.link.post(self.pending, self.pipe)
            self.pending = []

    def _fail(self, sid: bytes | None, code: ErrorCode, detail: str) -> None:
        """Answer an ERROR; a session-ending one frees the session here too (the broker drops
        its route when it forwards the ERROR)."""
        self.send(error(code, detail, sid))
        if sid is not None and code.ends_session and sid in self.scheduler.sessions:
            self.scheduler.close(sid)

    def on_frames(self, frames: list) -> None:
        if len(frames) == 1 and frames[0].bytes == _RESET:
            for sid in list(self.scheduler.sessions):
                self.scheduler.close(sid)
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
        limit = self.cfg.session_idle_s
        for sid in self.scheduler.expired(limit, time.monotonic()):
            self._fail(sid, ErrorCode.LEASE_EXPIRED, f"no message for session {sid.hex()} in {limit}s")

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
                self.flush()  # answers (HIDDEN, ERROR, DONE) before the step
            if sched.has_work():
                self._step()
                self.flush()  # the step's FRAMEs
            now = time.monotonic()
            if now >= next_check:
                self._expire_idle()
                self.flush()
                next_check = now + 1.0
            self.link.load = len(sched.sessions)
            metrics.ACTIVE_SESSIONS.labels("worker").set(len(sched.sessions))

    def close(self) -> None:
        self.running = False
        self.link.running = False
        self.link.join(timeout=2)
        self.pipe.close(0)


def main(backbone: str, broker: str, device: str = "cpu", dtype: str | None = None, threads: int = 0,
         metrics_port: int = 0, keys: security.ClientKeys | None = None, metrics_addr: str = "127.0.0.1",
         config: WorkerConfig | None = None) -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
    # On a CPU the broker and agents share the cores: by default the worker takes half.
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))
    bb = Backbone.load(backbone, device, dtype)
    w = Worker(bb, broker, keys, config)
    # SIGTERM ends the loop after the step under way (a flag, as broker.main: a KeyboardInterrupt
    # raised inside a finaliser — a zmq Frame's — is dropped, and the process serves on)
    signal.signal(signal.SIGTERM, lambda *_: setattr(w, "running", False))
    metrics.serve(metrics_port, metrics_addr)  # after the load: /metrics answering means ready
    mode = "CURVE" if keys else "PLAINTEXT"
    print(f"worker ready: backbone {bb.fingerprint[:12]}… on {device}, capacity {w.scheduler.capacity} "
          f"sessions, broker {broker} ({mode})",
          flush=True)
    try:
        w.run()
    except KeyboardInterrupt:
        pass
    finally:
        w.close()
