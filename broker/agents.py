"""The broker's side facing agents: each message decoded in full against the contract and checked
for ownership (a session belongs to the key that opened it), OPENs admitted (refused at once if
they cannot be served, else queued in `admission.py` and placed by `placement.py`), REQUESTs
bounded per frame, heartbeats renewing leases, and the expiry of silent sessions, connections
and queued OPENs. Mixed into `Broker` (broker.py), whose state it shares."""

from __future__ import annotations

import time

from broker.admission import Waiting
from broker.placement import pick
from broker.route import Route
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode
from routing.protocol import Message, MsgType, ProtocolError, Role, decode, encode, msg


class AgentSide:
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
        worker = pick(fitting, w.fingerprint, self.cfg.worker_unanswered_max)
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
