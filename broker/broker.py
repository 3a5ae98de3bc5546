"""`spa broker`: the only address agents and workers know (zguide Majordomo style).

`mediate()` is one loop that reads like the protocol: drain what agents sent (admit OPENs,
check ownership, route to the session's worker), drain what workers sent (registration,
heartbeats, frames back to the session's agent), then flush — one coalesced BATCH send per
worker per tick — and expire silent workers, whose sessions get WORKER_LOST.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import zmq

from monitoring import metrics
from routing.protocol import Message, ProtocolError, decode, encode, encode_batch, msg, peek

log = logging.getLogger("spa.broker")

HEARTBEAT_S = 0.5  # expected worker beat; sane range 0.1–5 s
LIVENESS = 4  # beats missed before a worker is dead; sane range 3–10
TICK_MS = 50  # idle poll timeout; sane range 5–500 ms
DRAIN_MAX = 1024  # messages read per socket per tick before flushing; sane range 64–8192
AGENT_TYPES = {"OPEN", "REQUEST", "CORRECT", "ACK", "TOKEN", "CLOSE"}
WORKER_TYPES = {"FRAME", "HIDDEN", "DONE", "ERROR"}
FORWARD_FAST = {"FRAME", "HIDDEN"}


@dataclass
class WorkerInfo:
    identity: bytes
    fingerprint: str
    capacity: int
    expiry: float
    sessions: set[bytes] = field(default_factory=set)


@dataclass
class Route:
    agent: bytes
    worker: bytes


@dataclass
class BrokerStats:
    forwarded: int = 0
    batches: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class Broker:
    def __init__(self, agents: str, workers: str) -> None:
        self.ctx = zmq.Context.instance()
        self.front = self._router(agents)
        self.back = self._router(workers)
        self.workers: dict[bytes, WorkerInfo] = {}
        self.routes: dict[bytes, Route] = {}
        self.outbox: dict[bytes, list[list]] = {}
        self.stats = BrokerStats()
        self._tally: dict[tuple[str, str], list[int]] = {}  # (type, direction) -> [messages, bytes]
        self.running = True

    def _router(self, addr: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.RCVHWM, 0)
        s.bind(addr)
        return s

    # ------------------------------------------------------------------ loop
    def mediate(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(TICK_MS))
            if self.back in events:
                self._drain(self.back, self.on_worker)
            if self.front in events:
                self._drain(self.front, self.on_agent)
            metrics.QUEUE_DEPTH.set(sum(map(len, self.outbox.values())))
            self.flush()
            self.expire_workers()
            self.publish()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        for _ in range(DRAIN_MAX):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            handler(frames[0], frames[1:])

    # ------------------------------------------------------------------ agents
    def _counted(self, type_: str, direction: str, frames: list) -> None:
        """Messages and bytes by type and direction: tallied in a dict on this hot path, handed
        to Prometheus once per tick by `publish`."""
        tally = self._tally.get((type_, direction))
        if tally is None:
            tally = self._tally[(type_, direction)] = [0, 0]
        tally[0] += 1
        tally[1] += len(frames[0]) + (len(frames[1]) if len(frames) > 1 else 0) + sum(
            map(len, frames[2:]))

    def publish(self) -> None:
        for (type_, direction), tally in self._tally.items():
            if tally[0]:
                metrics.MESSAGES.labels("broker", type_, direction).inc(tally[0])
                metrics.BYTES.labels("broker", type_, direction).inc(tally[1])
                tally[0] = tally[1] = 0
        metrics.LIVE_WORKERS.set(len(self.workers))
        metrics.ACTIVE_SESSIONS.labels("broker").set(len(self.routes))

    def on_agent(self, agent: bytes, frames: list) -> None:
        try:
            m = decode(frames, tensors=False)
            self._counted(m.type, "from_agent", frames)
            if m.type not in AGENT_TYPES:
                raise ProtocolError("BAD_MESSAGE", f"agents may not send {m.type}", m.session)
            if m.type == "OPEN":
                self.admit(agent, m)
                target = self.routes[m.session].worker
            else:
                route = self.routes.get(m.session)
                if route is None:
                    raise ProtocolError("UNKNOWN_SESSION", f"no session {m.session.hex()}", m.session)
                if route.agent != agent:
                    raise ProtocolError("NOT_OWNER", f"session {m.session.hex()} belongs to another agent",
                                        m.session)
                target = route.worker
                if m.type == "CLOSE":
                    self.drop_route(m.session)
            self.to_worker(target, frames)
        except ProtocolError as e:
            self.error_to_agent(agent, e.code, e.detail, e.session)

    def admit(self, agent: bytes, m: Message) -> None:
        sid = m.session
        if sid in self.routes:
            raise ProtocolError("DUPLICATE_SESSION", f"session {sid.hex()} is open already", sid)
        fitting = [w for w in self.workers.values() if w.fingerprint == m["fingerprint"]]
        if not fitting:
            raise ProtocolError("NO_WORKER", f"no live worker serves backbone {m['fingerprint'][:16]}…"
                                f" ({len(self.workers)} workers live)", sid)
        free = [w for w in fitting if len(w.sessions) < w.capacity]
        if not free:
            raise ProtocolError("BUSY", f"all {len(fitting)} workers are full", sid)
        w = min(free, key=lambda w: len(w.sessions))  # least loaded; sticky from now on
        w.sessions.add(sid)
        self.routes[sid] = Route(agent, w.identity)

    def drop_route(self, sid: bytes) -> None:
        route = self.routes.pop(sid, None)
        if route and route.worker in self.workers:
            self.workers[route.worker].sessions.discard(sid)

    # ------------------------------------------------------------------ workers
    def on_worker(self, wid: bytes, frames: list) -> None:
        """Workers are the operator's own processes: their FRAMEs and HIDDENs are forwarded on a
        header peek (the agent validates them in full); everything else is decoded here."""
        try:
            t, sid = peek(frames)
            self._counted(t, "from_worker", frames)
            if t in FORWARD_FAST and wid in self.workers:
                route = self.routes.get(sid)
                if route is not None:
                    self.to_agent(route.agent, frames, sid)
                    self.workers[wid].expiry = time.monotonic() + HEARTBEAT_S * LIVENESS
                else:  # the agent closed the session while the worker decoded ahead
                    self._count("LATE_FRAME")
                return
            m = decode(frames, tensors=False)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", wid.hex(), e)
            self._count(e.code)
            return
        w = self.workers.get(wid)
        if m.type == "READY":
            self.workers[wid] = WorkerInfo(wid, m["fingerprint"], max(1, m["capacity"]),
                                           time.monotonic() + HEARTBEAT_S * LIVENESS)
            log.info("worker %s ready (capacity %d)", wid.hex(), m["capacity"])
            return
        if w is None:
            log.warning("message from unregistered worker %s dropped: %s", wid.hex(), m.type)
            self._count("UNREGISTERED")
            return
        w.expiry = time.monotonic() + HEARTBEAT_S * LIVENESS
        if m.type == "HEARTBEAT":
            return
        if m.type not in WORKER_TYPES:
            log.warning("worker %s sent %s", wid.hex(), m.type)
            return
        route = self.routes.get(m.session) if m.session else None
        if m.type == "DONE":
            w.sessions.discard(m.session)
            if route is None:  # agent closed: the route is gone already
                return
        if route is None:
            if m.type == "ERROR":
                log.warning("worker error without session: %s %s", m["code"], m["detail"])
            return  # frames for a session the agent already closed
        if m.type == "ERROR":
            self.drop_route(m.session)  # the worker freed it
        self.to_agent(route.agent, frames, m.session)

    def expire_workers(self) -> None:
        now = time.monotonic()
        for wid, w in list(self.workers.items()):
            if w.expiry < now:
                log.warning("worker %s expired with %d sessions", wid.hex(), len(w.sessions))
                del self.workers[wid]
                self.outbox.pop(wid, None)
                for sid in list(w.sessions):
                    route = self.routes.pop(sid, None)
                    if route:
                        self.error_to_agent(route.agent, "WORKER_LOST",
                                            f"worker {wid.hex()} stopped answering", sid)

    # ------------------------------------------------------------------ sending
    def to_worker(self, wid: bytes, frames: list) -> None:
        self.outbox.setdefault(wid, []).append(frames)

    def flush(self) -> None:
        """One send per worker per tick (coalescing the messages of many sessions)."""
        for wid, msgs in self.outbox.items():
            if not msgs:
                continue
            payload = msgs[0] if len(msgs) == 1 else encode_batch(msgs)
            try:
                self.back.send_multipart([wid, *payload])
                self.stats.batches += 1
                self.stats.forwarded += len(msgs)
            except zmq.ZMQError as exc:  # EHOSTUNREACH: worker gone; expiry tells its agents
                log.warning("cannot reach worker %s: %s", wid.hex(), exc)
                self._count("WORKER_UNREACHABLE")
        self.outbox.clear()

    def to_agent(self, agent: bytes, frames: list, sid: bytes | None) -> None:
        try:
            self.front.send_multipart([agent, *frames])
            self.stats.forwarded += 1
        except zmq.ZMQError:
            self._agent_gone(agent)

    def error_to_agent(self, agent: bytes, code: str, detail: str, sid: bytes | None) -> None:
        self._count(code)
        fields = {"session": sid} if sid else {}
        try:
            self.front.send_multipart([agent, *encode(msg("ERROR", code=code, detail=detail, **fields))])
        except zmq.ZMQError:
            self._agent_gone(agent)

    def _agent_gone(self, agent: bytes) -> None:
        """A departed agent's sessions are freed on their workers at once."""
        for sid, route in list(self.routes.items()):
            if route.agent == agent:
                self.to_worker(route.worker, encode(msg("CLOSE", session=sid)))
                self.drop_route(sid)
        self._count("AGENT_GONE")

    def _count(self, code: str) -> None:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        metrics.ERRORS.labels("broker", code).inc()

    def close(self) -> None:
        self.running = False
        self.front.close(0)
        self.back.close(0)


def main(agents: str, workers: str, metrics_port: int = 0) -> None:
    metrics.serve(metrics_port)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s broker %(levelname)s %(message)s")
    b = Broker(agents, workers)
    print(f"broker: agents on {agents}, workers on {workers}", flush=True)
    try:
        b.mediate()
    except KeyboardInterrupt:
        pass
    finally:
        b.close()
