"""The edge agent: `async for piece in agent.generate(prompt, max_new_tokens=…, mode=…)`.

Many concurrent sessions share one DEALER socket per process; a receive task hands each
message to its session's queue. Per frame, in order: the classifier gate; if it fires, REQUEST
the hidden states and compute the side-augmented token; a different token is sent as CORRECT
(the worker rolls back, the epoch moves on and older frames are dropped). Accepted positions
are acknowledged cumulatively, never awaited. Lockstep modes answer every frame with TOKEN.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq
import zmq.asyncio

from edge_agent.decoding import Act, Decoder, check_request
from edge_agent.edge_model import EdgeModel
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode, SpaError
from routing.modes import Mode
from routing.protocol import (
    MAX_AGENT_SESSIONS,
    MsgType,
    ProtocolError,
    decode,
    encode,
    error,
    msg,
)
from routing.sampling import Sampling
from routing.transmissions import Transmissions

WINDOW = 8  # tokens the worker may decode past the last ACK; sane range 1–64
HEARTBEAT_S = 1.0  # agent → broker lease renewal; sane range 0.2–10 s (well under the lease)
TO_AGENT = frozenset({MsgType.FRAME, MsgType.HIDDEN, MsgType.DONE, MsgType.ERROR, MsgType.HEARTBEAT})
HWM = 100_000  # ZeroMQ high-water marks of the agent's socket (messages); sane range 1k–1M
# Error codes after which a session is replayed (ErrorCode.retryable); refusals of an OPEN
# (BUSY, NO_WORKER) only while a replay is under way: a new session's refusal is the caller's.
RETRYABLE_IN_REPLAY = frozenset({ErrorCode.BUSY, ErrorCode.NO_WORKER})
RETRYABLE = frozenset(c for c in ErrorCode if c.retryable) - RETRYABLE_IN_REPLAY


class SessionError(SpaError):
    """The serving side ended a session with an ERROR."""

    def __init__(self, code: str, detail: str, session: bytes) -> None:
        super().__init__(f"{code}: {detail} (session={session.hex()})")
        self.code, self.detail, self.session = code, detail, session


@dataclass
class Piece:
    text: str  # newly decoded text
    token: int
    path: str  # 'base' or 'side'
    pos: int


@dataclass
class SessionStats(Transmissions):
    ttft_s: float = 0.0
    inter_token_s: list[float] = field(default_factory=list)
    bytes_up: int = 0
    bytes_down: int = 0
    stale_frames: int = 0
    replays: int = 0  # re-opens after a retryable error or silence (RetryPolicy)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how a session is replayed (re-OPENed with prompt + accepted tokens)."""

    first_delay_s: float = 0.05  # first back-off; sane range 0.01–0.5
    max_delay_s: float = 2.0  # back-off doubles up to this; sane range 0.5–10
    max_attempts: int = 8  # replays in a row without a new token; sane range 0–20
    deadline_s: float = 30.0  # give up a failure streak after this long; sane range 5–120
    silence_s: float = 10.0  # nothing received this long: the worker may be dead; 2–60

    def delay(self, attempt: int) -> float:
        """Jittered exponential back-off before replay `attempt` (1-based)."""
        cap = min(self.max_delay_s, self.first_delay_s * 2 ** (attempt - 1))
        return cap * (0.5 + 0.5 * random.random())


RETRY = RetryPolicy()  # EdgeAgent may carry its own as `agent.retry`


SILENCE = "SILENCE"  # not a wire type: what _get returns when a session heard nothing


class _Silence:
    """Stands in for a message when a session heard nothing for `silence_s`."""

    type = SILENCE
    session = None


def retryable(code: str, replaying: bool) -> bool:
    return code in RETRYABLE or (replaying and code in RETRYABLE_IN_REPLAY)


