"""The edge agent: `async for piece in agent.generate(prompt, max_new_tokens=…, mode=…)`.

One `EdgeAgent` is one process's connection to the broker, shared by all its sessions
(`stream.Stream`, one per generation). It owns:

- the socket: a DEALER, CURVE when given keys; a receive task that drains everything waiting
  in one go and hands each message to its session (a message that fails validation is counted
  and dropped: it cannot end the task); sends that never wait on the loop;
- liveness of the path: it beats every `heartbeat_s` with the sessions it holds (the broker
  renews their leases and answers); no answer for `dead_after_s` means a dead path (a proxy or
  NAT that keeps the socket open and drops every byte): a NEW socket, and every session replays
  (prompt + accepted tokens). A connection reset (the socket monitor's DISCONNECTED) replays
  every session at once too, instead of waiting for silence. A new broker instance id means the
  broker restarted: every session replays;
- ACKs coalesced per tick: one per session, the latest position (one BATCH when the protocol
  lets agents send it);
- the edge compute (`edge_batch.EdgeCompute`): gate and side network batched across all its
  sessions, off the event loop. Agents of one bundle may share one (`compute=`).
"""

from __future__ import annotations

import asyncio
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from edge_agent.budget import BudgetConfig
from edge_agent.config import AgentConfig
from edge_agent.decoding import check_request
from edge_agent.edge_batch import EdgeCompute
from edge_agent.edge_model import EdgeModel
from edge_agent.replay import RETRY, RetryPolicy, retryable  # noqa: F401 - re-exported
from edge_agent.stream import Piece, SessionError, SessionStats, Stream  # noqa: F401 - re-exported
from monitoring import metrics
from routing import security
from routing.batch import encode_batch, split_batch
from routing.errors import ErrorCode, SpaError
from routing.modes import Mode
from routing.protocol import (
    MAX_AGENT_SESSIONS,
    SPECS,
    TO_AGENT,
    MsgType,
    ProtocolError,
    Role,
    decode,
    encode,
    error,
    msg,
)
from routing.quant import WireDtype
from routing.sampling import Sampling

AGENT_BATCH = Role.AGENT in SPECS[MsgType.BATCH].senders  # may agents coalesce into a BATCH?
DRAIN = 4096  # messages handled per wake-up of the receive task before yielding to the loop


WINDOW = AgentConfig().window


def _retrieve(f: asyncio.Future) -> None:
    if not f.cancelled():
        f.exception()  # a send on a closed socket is no one's error


