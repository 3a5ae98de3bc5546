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
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq
import zmq.asyncio

from edge_agent.edge_model import EdgeModel
from edge_agent.reference import check_request
from monitoring import metrics
from routing.errors import SpaError
from routing.modes import Mode
from routing.protocol import ProtocolError, decode, encode, msg
from routing.sampling import Sampling
from routing.transmissions import Transmissions

WINDOW = 8  # tokens the worker may decode past the last ACK; sane range 1–64
MAX_REPLAYS = 3  # re-opens after WORKER_LOST before giving up; sane range 0–10


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
    replays: int = 0  # re-opens on another worker after WORKER_LOST


class Stream:
    """One generation: iterate for pieces; `tokens` and `stats` fill in as it goes."""

    def __init__(self, agent: EdgeAgent, prompt_ids: list[int], max_new: int, mode: Mode,
                 sampling: Sampling, window: int) -> None:
        self.agent, self.prompt_ids, self.max_new = agent, prompt_ids, max_new
        self.mode, self.sampling, self.window = mode, sampling, window
        self.id = os.urandom(16)
        self.tokens: list[int] = []
        self.paths: list[str] = []
        self.stats = SessionStats()
        self.queue: asyncio.Queue = asyncio.Queue()
        self._emitted = 0  # tokens already turned into text

    def __aiter__(self):
        return self._run()

    async def _run(self):
        agent, edge, mode = self.agent, self.agent.edge, self.mode
        eos = edge.eos_token_id
        epoch, pos = 0, len(self.prompt_ids)
        outcome = "cancelled"  # a consumer that stops iterating early
        wire_layers = edge.wire_layers(mode)
        backlog: deque = deque()
        t0 = last = time.perf_counter()
        replays = 0

        async def open_session() -> bytes:
            """OPEN, or after WORKER_LOST re-OPEN with prompt + accepted tokens (Petals-style
            replay): the new worker continues at the same position, so the output is the same."""
            new = os.urandom(16)
            agent.sessions.pop(self.id, None)
            self.id = new
            agent.sessions[new] = self
            await agent.send(msg("OPEN", session=new, prompt=self.prompt_ids + self.tokens,
                                 max_new_tokens=self.max_new - len(self.tokens), mode=mode.value,
                                 window=self.window, sampling=self.sampling.to_dict(),
                                 fingerprint=edge.fingerprint, wire_layers=wire_layers, eos=eos), self)
            return new

        sid = await open_session()
        metrics.ACTIVE_SESSIONS.labels("agent").inc()
        try:
            while True:
                m = backlog.popleft() if backlog else await self.queue.get()
                if m.type == "ERROR":
                    if m["code"] == "WORKER_LOST" and replays < MAX_REPLAYS:
                        replays += 1
                        self.stats.replays += 1
                        metrics.REPLAYS.inc()
                        sid, epoch, backlog = await open_session(), 0, deque()
                        continue
                    metrics.ERRORS.labels("agent", m["code"]).inc()
                    raise SessionError(m["code"], m["detail"], sid)
                if m.type != "FRAME":
                    continue  # a HIDDEN for an abandoned request, a DONE, …
                if m["epoch"] != epoch or m["pos"] != pos:
                    self.stats.stale_frames += 1
                    metrics.STALE_FRAMES.labels(mode.value).inc()
                    continue
                base_tok, token, path = m["token"], m["token"], "base"
                fire = mode.gate == "always"
                if fire or mode.gate == "classifier":
                    z = torch.from_numpy(np.array(m.tensors[0]))  # (d,) fp16, as the wire brings it
                    fire, _ = edge.gate(mode, z)
                if fire:
                    path = "side"
                    self.stats.side_used += 1
                    if mode.lockstep:
                        wire = torch.from_numpy(np.array(m.tensors[1]))
                    else:
                        await agent.send(msg("REQUEST", session=sid, pos=pos, epoch=epoch), self)
                        self.stats.requests += 1
                        metrics.BLOCKING.labels(mode.value, "request").inc()
                        asked = time.perf_counter()
                        hidden = await self._await_hidden(pos, epoch, backlog)
                        if hidden is None:
                            continue
                        metrics.EDGE_RTT.observe(time.perf_counter() - asked)
                        wire = torch.from_numpy(np.array(hidden.tensors[0]))
                    started = time.perf_counter()
                    token = edge.side_token(mode, z, wire, self.sampling, pos)
                    metrics.SIDE_COMPUTE.labels(mode.value).observe(time.perf_counter() - started)
                if mode.lockstep:
                    self.stats.lockstep += 1
                    metrics.BLOCKING.labels(mode.value, "lockstep").inc()
                    await agent.send(msg("TOKEN", session=sid, pos=pos, epoch=epoch, token=token), self)
                elif token != base_tok:
                    self.stats.corrections += 1
                    metrics.BLOCKING.labels(mode.value, "correct").inc()
                    await agent.send(msg("CORRECT", session=sid, pos=pos, epoch=epoch, token=token), self)
                    epoch += 1
                    backlog = deque(x for x in backlog if x.type == "ERROR")
                self.tokens.append(token)
                self.paths.append(path)
                self.stats.tokens += 1
                metrics.TOKENS.labels(mode.value, path).inc()
                now = time.perf_counter()
                if len(self.tokens) == 1:
                    self.stats.ttft_s = now - t0
                    metrics.TTFT.labels(mode.value).observe(now - t0)
                else:
                    self.stats.inter_token_s.append(now - last)
                    metrics.ITL.labels(mode.value).observe(now - last)
                last = now
                pos += 1
                done = token == eos or len(self.tokens) >= self.max_new
                if not done and not mode.lockstep and self.queue.empty() and not backlog:
                    await agent.send(msg("ACK", session=sid, pos=pos - 1), self)  # cumulative
                yield Piece(self._detokenize(), token, path, pos - 1)
                if done:
                    outcome = "eos" if token == eos else "length"
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
            await agent.send(msg("CLOSE", session=self.id), None)

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

    async def _await_hidden(self, pos: int, epoch: int, backlog: deque):
        while True:
            m = await self.queue.get()
            if m.type == "HIDDEN" and m["pos"] == pos and m["epoch"] == epoch:
                return m
            if m.type == "ERROR":  # handled by the main loop (a replay, or raised)
                backlog.appendleft(m)
                return None
            backlog.append(m)  # frames decoded ahead meanwhile