class Stream:
    """One generation: iterate for pieces; `tokens` and `stats` fill in as it goes.

    The per-token logic is `Decoder`'s; this class only does the I/O: frames in, REQUEST /
    CORRECT / TOKEN / ACK out, and replays after retryable errors or silence."""

    def __init__(self, agent: EdgeAgent, prompt_ids: list[int], max_new: int, mode: Mode,
                 sampling: Sampling, window: int) -> None:
        self.agent, self.prompt_ids, self.max_new = agent, prompt_ids, max_new
        self.mode, self.sampling, self.window = mode, sampling, window
        self.id = os.urandom(16)
        self.stats = SessionStats()
        self.decoder = Decoder(mode, max_new, agent.edge.eos_token_id, len(prompt_ids), self.stats)
        self.tokens: list[int] = self.decoder.tokens
        self.paths: list[str] = self.decoder.paths
        self.queue: asyncio.Queue = asyncio.Queue()
        self._emitted = 0  # tokens already turned into text

    def __aiter__(self):
        return self._run()

    async def _open(self, close_old: bool = False) -> None:
        """OPEN, or on a replay re-OPEN with prompt + accepted tokens under a new id
        (Petals-style): the new worker continues at the same position, the output is the same."""
        agent, edge = self.agent, self.agent.edge
        old, self.id = self.id, os.urandom(16)
        agent.sessions.pop(old, None)
        if close_old:
            await agent.send(msg(MsgType.CLOSE, session=old), None)
        agent.sessions[self.id] = self
        await agent.send(msg(MsgType.OPEN, session=self.id, prompt=self.prompt_ids + self.tokens,
                             max_new_tokens=self.max_new - len(self.tokens), mode=self.mode.value,
                             window=self.window, sampling=self.sampling.to_dict(),
                             fingerprint=edge.fingerprint, wire_layers=edge.wire_layers(self.mode),
                             eos=edge.eos_token_id), self)

    async def _get(self, silence_s: float):
        """The next message of this session (or a connection-wide one), or _Silence."""
        while True:
            try:
                m = await asyncio.wait_for(self.queue.get(), silence_s)
            except TimeoutError:
                return _Silence()
            if m.session is None or m.session == self.id:
                return m  # messages of a session replaced by a replay are dropped

    async def _run(self):
        agent, edge, mode, dec = self.agent, self.agent.edge, self.mode, self.decoder
        policy: RetryPolicy = getattr(agent, "retry", None) or RETRY
        outcome = "cancelled"  # a consumer that stops iterating early
        backlog: deque = deque()
        t0 = last = time.perf_counter()
        failures, streak_t0 = 0, 0.0  # replays since the last new token

        await self._open()
        metrics.ACTIVE_SESSIONS.labels("agent").inc()
        try:
            while True:
                m = backlog.popleft() if backlog else await self._get(policy.silence_s)
                if m.type is SILENCE or (m.type is MsgType.ERROR and retryable(m["code"], failures > 0)):
                    code = ErrorCode.TIMEOUT if m.type is SILENCE else m["code"]
                    failures += 1
                    if failures == 1:
                        streak_t0 = time.monotonic()
                    if (failures > policy.max_attempts
                            or time.monotonic() - streak_t0 > policy.deadline_s):
                        metrics.ERRORS.labels("agent", code).inc()
                        detail = m["detail"] if m.type is MsgType.ERROR else f"silent {policy.silence_s}s"
                        raise SessionError(code, f"{detail}; gave up after {failures - 1} replays "
                                           f"at pos={dec.pos}", self.id)
                    await asyncio.sleep(policy.delay(failures))
                    self.stats.replays += 1
                    metrics.REPLAYS.inc()
                    dec.reopen()
                    backlog.clear()
                    await self._open(close_old=True)  # harmless if gone, frees it if not
                    continue
                if m.type is MsgType.ERROR:
                    metrics.ERRORS.labels("agent", m["code"]).inc()
                    raise SessionError(m["code"], m["detail"], self.id)
                if m.type is not MsgType.FRAME:
                    continue  # a HIDDEN for an abandoned request, a DONE, …
                if not dec.current(m["pos"], m["epoch"]):
                    self.stats.stale_frames += 1
                    metrics.STALE_FRAMES.labels(mode.value).inc()
                    continue
                fire, g, z = False, 0.0, None
                if mode.gate != "never":
                    z = torch.from_numpy(np.array(m.tensors[0]))  # (d,) fp16, as the wire brings it
                    fire, g = edge.gate(mode, z)
                step = dec.frame(m["token"], fire, g)
                if step.act is Act.REQUEST:
                    await agent.send(msg(MsgType.REQUEST, session=self.id, pos=step.pos,
                                         epoch=step.epoch), self)
                    if step.counted:
                        metrics.BLOCKING.labels(mode.value, "request").inc()
                    asked = time.perf_counter()
                    hidden = await self._await_hidden(step.pos, step.epoch, backlog, policy)
                    if hidden is None:
                        continue  # an error or silence: the loop replays or raises
                    metrics.EDGE_RTT.observe(time.perf_counter() - asked)
                    wire = torch.from_numpy(np.array(hidden.tensors[0]))
                elif step.act is Act.SIDE:
                    wire = torch.from_numpy(np.array(m.tensors[1]))
                if step.act is not Act.EMIT:
                    started = time.perf_counter()
                    step = dec.side(edge.side_token(mode, z, wire, self.sampling, step.pos))
                    metrics.SIDE_COMPUTE.labels(mode.value).observe(time.perf_counter() - started)
                if step.send is MsgType.TOKEN:
                    metrics.BLOCKING.labels(mode.value, "lockstep").inc()
                    await agent.send(msg(MsgType.TOKEN, session=self.id, pos=step.pos, epoch=step.epoch,
                                         token=step.token), self)
                elif step.send is MsgType.CORRECT:
                    metrics.BLOCKING.labels(mode.value, "correct").inc()
                    await agent.send(msg(MsgType.CORRECT, session=self.id, pos=step.pos,
                                         epoch=step.epoch, token=step.token), self)
                    backlog = deque(x for x in backlog if x.type is MsgType.ERROR)
                failures = 0
                metrics.TOKENS.labels(mode.value, step.path).inc()
                now = time.perf_counter()
                if len(self.tokens) == 1:
                    self.stats.ttft_s = now - t0
                    metrics.TTFT.labels(mode.value).observe(now - t0)
                else:
                    self.stats.inter_token_s.append(now - last)
                    metrics.ITL.labels(mode.value).observe(now - last)
                last = now
                if not step.done and not mode.lockstep and self.queue.empty() and not backlog:
                    await agent.send(msg(MsgType.ACK, session=self.id, pos=step.pos), self)  # cumulative
                yield Piece(self._detokenize(), step.token, step.path, step.pos)
                if step.done:
                    outcome = dec.finished_by
                    break
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the consumer stopped early or was cancelled: 'cancelled'
        except BaseException:
            outcome = "error"
            raise
        finally:
            metrics.SESSIONS_FINISHED.labels(mode.value, outcome).inc()
            metrics.ACTIVE_SESSIONS.labels("agent").dec()
            agent.sessions.pop(self.id, None)
            await agent.send(msg(MsgType.CLOSE, session=self.id), None)

    def _detokenize(self) -> str:
        """Incremental detokenization: the text the last token adds, from a short tail (byte-level
        BPE pieces may split a character; such a piece waits for the next token)."""
        dec = self.agent.tokenizer.decode
        tail = self.tokens[self._emitted - 4 if self._emitted >= 4 else 0 :]
        head = tail[: len(tail) - (len(self.tokens) - self._emitted)]
        full, prefix = dec(tail, skip_special_tokens=True), dec(head, skip_special_tokens=True)
        if full.endswith("\ufffd") and len(self.tokens) < self.max_new:
            return ""
        self._emitted = len(self.tokens)
        return full[len(prefix):] if full.startswith(prefix) else full

    async def _await_hidden(self, pos: int, epoch: int, backlog: deque, policy: RetryPolicy):
        while True:
            m = await self._get(policy.silence_s)
            if m.type is MsgType.HIDDEN and m["pos"] == pos and m["epoch"] == epoch:
                return m
            if m.type in (MsgType.ERROR, SILENCE):  # handled by the main loop (a replay, or raised)
                backlog.appendleft(m)
                return None
            backlog.append(m)  # frames decoded ahead meanwhile


