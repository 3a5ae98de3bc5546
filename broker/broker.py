"""`spa broker`: the only address agents and workers know (zguide Majordomo style).

`mediate()` is one loop that reads like the protocol: drain what workers sent (registration,
heartbeats, frames back to the session's agent), drain what agents sent (heartbeats, OPENs
admitted, session messages checked for ownership and routed), place queued OPENs where slots are
free, then flush — one coalesced BATCH send per worker per tick — and, once per heartbeat, beat to
every worker, expire silent workers (their sessions get WORKER_LOST), leases (LEASE_EXPIRED),
OPENs that waited too long (BUSY), and re-read the allow-lists.

Every agent is untrusted: each message is validated in full against the contract
(`routing.protocol`) and answered with an ERROR naming what was wrong (within the key's answer
budget); what the broker holds per key is bounded (`broker/config.py` says by what). A session
belongs to the key that opened it (CURVE `User-Id`; the routing id on a plaintext broker), so a
reconnect keeps it and a stranger cannot touch it. Pieces: `admission.py` (the queue),
`placement.py` (workers and the capacity the broker can check), `allowlist.py` (keys reloaded
while running), `budget.py` (answers per key), `config.py` (every tunable).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import zmq

from broker.admission import AdmissionQueue, Waiting
from broker.allowlist import AllowLists
from broker.budget import Budgets
from broker.config import BrokerConfig
from broker.placement import WorkerInfo, pick
from broker.route import Route
from broker.sending import Sending
from broker.workers import WorkerSide
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode
from routing.protocol import (
    Message,
    MsgType,
    ProtocolError,
    Role,
    decode,
    encode,
    msg,
)

__all__ = ["Broker", "BrokerConfig", "main"]
log = logging.getLogger("spa.broker")


class Broker(WorkerSide, Sending):
    def __init__(self, agents: str, workers: str, keys: security.ServerKeys | None = None,
                 config: BrokerConfig | None = None) -> None:
        """keys=None: plaintext (anyone who reaches the ports gets in: local demos and tests)."""
        self.cfg = cfg = config or BrokerConfig()
        self.ctx = zmq.Context.instance()
        self.auth = security.start_authenticator(self.ctx, keys) if keys else None
        self.allow = AllowLists(keys, self.auth) if keys else None
        self.secure = keys is not None
        security.seed_routing_ids()  # generated routing ids unpredictable (issue 20: libzmq abort)
        self.front = self._router(agents, keys, security.AGENTS)
        self.back = self._router(workers, keys, security.WORKERS)
        self.instance = os.urandom(8)  # new on every start: peers see a restart in our beats
        self.workers: dict[bytes, WorkerInfo] = {}
        self.routes: dict[bytes, Route] = {}
        self.owned: dict[bytes, set[bytes]] = {}  # owner -> its sessions (per-agent limit)
        self.links: dict[bytes, dict[bytes, float]] = {}  # owner -> {routing id: last heard}
        self.queue = AdmissionQueue(cfg.queue_max, cfg.queue_per_key, cfg.queue_bytes_max)
        self.budgets = Budgets(cfg.key_errors_per_s, 4 * cfg.key_errors_per_s)
        self.outbox: dict[bytes, list[list]] = {}
        self.errors: dict[str, int] = {}  # ERROR answers and faults by ErrorCode
        self.dropped: dict[str, int] = {}  # messages not delivered, by reason (not errors)
        self._tally: dict[tuple[str, str], list[int]] = {}  # (type, direction) -> [messages, bytes]
        self.next_beat = self.next_reload = 0.0
        self.reload_now = threading.Event()  # set by SIGHUP
        self.running = True

    def _router(self, addr: str, keys, domain: str) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.cfg.hwm)  # bounded: a peer that does not read gets no more
        s.setsockopt(zmq.RCVHWM, self.cfg.hwm)  # bounded: a flooding peer is throttled by TCP
        s.setsockopt(zmq.MAXMSGSIZE, 80 << 20)  # a message larger than any valid one is cut off
        security.keep_alive(s, self.cfg.zmq_heartbeat_s, self.cfg.zmq_timeout_s, self.cfg.tcp_keepalive_s,
                            peer_ttl_s=self.cfg.zmq_timeout_s + 1.0)  # peers let go after we do
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
            if self.queue:
                self.place_queued()
            self.flush()
            now = time.monotonic()
            if now >= self.next_beat:
                self.beat()
                self.expire_workers(now)
                self.expire_leases(now)
                self.expire_queue(now)
                self.forget_links(now)
                self.next_beat = now + self.cfg.heartbeat_s
            if self.allow is not None and (self.reload_now.is_set() or
                                           (self.cfg.reload_s and now >= self.next_reload)):
                self.reload_now.clear()
                self.reload_keys()
                self.next_reload = now + self.cfg.reload_s
            self.publish()

    def _drain(self, sock: zmq.Socket, handler) -> None:
        for _ in range(self.cfg.drain_max):
            try:
                if self.secure:  # the routing id as a Frame (it carries the key), the rest as bytes
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
        if self.allow is not None and not self.allow.allows(security.AGENTS, owner):
            self._counted("REVOKED", "from_agent", frames)
            self.error_to_agent(agent, owner, ErrorCode.REVOKED, "this key was removed from the broker's "
                                "allow-list", None)
            return
        if not self._connection(owner, agent):
            self._counted("REFUSED", "from_agent", frames)
            self.error_to_agent(agent, owner, ErrorCode.BUSY, f"this key is connected {len(self.links[owner])} "
                                f"times already (the limit is {self.cfg.max_key_connections})", None)
            return
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
                self.admit(agent, owner, m, frames)
                return
            route = self.routes.get(m.session)
            if route is None:
                if m.type is MsgType.CLOSE:
                    w = self.queue.by_sid.get(m.session)
                    if w is not None and w.owner == owner:
                        self.queue.remove(m.session)  # closed while it waited
                    return  # closing what is gone already (refused, expired) is fine
                raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"no session {m.session.hex()}", m.session)
            if route.owner != owner:
                raise ProtocolError(ErrorCode.NOT_OWNER, f"session {m.session.hex()} belongs to another "
                                    "agent", m.session)
            route.agent, route.progress = agent, time.monotonic()
            if m.type is MsgType.REQUEST:
                slack = self.cfg.max_requests_in_flight
                if route.requests >= slack or route.hiddens + route.requests >= route.frames + slack:
                    raise ProtocolError(ErrorCode.BUSY, f"session {m.session.hex()}: {route.requests} "
                                        f"REQUESTs unanswered, {route.hiddens} answered for {route.frames} "
                                        "frames (one REQUEST per frame)", m.session)
                route.requests += 1
            elif m.type is MsgType.CORRECT:
                route.requests = 0  # a new epoch: REQUESTs of the old one are not answered
            elif m.type is MsgType.CLOSE:
                self.drop_route(m.session)
            self.to_worker(route.worker, frames)
        except ProtocolError as e:
            self._refuse(agent, owner, e)

    def _connection(self, owner: bytes, agent: bytes) -> bool:
        """Note that `owner` speaks on routing id `agent`; False when the key is on too many
        connections (what the broker queues for a key is bounded per connection by the HWM)."""
        links = self.links.setdefault(owner, {})
        now = time.monotonic()
        if agent in links or len(links) < self.cfg.max_key_connections:
            links[agent] = now
            return True
        for rid, seen in list(links.items()):  # forget connections silent for a lease
            if seen < now - self.cfg.lease_s:
                del links[rid]
        if len(links) < self.cfg.max_key_connections:
            links[agent] = now
            return True
        return False

    def _refuse(self, agent: bytes, owner: bytes, e: ProtocolError) -> None:
        """Answer a bad or refused message; a session-ending error on the sender's own session
        frees it (never someone else's)."""
        self.error_to_agent(agent, owner, e.code, e.detail, e.session)
        route = self.routes.get(e.session) if e.session else None
        if route is not None and route.owner == owner and e.code.ends_session:
            self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=e.session)))
            self.drop_route(e.session)

    def admit(self, agent: bytes, owner: bytes, m: Message, frames: list) -> None:
        """An OPEN: refused if it cannot be served at all, else queued; `place_queued` places
        it (at once when a slot is free)."""
        sid = m.session
        if sid in self.routes or sid in self.queue:
            raise ProtocolError(ErrorCode.DUPLICATE_SESSION, f"session {sid.hex()} is open already", sid)
        held = len(self.owned.get(owner, ())) + self.queue.waiting(owner)
        if held >= self.cfg.max_agent_sessions:
            raise ProtocolError(ErrorCode.BUSY, f"this agent holds {held} sessions (the limit is "
                                f"{self.cfg.max_agent_sessions})", sid)
        if not any(w.fingerprint == m["fingerprint"] for w in self.workers.values()):
            raise ProtocolError(ErrorCode.NO_WORKER, f"no live worker serves backbone "
                                f"{m['fingerprint'][:16]}… ({len(self.workers)} workers live)", sid)
        size = sum(map(len, frames))
        why = self.queue.full_for(owner, size)
        if why is not None and not self._place(Waiting(sid, owner, agent, m["fingerprint"], frames, size,
                                                       time.monotonic())):
            raise ProtocolError(ErrorCode.BUSY, f"every worker is full and {why}", sid)
        if why is None:
            self.queue.push(Waiting(sid, owner, agent, m["fingerprint"], frames, size, time.monotonic()))
            self.place_queued()

    def place_queued(self) -> None:
        self.queue.place(lambda owner: len(self.owned.get(owner, ())), self._place)
        metrics.ADMISSION_QUEUE.set(len(self.queue))

    def _place(self, w: Waiting) -> bool:
        """Place one OPEN on the fitting worker with the most free slots; False if none has one."""
        fitting = [x for x in self.workers.values()
                   if len(self.outbox.get(x.identity, ())) < self.cfg.outbox_max]
        worker = pick(fitting, w.fingerprint)
        if worker is None:
            return False
        now = time.monotonic()
        worker.sessions.add(w.sid)
        worker.unanswered.add(w.sid)
        self.routes[w.sid] = Route(w.owner, w.agent, worker.identity, now, now, opened=w)
        self.owned.setdefault(w.owner, set()).add(w.sid)
        metrics.ADMISSION_WAIT.observe(now - w.since)
        self.to_worker(worker.identity, w.frames)
        return True

    def renew(self, agent: bytes, owner: bytes, sessions: list[bytes]) -> None:
        """An agent's heartbeat: note its sessions' beat (a lease is renewed by it only while no
        OPEN waits for a slot) and move them to the routing id it speaks from now (a reconnect
        keeps them); answer for those it lost, counted once per heartbeat."""
        now, lost = time.monotonic(), 0
        for sid in sessions:
            route = self.routes.get(sid)
            if route is None:
                if sid not in self.queue:
                    lost += 1
                    self.error_to_agent(agent, owner, ErrorCode.UNKNOWN_SESSION, f"no session {sid.hex()} "
                                        "(freed, or the broker restarted)", sid, count=lost == 1)
            elif route.owner == owner:
                route.agent, route.beat = agent, now
        self._send_agent(agent, encode(msg(MsgType.HEARTBEAT, broker=self.instance)))

    def drop_route(self, sid: bytes) -> None:
        route = self.routes.pop(sid, None)
        if route is None:
            return
        w = self.workers.get(route.worker)
        if w is not None:
            if sid in w.sessions:
                w.sessions.discard(sid)
                w.finished()
            w.unanswered.discard(sid)
        mine = self.owned.get(route.owner)
        if mine is not None:
            mine.discard(sid)
            if not mine:
                del self.owned[route.owner]

    def expire_leases(self, now: float) -> None:
        """Free sessions without progress for a lease; while OPENs wait for a slot, heartbeats
        alone do not keep a session (a key that holds slots and never reads loses them)."""
        contended = bool(self.queue)
        limit = now - self.cfg.lease_s
        for sid, route in [(s, r) for s, r in self.routes.items()
                           if (r.progress if contended else max(r.progress, r.beat)) < limit]:
            self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
            self.drop_route(sid)
            why = "made no progress" if contended and route.beat >= limit else "was silent"
            self.error_to_agent(route.agent, route.owner, ErrorCode.LEASE_EXPIRED, f"session {sid.hex()}: "
                                f"the agent {why} for {self.cfg.lease_s}s", sid)

    def forget_links(self, now: float) -> None:
        """Keys silent for a lease on every connection are forgotten (bounded map)."""
        for owner in [o for o, links in self.links.items() if max(links.values()) < now - self.cfg.lease_s]:
            del self.links[owner]

    def expire_queue(self, now: float) -> None:
        for w in self.queue.expired(now - self.cfg.queue_wait_s):
            self.error_to_agent(w.agent, w.owner, ErrorCode.BUSY, f"every worker stayed full for "
                                f"{self.cfg.queue_wait_s}s", w.sid)
        metrics.ADMISSION_QUEUE.set(len(self.queue))

    # ------------------------------------------------------------------ allow-lists
    def reload_keys(self) -> None:
        """Re-read the allow-lists: a removed agent key's sessions end with REVOKED (queued ones
        too); a removed worker is unregistered (its sessions replay elsewhere)."""
        removed = self.allow.reload()
        gone = removed.get(security.AGENTS, frozenset())
        for owner in gone:
            for sid in list(self.owned.get(owner, ())):
                route = self.routes[sid]
                self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
                self.drop_route(sid)
                self.error_to_agent(route.agent, owner, ErrorCode.REVOKED, "this key was removed from "
                                    "the broker's allow-list", sid)
            for w in self.queue.drop_owner(owner):
                self.error_to_agent(w.agent, owner, ErrorCode.REVOKED, "this key was removed from the "
                                    "broker's allow-list", w.sid)
        for key in removed.get(security.WORKERS, frozenset()):
            for wid in [wid for wid, w in self.workers.items() if w.key == key]:
                self.unregister(wid, "its key was removed from the allow-list")

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
    if keys is not None:
        signal.signal(signal.SIGHUP, lambda *_: b.reload_now.set())  # re-read the allow-lists
    metrics.serve(metrics_port, metrics_addr)
    mode = "CURVE" if keys else "PLAINTEXT (no authentication, no encryption)"
    print(f"broker: agents on {agents}, workers on {workers}, {mode}", flush=True)
    try:
        b.mediate()
    except KeyboardInterrupt:
        pass
    finally:
        b.close()