class EdgeAgent:
    """One process's connection to the broker, shared by all its sessions."""

    def __init__(self, edge: EdgeModel, broker: str, window: int = WINDOW) -> None:
        if edge.tokenizer is None:
            raise SpaError("the edge bundle has no tokenizer")
        self.edge, self.tokenizer, self.window = edge, edge.tokenizer, window
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.connect(broker)
        self.sessions: dict[bytes, Stream] = {}
        self.bad_messages = 0
        self._reader: asyncio.Task | None = None

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
                m = decode(frames)
            except ProtocolError as e:
                self.bad_messages += 1
                metrics.ERRORS.labels("agent", e.code).inc()
                continue
            n = sum(len(f.buffer) for f in frames)
            metrics.count_message("agent", m.type, "in", n)
            s = self.sessions.get(m.session) if m.session else None
            if s is not None:
                s.stats.bytes_down += n
                s.queue.put_nowait(m)
            elif m.type == "ERROR" and m.session is None:
                for s in self.sessions.values():  # a connection-wide error reaches everyone
                    s.queue.put_nowait(m)

    def generate(self, prompt: str | list[int], max_new_tokens: int = 48, mode: str | Mode = "spa",
                 sampling: Sampling | None = None, window: int | None = None) -> Stream:
        mode = Mode.parse(mode)
        ids = self.tokenizer(prompt)["input_ids"] if isinstance(prompt, str) else list(prompt)
        check_request(ids, max_new_tokens)
        if not self.edge.supports(mode):
            self.edge.head_for(mode)  # raises with the reason
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return Stream(self, ids, max_new_tokens, mode, sampling or Sampling(), window or self.window)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        self.sock.close(0)