class EdgeAgent:
    """One process's connection to the broker, shared by all its sessions.

    A receive task hands each message to its session's queue (a message that fails validation
    is counted and dropped: it cannot end the task). A heartbeat task lists the sessions this
    agent holds every `heartbeat_s`: the broker renews their leases, moves them to our current
    routing id (a reconnect keeps them) and answers UNKNOWN_SESSION for any it lost; a new
    broker instance id in its answer means it restarted, and every session replays."""

    def __init__(self, edge: EdgeModel, broker: str, window: int = WINDOW,
                 keys: security.ClientKeys | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        if edge.tokenizer is None:
            raise SpaError("the edge bundle has no tokenizer")
        self.edge, self.tokenizer, self.window = edge, edge.tokenizer, window
        self.heartbeat_s = heartbeat_s
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, HWM)
        self.sock.setsockopt(zmq.RCVHWM, HWM)
        if keys is not None:
            security.connect_as(self.sock, keys)  # the session owner is our key
        else:  # plaintext: a random, stable routing id, so a reconnect keeps our sessions
            self.sock.setsockopt(zmq.IDENTITY, os.urandom(16))
        self.sock.connect(broker)
        self.sessions: dict[bytes, Stream] = {}
        self.bad_messages = 0
        self.broker_id: bytes | None = None
        self.broker_restarts = 0
        self._tasks: list[asyncio.Task] = []

    async def send(self, m, stream: Stream | None) -> None:
        frames = encode(m)
        n = sum(len(f) for f in frames)
        metrics.count_message("agent", m.type, "out", n)
        if stream is not None:
            stream.stats.bytes_up += n
        await self.sock.send_multipart(frames, copy=False)

    async def _read(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            try:
                self._deliver(frames)
            except ProtocolError as e:
                self.bad_messages += 1
                metrics.ERRORS.labels("agent", e.code).inc()
            except Exception:  # nothing a message holds may end the receive task
                self.bad_messages += 1
                metrics.ERRORS.labels("agent", ErrorCode.INTERNAL).inc()

    def _deliver(self, frames: list) -> None:
        m = decode(frames)
        if m.type not in TO_AGENT:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"an agent does not take {m.type.value}")
        n = sum(len(f.buffer) for f in frames)
        metrics.count_message("agent", m.type, "in", n)
        if m.type is MsgType.HEARTBEAT:
            instance = m.get("broker")
            if instance is not None and self.broker_id not in (None, instance):
                self._broadcast(ErrorCode.BROKER_RESTARTED, "the broker restarted")
            self.broker_id = instance or self.broker_id
            return
        s = self.sessions.get(m.session) if m.session else None
        if s is not None:
            s.stats.bytes_down += n
            s.queue.put_nowait(m)
        elif m.type is MsgType.ERROR and m.session is None:
            for s in list(self.sessions.values()):  # a connection-wide error reaches everyone
                s.queue.put_nowait(m)

    def _broadcast(self, code: ErrorCode, detail: str) -> None:
        self.broker_restarts += code is ErrorCode.BROKER_RESTARTED
        for sid, s in list(self.sessions.items()):
            s.queue.put_nowait(error(code, detail, sid))

    async def _beat(self) -> None:
        while True:
            await self.send(msg(MsgType.HEARTBEAT, sessions=list(self.sessions)[:MAX_AGENT_SESSIONS]), None)
            await asyncio.sleep(self.heartbeat_s)

    def generate(self, prompt: str | list[int], max_new_tokens: int = 48, mode: str | Mode = "spa",
                 sampling: Sampling | None = None, window: int | None = None) -> Stream:
        mode = Mode.parse(mode)
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        check_request(ids, max_new_tokens)
        if not self.edge.supports(mode):
            self.edge.head_for(mode)  # raises with the reason
        if not self._tasks or any(t.done() for t in self._tasks):
            for t in self._tasks:
                t.cancel()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._read()), loop.create_task(self._beat())]
        return Stream(self, ids, max_new_tokens, mode, sampling or Sampling(), window or self.window)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        self.sock.close(0)
