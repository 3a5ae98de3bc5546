"""How the broker sends and counts: per-worker outboxes flushed once per tick (one coalesced BATCH
per worker), the FRAMEs and HIDDENs of one tick for one agent connection coalesced the same way
(one BATCH per connection instead of one send per session; anything else sent to that connection
first flushes what waits for it, so order is kept), non-blocking sends to agents (a peer that does not read gets SLOW_AGENT and its
session is freed: memory stays bounded), ERROR answers counted once under their `ErrorCode` and
sent within the key's answer budget, messages/bytes tallied per tick for Prometheus, and what is
not delivered counted by reason (`spa_broker_dropped_total`), never as an error. Mixed into
`Broker` (broker.py), whose state it shares."""

from __future__ import annotations

import logging
import time

import zmq

from monitoring import metrics
from routing.batch import coalesce
from routing.errors import ErrorCode
from routing.protocol import MsgType, encode, error, msg

log = logging.getLogger("spa.broker")


class Sending:
    def to_worker(self, wid: bytes, frames: list) -> None:
        box = self.outbox.setdefault(wid, [])
        box.append(frames)

    def to_agent(self, agent: bytes, frames: list, sid: bytes) -> None:
        """A session's FRAME or HIDDEN for an agent connection, sent with the tick's others."""
        self.agent_out.setdefault(agent, []).append((frames, sid))

    def flush(self) -> None:
        """One send per worker and per agent connection per tick (coalescing many sessions)."""
        metrics.QUEUE_DEPTH.set(sum(map(len, self.outbox.values())))
        for wid, msgs in self.outbox.items():
            for frames, _, _ in coalesce(msgs):
                self._send_worker(wid, frames)
        self.outbox.clear()
        while self.agent_out:
            self._flush_agent(next(iter(self.agent_out)))

    def _flush_agent(self, agent: bytes) -> None:
        msgs = self.agent_out.pop(agent, None) or []
        for frames, i, j in coalesce([f for f, _ in msgs]):
            self._send_agent_now(agent, frames, [sid for _, sid in msgs[i:j]])

    def _send_worker(self, wid: bytes, frames: list) -> None:
        try:
            self.back.send_multipart([wid, *frames], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # gone (EHOSTUNREACH) or not reading (EAGAIN): expiry decides
            self._drop("worker_unreachable")
            log.debug("cannot reach worker %s: %s", wid.hex(), exc)

    def _send_agent(self, agent: bytes, frames: list, sid: bytes | None = None) -> bool:
        """Send now, after what this tick already holds for that connection (order kept)."""
        if agent in self.agent_out:
            self._flush_agent(agent)
        return self._send_agent_now(agent, frames, sid)

    def _send_agent_now(self, agent: bytes, frames: list, sids: bytes | list[bytes] | None = None) -> bool:
        """False when the agent cannot take it: it is gone (its sessions wait for a reconnect or
        their lease) or it does not read (SLOW_AGENT: the sessions are freed, memory stays
        bounded). `sids`: the session of the message, or every session of a BATCH."""
        try:
            self.front.send_multipart([agent, *frames], zmq.NOBLOCK)
            return True
        except zmq.Again:
            reason = None
        except zmq.ZMQError:  # frames were lost: free them; the agent's heartbeat learns so
            reason = "agent_unreachable"
        for sid in ([sids] if isinstance(sids, bytes) else sids or [None]):
            if reason is None:
                self._count(ErrorCode.SLOW_AGENT)
            else:
                self._drop(reason)
            route = self.routes.get(sid) if sid else None
            if route is not None:
                self.to_worker(route.worker, encode(msg(MsgType.CLOSE, session=sid)))
                self.drop_route(sid)
        return False

    def error_to_agent(self, agent: bytes, owner: bytes, code: ErrorCode, detail: str, sid: bytes | None,
                       count: bool = True) -> None:
        """Answer an ERROR (counted once, under its code) within the owner's answer budget."""
        if count:
            self._count(code)
        if self.budgets.take(owner, time.monotonic()):
            self._send_agent(agent, encode(error(code, detail, sid)))
        else:
            self._drop("error_budget")

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
                metrics.message_bytes("broker", type_, direction).inc(tally[1])
                tally[0] = tally[1] = 0
        metrics.LIVE_WORKERS.set(len(self.workers))
        metrics.ACTIVE_SESSIONS.labels("broker").set(len(self.routes))

    def _count(self, code: ErrorCode) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1
        metrics.ERRORS.labels("broker", code.value).inc()

    def _drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        metrics.BROKER_DROPPED.labels(reason).inc()

