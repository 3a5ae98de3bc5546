"""The broker's side facing workers: registration (READY), beats both ways, expiry, and what
workers send back (forwarded to the session's agent on a header peek for FRAME/HIDDEN, decoded in
full otherwise). A placed OPEN the worker refuses BUSY waits again in the admission queue, the
worker's capacity estimate lowered (`placement.py`). Mixed into `Broker` (broker.py), whose state
it shares."""

from __future__ import annotations

import logging
import time

from broker.placement import WorkerInfo
from broker.route import Route
from routing import security
from routing.batch import split_batch
from routing.errors import ErrorCode
from routing.protocol import (
    MAX_BATCH,
    Message,
    MsgType,
    ProtocolError,
    Role,
    decode,
    encode,
    msg,
    peek,
)

log = logging.getLogger("spa.broker")
FORWARD_FAST = frozenset({MsgType.FRAME, MsgType.HIDDEN})  # worker → agent on a header peek


class WorkerSide:
    def on_worker(self, wid: bytes, key: bytes, frames: list) -> None:
        """Workers are authenticated (their own allow-list): their FRAMEs and HIDDENs are
        forwarded on a header peek (the agent validates them in full), only for sessions placed on
        that very worker; everything else is decoded here."""
        if self.allow is not None and not self.allow.allows(security.WORKERS, key):
            self._counted("REVOKED", "from_worker", frames)
            self._drop("revoked_worker")
            if wid in self.workers:
                self.unregister(wid, "its key was removed from the allow-list")
            return
        w = self.workers.get(wid)
        try:
            t, sid = peek(frames)
            if t is MsgType.BATCH:  # a step's messages in one send (we offered it in our beats)
                self._unbatch(wid, key, frames)
                return
            self._counted(t, "from_worker", frames)
            if t in FORWARD_FAST and w is not None:
                now = time.monotonic()
                w.expiry = now + self.cfg.heartbeat_s * self.cfg.liveness
                route = self.routes.get(sid)
                if route is not None and route.worker == wid:
                    route.progress = now
                    if route.opened is not None:
                        self._answered(w, route, sid)
                    if t is MsgType.HIDDEN:
                        route.hiddens += 1
                        route.requests = max(0, route.requests - 1)
                    else:
                        route.frames += 1
                    self.to_agent(route.agent, frames, sid)
                else:  # the agent closed the session while the worker decoded ahead
                    self._drop("late_frame")
                return
            m = decode(frames, tensors=False, sender=Role.WORKER)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", wid.hex(), e)
            self._count(e.code)
            return
        if m.type is MsgType.READY:
            self.register(wid, key, m)
            return
        if w is None:  # a worker we do not know (we restarted, or expired it): register again
            self._drop("unregistered_worker")
            self._send_worker(wid, encode(msg(MsgType.RECONNECT, broker=self.instance)))
            return
        w.expiry = time.monotonic() + self.cfg.heartbeat_s * self.cfg.liveness
        if m.type is MsgType.HEARTBEAT:
            return
        route = self.routes.get(m.session) if m.session else None
        if route is None or route.worker != wid:
            if m.type is MsgType.DONE and m.session in w.sessions:
                w.sessions.discard(m.session)
                w.finished()
            if m.type is MsgType.ERROR and m.session is None:
                log.warning("worker %s error: %s %s", wid.hex(), m["code"], m["detail"])
            return  # for a session the agent already closed
        code = ErrorCode.of(m["code"]) or ErrorCode.INTERNAL if m.type is MsgType.ERROR else None
        if code is ErrorCode.BUSY and route.opened is not None and self._requeue(w, route, m.session):
            return  # the worker was fuller than announced: the OPEN waits again, unseen by the agent
        self._answered(w, route, m.session)
        if m.type is MsgType.DONE or (code is not None and code.ends_session):
            self.drop_route(m.session)  # the worker freed it
        self._send_agent(route.agent, frames, m.session)

    def _unbatch(self, wid: bytes, key: bytes, frames: list) -> None:
        """Each message of a worker's BATCH handled as if sent alone (a BATCH inside is refused)."""
        m = decode(frames, tensors=False, sender=Role.WORKER)
        for part in split_batch(m, frames):
            if part and peek(part)[0] is MsgType.BATCH:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "a BATCH inside a BATCH")
            self.on_worker(wid, key, part)

    def _answered(self, w: WorkerInfo, route: Route, sid: bytes) -> None:
        route.progress = time.monotonic()
        if route.opened is not None:
            route.opened = None
            w.unanswered.discard(sid)

    def _requeue(self, w: WorkerInfo, route: Route, sid: bytes) -> bool:
        """A placed OPEN refused BUSY: lower the worker's estimate and queue the OPEN at the head
        of its key's line (twice at most; then the agent hears BUSY)."""
        waiting = route.opened
        w.refused()
        w.sessions.discard(sid)
        w.unanswered.discard(sid)
        self.drop_route(sid)
        waiting.refusals += 1
        if waiting.refusals > 2 or self.queue.full_for(waiting.owner, waiting.size) is not None:
            return False
        self.queue.push(waiting, front=True)
        return True

    def register(self, wid: bytes, key: bytes, m: Message) -> None:
        old = self.workers.pop(wid, None)
        if old is not None:  # a worker registers anew after losing us: its sessions are gone
            self._lose_sessions(old, "registered again (it lost the broker)")
        claimed = min(m["capacity"], self.cfg.worker_capacity_max)
        self.workers[wid] = WorkerInfo(wid, m["fingerprint"], claimed,
                                       time.monotonic() + self.cfg.heartbeat_s * self.cfg.liveness, key)
        self._send_worker(wid, encode(msg(MsgType.HEARTBEAT, broker=self.instance, batches=MAX_BATCH)))
        log.info("worker %s ready (capacity %d, announced %d)", wid.hex(), claimed, m["capacity"])

    def unregister(self, wid: bytes, why: str) -> None:
        w = self.workers.pop(wid, None)
        if w is not None:
            log.warning("worker %s unregistered with %d sessions: %s", wid.hex(), len(w.sessions), why)
            self.outbox.pop(wid, None)
            self._lose_sessions(w, why)

    def beat(self) -> None:
        for wid in list(self.workers):
            self._send_worker(wid, encode(msg(MsgType.HEARTBEAT, broker=self.instance, batches=MAX_BATCH)))

    def expire_workers(self, now: float) -> None:
        for wid, w in list(self.workers.items()):
            if w.expiry < now:
                self.unregister(wid, "stopped answering")

    def _lose_sessions(self, w: WorkerInfo, why: str) -> None:
        for sid in list(w.sessions):
            route = self.routes.get(sid)
            self.drop_route(sid)
            if route:
                self.error_to_agent(route.agent, route.owner, ErrorCode.WORKER_LOST,
                                    f"worker {w.identity.hex()} {why}", sid)