class EdgeAgent:
    """One process's connection to the broker, shared by all its sessions."""

    def __init__(self, edge: EdgeModel, broker: str, window: int | None = None,
                 keys: security.ClientKeys | None = None, heartbeat_s: float | None = None,
                 cfg: AgentConfig | None = None, retry: RetryPolicy | None = None,
                 compute: EdgeCompute | None = None) -> None:
        if edge.tokenizer is None:
            raise SpaError("the edge bundle has no tokenizer")
        cfg = cfg or AgentConfig()
        if window is not None or heartbeat_s is not None:
            cfg = cfg.replace(window=window or cfg.window, heartbeat_s=heartbeat_s or cfg.heartbeat_s)
        self.cfg, self.edge, self.tokenizer, self.window = cfg, edge, edge.tokenizer, cfg.window
        self.broker, self.keys = broker, keys
        self.retry: RetryPolicy = retry or RETRY
        self._own_compute = compute is None
        self.compute = compute or EdgeCompute(edge, inline=cfg.inline_compute, device=cfg.compute_device)
        self.ctx = zmq.asyncio.Context.instance()
        self.sessions: dict[bytes, Stream] = {}
        self.broker_id: bytes | None = None
        self.reconnects = 0  # new sockets after a dead path
        self.heard = time.monotonic()  # the last message from the broker
        self._identity = security.random_routing_id()  # plaintext: stable, a reconnect keeps our sessions
        self._acks: dict[bytes, tuple[Stream, int]] = {}
        self._ack_due = False
        self._io: list[asyncio.Task] = []  # the current socket's reader and monitor
        self._beat_task: asyncio.Task | None = None
        self._connect()

    # ---------------------------------------------------------------- the socket
    def _connect(self) -> None:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, self.cfg.hwm)
        s.setsockopt(zmq.RCVHWM, self.cfg.hwm)
        if self.keys is not None:  # the session owner is our key; a fresh routing id
            security.connect_as(s, self.keys)  # ZeroMQ heartbeats and keepalive too
        else:  # the owner is the routing id: the same one on every socket
            s.setsockopt(zmq.ROUTING_ID, self._identity)
            security.keep_alive(s, security.CLIENT_HEARTBEAT_S, security.CLIENT_TIMEOUT_S,
                                security.TCP_KEEPALIVE_S)
        self.monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        s.connect(self.broker)
        self.sock, self.sync = s, zmq.Socket.shadow(s.underlying)
        self.heard = time.monotonic()

    def _start_io(self) -> None:
        loop = asyncio.get_running_loop()
        self._io = [loop.create_task(self._read(self.sock, self.sync)),
                    loop.create_task(self._watch(self.monitor))]

    def _close_socket(self) -> None:
        for t in self._io:
            t.cancel()
        self._io = []
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(0)
        self.sock.close(0)

    def reconnect(self, why: str) -> None:
        """A new socket (a dead path does not heal on the old one) and every session replays."""
        self.reconnects += 1
        self._close_socket()
        self._connect()
        self._start_io()
        self._path_lost(why)

    def _path_lost(self, why: str) -> None:
        """Frames in flight are gone: every session replays. Whatever broker answers next is
        the one the replays reach (no second replay for its instance id)."""
        self.broker_id = None
        self._broadcast(ErrorCode.TIMEOUT, why)

    # ---------------------------------------------------------------- sending
    def send(self, m, wire_label: str = "") -> int:
        """Send without waiting (in order; queued in pyzmq when the socket is full): its bytes,
        counted under the wire dtype label of the session it belongs to (Stream.wire_label; ""
        connection-wide)."""
        frames = encode(m)
        n = sum(len(f) for f in frames)
        metrics.count_message("agent", m.type, "out", n, wire_label)
        self._push(frames)
        return n

    def _push(self, frames: list) -> None:
        """pyzmq sends at once when it can and queues in order when it cannot; never awaited
        (through the asyncio socket: a send on the raw socket could swallow the edge-triggered
        wake-up of the pending receive)."""
        try:
            self.sock.send_multipart(frames, copy=False).add_done_callback(_retrieve)
        except zmq.ZMQError:  # a closed socket (shutting down)
            pass

    def ack(self, stream: Stream, pos: int) -> None:
        """Acknowledge `pos` (cumulative) at the end of this tick, coalesced per session."""
        self._acks[stream.id] = (stream, pos)
        if not self._ack_due:
            self._ack_due = True
            asyncio.get_running_loop().call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_due = False
        acks, self._acks = self._acks, {}
        live = [(s, msg(MsgType.ACK, session=sid, pos=pos)) for sid, (s, pos) in acks.items()
                if self.sessions.get(sid) is s]
        if AGENT_BATCH and len(live) > 1:
            parts = [encode(m) for _, m in live]
            frames = encode_batch(parts)
            n = sum(len(f) for f in frames)
            metrics.MESSAGES.labels("agent", MsgType.BATCH, "out").inc()
            self._push(frames)
            for s, _ in live:  # its bytes shared out over its sessions (and their wire dtypes)
                metrics.message_bytes("agent", MsgType.BATCH, "out", s.wire_label).inc(n / len(live))
                s.acct.up(n // len(live))
            return
        for s, m in live:
            s.acct.up(self.send(m, s.wire_label))

    # ---------------------------------------------------------------- receiving
    async def _read(self, sock: zmq.asyncio.Socket, sync: zmq.Socket) -> None:
        while True:
            self._receive(await sock.recv_multipart(copy=False))
            for _ in range(DRAIN):  # what is there already: one tick, one batch of edge compute
                try:
                    frames = sync.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._receive(frames)

    def _receive(self, frames: list) -> None:
        self.heard = time.monotonic()  # any message proves the path
        try:
            self._deliver(frames)
        except ProtocolError as e:
            metrics.ERRORS.labels("agent", e.code).inc()
        except Exception:  # nothing a message holds may end the receive task
            metrics.ERRORS.labels("agent", ErrorCode.INTERNAL).inc()

    def _deliver(self, frames: list, nested: bool = False) -> None:
        m = decode(frames)
        if m.type is MsgType.BATCH and not nested:  # the broker's coalescing
            for part in split_batch(m, frames):
                try:
                    self._deliver(part, nested=True)
                except ProtocolError as e:  # one bad part spoils only itself
                    metrics.ERRORS.labels("agent", e.code).inc()
            return
        if m.type not in TO_AGENT:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"an agent does not take {m.type.value}")
        n = sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in frames)
        s = self.sessions.get(m.session) if m.session else None
        metrics.count_message("agent", m.type, "in", n, s.wire_label if s is not None else "")
        if m.type is MsgType.HEARTBEAT:
            instance = m.get("broker")
            if instance is not None and self.broker_id not in (None, instance):
                self._broadcast(ErrorCode.BROKER_RESTARTED, "the broker restarted")
            self.broker_id = instance or self.broker_id
            return
        if s is not None:
            s.deliver(m, n)
        elif m.type is MsgType.ERROR and m.session is None:
            for s in list(self.sessions.values()):  # a connection-wide error reaches everyone
                s.deliver(m, 0)

    def _broadcast(self, code: ErrorCode, detail: str) -> None:
        for sid, s in list(self.sessions.items()):
            s.deliver(error(code, detail, sid), 0)

    async def _watch(self, monitor: zmq.asyncio.Socket) -> None:
        """A dropped connection (reset, broker gone): replay at once, not after the silence."""
        while True:
            event = parse_monitor_message(await monitor.recv_multipart())
            if event["event"] == zmq.EVENT_DISCONNECTED:
                self._path_lost("the connection to the broker dropped")

    async def _beat(self) -> None:
        late = 0.0  # how late the last beat ran: a starved loop is not a dead path
        while True:
            quiet = time.monotonic() - self.heard
            if (quiet > self.cfg.dead_after_s and late < self.cfg.heartbeat_s
                    and not self.sock.get(zmq.EVENTS) & zmq.POLLIN):  # nothing unread either
                self.reconnect(f"no answer from the broker for {quiet:.1f}s")
            self.send(msg(MsgType.HEARTBEAT, sessions=list(self.sessions)[:MAX_AGENT_SESSIONS]))
            due = time.monotonic() + self.cfg.heartbeat_s
            await asyncio.sleep(self.cfg.heartbeat_s)
            late = time.monotonic() - due

    # ---------------------------------------------------------------- sessions
    def register(self, stream: Stream) -> None:
        self.sessions[stream.id] = stream

    def forget(self, stream: Stream) -> None:
        if self.sessions.get(stream.id) is stream:
            del self.sessions[stream.id]

    def generate(self, prompt: str | list[int], max_new_tokens: int = 48, mode: str | Mode = "spa",
                 sampling: Sampling | None = None, window: int | None = None,
                 wire_dtype: str | WireDtype | None = None,
                 budget: BudgetConfig | None = None) -> Stream:
        """One generation; under `budget` (an M budget b > 0) the gate adapts τ to spend b
        blocking transmissions per token (edge_agent/budget.py), and OPEN carries b."""
        mode = Mode.parse(mode)
        wire = WireDtype.parse(wire_dtype or self.cfg.wire_dtype)
        if wire.quantised and mode.uses_side:
            self.edge.check_grid(wire)  # raises when the kit has no grid (or int4 on odd d)
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        check_request(ids, max_new_tokens)
        if not self.edge.supports(mode):
            self.edge.head_for(mode)  # raises with the reason
        if self._beat_task is None or self._beat_task.done() or any(t.done() for t in self._io):
            for t in [*self._io, *([self._beat_task] if self._beat_task else [])]:
                t.cancel()
            self._start_io()
            self.heard = time.monotonic()
            self._beat_task = asyncio.get_running_loop().create_task(self._beat())
        return Stream(self, ids, max_new_tokens, mode, sampling or Sampling(), window or self.window,
                      self.retry, wire if mode.uses_side else WireDtype.FP16, budget)

    async def close(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
        self._close_socket()
        if self._own_compute:
            self.compute.close()
