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
reconnect keeps it and a stranger cannot touch it. Pieces: `agents.py` and `workers.py` (each
side's messages), `sending.py` (outboxes, counts), `admission.py` (the queue),
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

from broker.admission import AdmissionQueue
from broker.agents import AgentSide
from broker.allowlist import AllowLists
from broker.budget import Budgets
from broker.config import BrokerConfig
from broker.placement import WorkerInfo
from broker.route import Route
from broker.sending import Sending
from broker.workers import WorkerSide
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode
from routing.protocol import MsgType, encode, msg

__all__ = ["Broker", "BrokerConfig", "main"]
log = logging.getLogger("spa.broker")


class Broker(AgentSide, WorkerSide, Sending):
    def __init__(self, agents: str, workers: str, keys: security.ServerKeys | None = None,
                 config: BrokerConfig | None = None) -> None:
        """keys=None: plaintext (anyone who reaches the ports gets in: local demos and tests)."""
        self.cfg = cfg = config or BrokerConfig()
        # its own context: ZAP's endpoint (inproc://zeromq.zap.01) is one per context, so two
        # brokers in one process (tests) no longer race for it while the last one's closes
        self.ctx = zmq.Context()
        self.ctx.setsockopt(zmq.LINGER, 0)  # every socket of it, the authenticator's ZAP one too:
        # a ZAP reply still queued at shutdown (a handshake in flight) must not hold ctx.term()
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
        self.agent_out: dict[bytes, list[tuple[list, bytes]]] = {}  # FRAMEs/HIDDENs of this tick
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
        # every socket of it is closed (linger 0): term returns at once — but libzmq's can block
        # with a CURVE handshake in flight (libzmq #2586): the process is exiting, so wait a
        # bounded time in a daemon thread
        term = threading.Thread(target=self.ctx.term, name="zmq-term", daemon=True)
        term.start()
        term.join(self.cfg.term_timeout_s)
        if term.is_alive():
            log.warning("zmq context did not terminate in %.1f s; exiting anyway", self.cfg.term_timeout_s)


def main(agents: str, workers: str, metrics_port: int = 0, keys: security.ServerKeys | None = None,
         config: BrokerConfig | None = None, metrics_addr: str = "127.0.0.1") -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s broker %(levelname)s %(message)s")
    b = Broker(agents, workers, keys, config)
    if keys is not None:
        signal.signal(signal.SIGHUP, lambda *_: b.reload_now.set())  # re-read the allow-lists
    # SIGTERM ends the loop at its next tick. Not an exception raised at whatever bytecode runs:
    # one landing inside a finaliser is "ignored" — a CI run's broker lost its SIGTERM that way
    # and served on (py-spy: still in Poller.poll; it exited on a second SIGTERM).
    signal.signal(signal.SIGTERM, lambda *_: setattr(b, "running", False))
    metrics.serve(metrics_port, metrics_addr)
    mode = "CURVE" if keys else "PLAINTEXT (no authentication, no encryption)"
    print(f"broker: agents on {agents}, workers on {workers}, {mode}", flush=True)
    try:
        b.mediate()
    except KeyboardInterrupt:
        pass
    finally:
        b.close()
