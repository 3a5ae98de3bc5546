"""`spa broker`: the only address agents and workers know (zguide Majordomo style).

`mediate()` is one loop that reads like the protocol: drain what workers sent (registration,
heartbeats, frames back to the session's agent), drain what agents sent (heartbeats, OPENs
admitted and placed, session messages checked for ownership and routed), then flush — one
coalesced BATCH send per worker per tick — and, once per heartbeat, beat to every worker, expire
silent workers (their sessions get WORKER_LOST) and expired leases (LEASE_EXPIRED).

Every agent is untrusted: each message is validated in full against the contract
(`routing.protocol`) and answered with an ERROR naming what was wrong; queues are bounded and
overload is answered BUSY. A session belongs to the key that opened it (CURVE `User-Id`; the
routing id on a plaintext broker), so a reconnect keeps it and a stranger cannot touch it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import zmq

from monitoring import metrics
from routing import security
from routing.errors import ErrorCode, InputError
from routing.protocol import (
    MAX_BATCH,
    Message,
    MsgType,
    ProtocolError,
    Role,
    decode,
    encode,
    encode_batch,
    error,
    msg,
    peek,
)

log = logging.getLogger("spa.broker")
FORWARD_FAST = frozenset({MsgType.FRAME, MsgType.HIDDEN})  # worker → agent on a header peek


@dataclass
class BrokerConfig:
    """Every tunable of the broker, with its sane range."""

    heartbeat_s: float = 0.5  # beat to workers; sane range 0.1–5 s
    liveness: int = 4  # beats a worker may miss before it is dead; sane range 3–10
    lease_s: float = 10.0  # a session whose agent is silent this long is freed; sane range 2–120 s
    max_agent_sessions: int = 256  # open sessions per agent key; sane range 1–1024
    outbox_max: int = 20_000  # messages queued for one worker per tick; sane range 1k–100k
    hwm: int = 10_000  # ZeroMQ high-water marks (messages per peer); sane range 1k–100k
    tick_ms: int = 50  # idle poll timeout; sane range 5–500 ms
    drain_max: int = 1024  # messages read per socket per tick before flushing; sane range 64–8192

    def __post_init__(self) -> None:
        checks = {"heartbeat_s": 0.01 <= self.heartbeat_s <= 60, "liveness": 2 <= self.liveness <= 100,
                  "lease_s": 0.1 <= self.lease_s <= 3600, "max_agent_sessions": 1 <= self.max_agent_sessions <= 1024,
                  "outbox_max": 1 <= self.outbox_max <= 1_000_000, "hwm": 100 <= self.hwm <= 1_000_000,
                  "tick_ms": 1 <= self.tick_ms <= 1000, "drain_max": 1 <= self.drain_max <= 100_000}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise InputError(f"broker setting out of range: {', '.join(f'{k}={getattr(self, k)}' for k in bad)}")


@dataclass
class WorkerInfo:
    identity: bytes
    fingerprint: str
    capacity: int
    expiry: float
    sessions: set[bytes] = field(default_factory=set)


@dataclass
class Route:
    owner: bytes  # the authenticated key (or plaintext routing id) that opened the session
    agent: bytes  # routing id to answer on (moves when the owner reconnects)
    worker: bytes
    expiry: float  # lease: renewed by the owner's traffic for this session and its heartbeats


class Broker:
    def __init__(self, agents: str, workers: str, keys: security.ServerKeys | None = None,
                 config: BrokerConfig | None = None) -> None:
        """keys=None: plaintext (anyone who reaches the ports gets in: local demos and tests)."""
        self.cfg = config or BrokerConfig()
        self.ctx = zmq.Context.instance()
        self.auth = security.start_authenticator(self.ctx, keys) if keys else None
        self.secure = keys is not None
        security.seed_routing_ids()  # generated routing ids unpredictable (issue 20: libzmq abort)
        self.front = self._router(agents, keys, security.AGENTS)
        self.back = self._router(workers, keys, security.WORKERS)
        self.instance = os.urandom(8)  # new on every start: peers see a restart in our beats
        self.workers: dict[bytes, WorkerInfo] = {}
        self.routes: dict[bytes, Route] = {}
        self.owned: dict[bytes, set[bytes]] = {}  # owner -> its sessions (per-agent limit)
        self.outbox: dict[bytes, list[list]] = {}
        self.errors: dict[str, int] = {}
        self._tally: dict[tuple[str, str], list[int]] = {}  # (type, direction) -> [messages, bytes]
        self.next_beat = 0.0
        self.running = True

    def _router(self, addr: str, keys, domain: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.cfg.hwm)  # bounded: a peer that does not read gets no more
        s.setsockopt(zmq.RCVHWM, self.cfg.hwm)  # bounded: a flooding peer is throttled by TCP
        s.setsockopt(zmq.MAXMSGSIZE, 80 << 20)  # a message larger than any valid one is cut off
        if keys is not None:
            security.serve(s, keys, domain)
        elif domain == security.AGENTS:
            s.setsockopt(zmq.ROUTER_HANDOVER, 1)  # plaintext: an agent's reconnect keeps its id
        s.bind(addr)
        return s

    # ------------------------------------------------------------------ loop
    def mediate(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(self.cfg.tick_ms))
            if self.back in events:
                self._drain(self.back, self.on_worker)
            if self.front in events:
                self._drain(self.front, self.on_agent)
            self.flush()
            now = time.monotonic()
            if now >= self.next_beat:
                self.beat()
                self.expire_workers(now)
                self.expire_leases(now)
                self.next_beat = now + self.cfg.heartbeat_s
            self.publish()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        keyed = self.secure and sock is self.front  # agents: the session owner is the CURVE key
        for _ in range(self.cfg.drain_max):
            try:
                if keyed:  # the routing id as a Frame (it carries the key), the rest as bytes
                    first = sock.recv(zmq.NOBLOCK, copy=False)
                    peer, owner = first.bytes, first.get("User-Id").encode()
                    frames = sock.recv_multipart() if first.more else []
                else:  # small messages: copying beats zero-copy frames
                    peer, *frames = sock.recv_multipart(zmq.NOBLOCK)
                    owner = peer
            except zmq.Again:
                return
            try:
                handler(peer, owner, frames)
            except Exception:  # a bug must not end the broker: log it, answer, go on
                log.exception("broker failed on a message from %s", peer.hex())
                self._count(ErrorCode.INTERNAL)

    # ------------------------------------------------------------------ agents
    def on_agent(self, agent: bytes, owner: bytes, frames: list) -> None:
        try:
            m = decode(frames, tensors=False, sender=Role.AGENT)
        except ProtocolError as e:
            self._counted("INVALID", "from_agent", frames)
            self._refuse(agent, owner, e)
            return
        self._counted(m.type, "from_agent", frames)
        try:
            if m.type is MsgType.HEARTBEAT:
                self.renew(agent, owner, m.get("sessions", []))
                return
            if m.type is MsgType.OPEN:
                self.admit(agent, owner, m)
                self.to_worker(self.routes[m.session].worker, frames)
                return
            route = self.routes.get(m.session)
            if route is None:
                if m.type is MsgType.CLOSE:
                    return  # closing what is gone already (refused, expired) is fine
                raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no session {m.session.hex()}", m.session)
            if route.owner != owner:
                raise ProtocolError(ErrorCode.NOT_OWNER, f"session {m.session.hex()} belongs to another "
                                    "agent", m.session)
            route.agent, route.expiry = agent, time.monotonic() + self.cfg.lease_s
            if m.type is MsgType.CLOSE:
                self.drop_route(m.session)
            self.to_worker(route.worker, frames)
        except ProtocolError as e:
            self._refuse(agent, owner, e)

    def _refuse(self, agent: bytes, owner: bytes, e: ProtocolError) -> None:
        """Answer a bad or refused message; a session-ending error on the sender's own session
        frees it (never someone else's)."""
        self.error_to_agent(agent, e.code, e.detail, e.session)
        route = self.routes.get(e.session) if e.session else None
        if route is not None and route.owner == owner and e.code.ends_session:
            self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=e.session)))
            self.drop_route(e.session)

    def admit(self, agent: bytes, owner: bytes, m: Message) -> None:
        sid = m.session
        if sid in self.routes:
            raise ProtocolError(ErrorCode.DUPLICATE_SESSION, f"session {sid.hex()} is open already", sid)
        mine = self.owned.get(owner, ())
        if len(mine) >= self.cfg.max_agent_sessions:
            raise ProtocolError(ErrorCode.BUSY, f"this agent holds {len(mine)} sessions (the limit is "
                                f"{self.cfg.max_agent_sessions})", sid)
        fitting = [w for w in self.workers.values() if w.fingerprint == m["fingerprint"]]
        if not fitting:
            raise ProtocolError(ErrorCode.NO_WORKER, f"no live worker serves backbone "
                                f"{m['fingerprint'][:16]}… ({len(self.workers)} workers live)", sid)
        free = [w for w in fitting if len(w.sessions) < w.capacity
                and len(self.outbox.get(w.identity, ())) < self.cfg.outbox_max]
        if not free:
            raise ProtocolError(ErrorCode.BUSY, f"all {len(fitting)} workers are full", sid)
        w = min(free, key=lambda w: len(w.sessions) / w.capacity)  # least loaded; sticky from now on
        w.sessions.add(sid)
        self.routes[sid] = Route(owner, agent, w.identity, time.monotonic() + self.cfg.lease_s)
        self.owned.setdefault(owner, set()).add(sid)

    def renew(self, agent: bytes, owner: bytes, sessions: list[bytes]) -> None:
        """An agent's heartbeat: renew the leases of the sessions it lists (and move them to the
        routing id it speaks from now: a reconnect keeps them); answer for those it lost."""
        expiry = time.monotonic() + self.cfg.lease_s
        for sid in sessions:
            route = self.routes.get(sid)
            if route is None:
                self.error_to_agent(agent, ErrorCode.UNKNOWN_SESSION, f"no session {sid.hex()} "
                                    "(freed, or the broker restarted)", sid)
            elif route.owner == owner:
                route.agent, route.expiry = agent, expiry
        self._send_agent(agent, encode(msg(MsgType.HEARTBEAT, broker=self.instance)))

    def drop_route(self, sid: bytes) -> None:
        route = self.routes.pop(sid, None)
        if route is None:
            return
        if route.worker in self.workers:
            self.workers[route.worker].sessions.discard(sid)
        mine = self.owned.get(route.owner)
        if mine is not None:
            mine.discard(sid)
            if not mine:
                del self.owned[route.owner]

    def expire_leases(self, now: float) -> None:
        for sid, route in [(s, r) for s, r in self.routes.items() if r.expiry < now]:
            self._count(ErrorCode.LEASE_EXPIRED)
            self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
            self.drop_route(sid)
            self.error_to_agent(route.agent, ErrorCode.LEASE_EXPIRED, f"session {sid.hex()}: the agent "
                                f"was silent for {self.cfg.lease_s}s", sid, count=False)

    # ------------------------------------------------------------------ workers
    def on_worker(self, wid: bytes, _owner: bytes, frames: list) -> None:
        """Workers are authenticated (their own allow-list): their FRAMEs and HIDDENs are
        forwarded on a header peek (the agent validates them in full), only for sessions placed on
        that very worker; everything else is decoded here."""
        w = self.workers.get(wid)
        try:
            t, sid = peek(frames)
            self._counted(t, "from_worker", frames)
            if t in FORWARD_FAST and w is not None:
                w.expiry = time.monotonic() + self.cfg.heartbeat_s * self.cfg.liveness
                route = self.routes.get(sid)
                if route is not None and route.worker == wid:
                    self._send_agent(route.agent, frames, sid)
                else:  # the agent closed the session while the worker decoded ahead
                    self._count("LATE_FRAME")
                return
            m = decode(frames, tensors=False, sender=Role.WORKER)
        except ProtocolError as e:
            log.warning("bad message from worker %s: %s", wid.hex(), e)
            self._count(e.code)
            return
        if m.type is MsgType.READY:
            self.register(wid, m)
            return
        if w is None:  # a worker we do not know (we restarted, or expired it): register again
            self._count("UNREGISTERED")
            self._send_worker(wid, encode(msg(MsgType.RECONNECT, broker=self.instance)))
            return
        w.expiry = time.monotonic() + self.cfg.heartbeat_s * self.cfg.liveness
        if m.type is MsgType.HEARTBEAT:
            return
        route = self.routes.get(m.session) if m.session else None
        if m.type is MsgType.DONE:
            w.sessions.discard(m.session)
        if route is None or route.worker != wid:
            if m.type is MsgType.ERROR and m.session is None:
                log.warning("worker %s error: %s %s", wid.hex(), m["code"], m["detail"])
            return  # for a session the agent already closed
        if m.type is MsgType.DONE or (m.type is MsgType.ERROR and
                                      (ErrorCode.of(m["code"]) or ErrorCode.INTERNAL).ends_session):
            self.drop_route(m.session)  # the worker freed it
        self._send_agent(route.agent, frames, m.session)

    def register(self, wid: bytes, m: Message) -> None:
        old = self.workers.pop(wid, None)
        if old is not None:  # a worker registers anew after losing us: its sessions are gone
            self._lose_sessions(old, "registered again (it lost the broker)")
        self.workers[wid] = WorkerInfo(wid, m["fingerprint"], m["capacity"],
                                       time.monotonic() + self.cfg.heartbeat_s * self.cfg.liveness)
        self._send_worker(wid, encode(msg(MsgType.HEARTBEAT, broker=self.instance)))
        log.info("worker %s ready (capacity %d)", wid.hex(), m["capacity"])

    def beat(self) -> None:
        for wid in list(self.workers):
            self._send_worker(wid, encode(msg(MsgType.HEARTBEAT, broker=self.instance)))

    def expire_workers(self, now: float) -> None:
        for wid, w in list(self.workers.items()):
            if w.expiry < now:
                log.warning("worker %s expired with %d sessions", wid.hex(), len(w.sessions))
                del self.workers[wid]
                self.outbox.pop(wid, None)
                self._lose_sessions(w, "stopped answering")

    def _lose_sessions(self, w: WorkerInfo, why: str) -> None:
        for sid in list(w.sessions):
            route = self.routes.get(sid)
            self.drop_route(sid)
            if route:
                self.error_to_agent(route.agent, ErrorCode.WORKER_LOST, f"worker {w.identity.hex()} {why}", sid)

    # ------------------------------------------------------------------ sending
    def to_worker(self, wid: bytes, frames: list) -> None:
        box = self.outbox.setdefault(wid, [])
        box.append(frames)

    def flush(self) -> None:
        """One send per worker per tick (coalescing the messages of many sessions)."""
        metrics.QUEUE_DEPTH.set(sum(map(len, self.outbox.values())))
        for wid, msgs in self.outbox.items():
            for i in range(0, len(msgs), MAX_BATCH):
                chunk = msgs[i : i + MAX_BATCH]
                self._send_worker(wid, chunk[0] if len(chunk) == 1 else encode_batch(chunk))
        self.outbox.clear()

    def _send_worker(self, wid: bytes, frames: list) -> None:
        try:
            self.back.send_multipart([wid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # gone (EHOSTUNREACH) or not reading (EAGAIN): expiry decides
            self._count("WORKER_UNREACHABLE")
            log.debug("cannot reach worker %s: %s", wid.hex(), exc)

    def _send_agent(self, agent: bytes, frames: list, sid: bytes | None = None) -> bool:
        """False when the agent cannot take it: it is gone (its sessions wait for a reconnect or
        their lease) or it does not read (SLOW_AGENT: the session is freed, memory stays bounded)."""
        try:
            self.front.send_multipart([agent, *frames], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self._count(ErrorCode.SLOW_AGENT)
            route = self.routes.get(sid) if sid else None
            if route is not None:
                self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
                self.drop_route(sid)
        except zmq.ZMQError:
            self._count("AGENT_UNREACHABLE")
            route = self.routes.get(sid) if sid else None
            if route is not None:  # frames were lost: free it; the agent's heartbeat learns so
                self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
                self.drop_route(sid)
        return False

    def error_to_agent(self, agent: bytes, code: ErrorCode, detail: str, sid: bytes | None,
                       count: bool = True) -> None:
        if count:
            self._count(code)
        self._send_agent(agent, encode(error(code, detail, sid)))

    # ------------------------------------------------------------------ metrics
    def _counted(self, type_: str, direction: str, frames: list) -> None:
        """Messages and bytes by type and direction: tallied here, handed to Prometheus once per
        tick by `publish`."""
        tally = self._tally.get((type_, direction))
        if tally is None:
            tally = self._tally[(type_, direction)] = [0, 0]
        tally[0] += 1
        tally[1] += sum(map(len, frames))

    def publish(self) -> None:
        for (type_, direction), tally in self._tally.items():
            if tally[0]:
                metrics.MESSAGES.labels("broker", type_, direction).inc(tally[0])
                metrics.BYTES.labels("broker", type_, direction).inc(tally[1])
                tally[0] = tally[1] = 0
        metrics.LIVE_WORKERS.set(len(self.workers))
        metrics.ACTIVE_SESSIONS.labels("broker").set(len(self.routes))

    def _count(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        metrics.ERRORS.labels("broker", str(code)).inc()

    def close(self) -> None:
        self.running = False
        self.front.close(0)
        self.back.close(0)
        if self.auth is not None:
            self.auth.stop()


def main(agents: str, workers: str, metrics_port: int = 0, keys: security.ServerKeys | None = None,
         config: BrokerConfig | None = None, metrics_addr: str = "127.0.0.1") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s broker %(levelname)s %(message)s")
    b = Broker(agents, workers, keys, config)
    metrics.serve(metrics_port, metrics_addr)
    mode = "CURVE" if keys else "PLAINTEXT (no authentication, no encryption)"
    print(f"broker: agents on {agents}, workers on {workers}, {mode}", flush=True)
    try:
        b.mediate()
    except KeyboardInterrupt:
        pass
    finally:
        b.close()
