"""One generation over the agent's connection: `async for piece in stream`.

The parts, each in its own place and tested on its own:

    decoding.Decoder     the per-token state machine and M (shared with the reference generator)
    edge_batch           gate and side token, batched across the process's sessions, off the loop
    replay               when a failure replays the session, and when the streak gives up
    accounting           stats and metrics: TTFT, ITL, bytes, stale frames, replays
    detok                the text each token adds

This class only moves messages: frames in; REQUEST, CORRECT, TOKEN out; ACKs to the agent's
coalescing outbox when the session has nothing left to read; a re-OPEN after a failure.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.accounting import Accounting, SessionStats
from edge_agent.budget import BudgetConfig
from edge_agent.decoding import Act, Decoder, Step
from edge_agent.detok import Detokenizer
from edge_agent.replay import GiveUp, RetryPolicy, Streak, retryable
from routing.errors import ErrorCode, SpaError
from routing.modes import Mode
from routing.protocol import Message, MsgType, msg
from routing.quant import WireDtype
from routing.sampling import Sampling

if TYPE_CHECKING:
    from edge_agent.agent import EdgeAgent

__all__ = ["Piece", "SessionError", "SessionStats", "Stream"]

SILENCE = "SILENCE"  # not a wire type: what _receive returns when a session heard nothing


class _Silence:
    """Stands in for a message when a session heard nothing for its silence timeout."""

    type = SILENCE
    session = None


class SessionError(SpaError):
    """The serving side ended a session with an ERROR (or its replays ran out)."""

    def __init__(self, code: str, detail: str, session: bytes) -> None:
        super().__init__(f"{code}: {detail} (session={session.hex()})")
        self.code, self.detail, self.session = code, detail, session


@dataclass
class Piece:
    text: str  # newly decoded text
    token: int
    path: str  # 'base' or 'side'
    pos: int


class Stream:
    """One generation: iterate for pieces; `tokens` and `stats` fill in as it goes."""

    def __init__(self, agent: EdgeAgent, prompt_ids: list[int], max_new: int, mode: Mode,
                 sampling: Sampling, window: int, policy: RetryPolicy,
                 wire: WireDtype = WireDtype.FP16, budget: BudgetConfig | None = None) -> None:
        self.agent, self.prompt_ids, self.max_new = agent, prompt_ids, max_new
        self.wire = wire  # fp16, or int8/int4 frames on the edge kit's grid (routing/quant.py)
        # its metrics' wire_dtype label: none for a mode without a side network (no frames travel)
        self.wire_label = wire.value if mode.uses_side else ""
        self.mode, self.sampling, self.window = mode, sampling, window
        self.id = os.urandom(16)
        self.acct = Accounting(mode.value, self.wire_label)
        self.stats: SessionStats = self.acct.stats
        self.decoder = Decoder.start(mode, max_new, agent.edge.eos_token_id, prompt_ids,
                                     agent.edge, budget, self.stats)
        gate = self.decoder.budget  # None: the bundle's fixed τ decides
        self.stats.m_budget = gate.budget if gate is not None else None
        self.tokens: list[int] = self.decoder.tokens
        self.paths: list[str] = self.decoder.paths
        self.detok = Detokenizer(agent.tokenizer)
        self.streak = Streak(policy)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.backlog: deque = deque()  # read while waiting for a HIDDEN: handled next
        self.heard = False  # a message of this session arrived since the last OPEN
        self._ack: int | None = None  # the last accepted position not yet acknowledged

    def __aiter__(self):
        return self._run()

    # ---------------------------------------------------------------- the loop
    async def _run(self):
        outcome = "cancelled"  # a consumer that stops iterating early
        self._open()
        self.acct.opened()
        try:
            while True:
                step = await self._handle(await self._next())
                if step is None:
                    continue
                self.streak.progressed()
                self.acct.token(step)
                if not step.done and not self.mode.lockstep:
                    self._ack = step.pos  # sent once the session has nothing left to read
                    if self.queue.empty() and not self.backlog:
                        self._flush_ack()
                yield Piece(self.detok.push(step.token, final=step.done), step.token, step.path,
                            step.pos)
                if step.done:
                    outcome = self.decoder.finished_by
                    break
        except (GeneratorExit, asyncio.CancelledError):
            raise  # the consumer stopped early or was cancelled: 'cancelled'
        except BaseException:
            outcome = "error"
            raise
        finally:
            if self.decoder.budget is not None:
                self.stats.budget_forced = self.decoder.budget.forced
            self.acct.closed(outcome)
            self.agent.forget(self)
            self.agent.send(msg(MsgType.CLOSE, session=self.id), self.wire_label)

    async def _handle(self, m) -> Step | None:
        """One message: a token out (its Step), or None (replayed, stale, nothing to do)."""
        if self._failed(m):
            await self._replay(m)
            return None
        if m.type is MsgType.ERROR:
            self.acct.error(m["code"])
            raise SessionError(m["code"], m["detail"], self.id)
        if m.type is not MsgType.FRAME:
            return None  # a HIDDEN for an abandoned request, a DONE, …
        if not self.decoder.current(m["pos"], m["epoch"]):
            self.acct.stale()
            return None
        return await self._frame(m)

    async def _frame(self, m: Message) -> Step | None:
        """Gate, then (if it fires) the side token from HIDDEN or the frame's own states."""
        mode, dec, compute, edge = self.mode, self.decoder, self.agent.compute, self.agent.edge
        nz = 2 if self.wire.quantised else 1  # tensors per state on the wire
        try:
            z = edge.unwire(m.tensors[:nz], self.wire, mode, None).numpy() if mode.uses_side else None
        except ValueError as exc:
            raise SessionError(ErrorCode.BAD_TENSOR.value, f"FRAME pos={m['pos']}: {exc}", self.id) from None
        fire, g = False, 0.0
        if z is not None:
            answer = compute.gate(mode, z)
            fire, g = answer if isinstance(answer, tuple) else await answer
        step = dec.frame(m["token"], fire, g)
        if step.act is Act.EMIT:
            return step
        if step.act is Act.REQUEST:
            self._send(MsgType.REQUEST, step)
            self.acct.requested(step.counted)
            asked = time.perf_counter()
            hidden = await self._await_hidden(step)
            if hidden is None:
                return None  # an error or silence: handled next (a replay, or raised)
            self.acct.round_trip(time.perf_counter() - asked)
            tensors = hidden.tensors
        else:  # lockstep: the frame carried the states
            tensors = m.tensors[nz:]
        try:
            wire = edge.unwire(tensors, self.wire, mode, edge.wire_layers(mode)).numpy()
        except ValueError as exc:
            raise SessionError(ErrorCode.BAD_TENSOR.value, f"states pos={step.pos}: {exc}", self.id) from None
        started = time.perf_counter()
        token = await compute.side(mode, z, wire, self.sampling, step.pos)
        self.acct.side_compute(time.perf_counter() - started)
        step = dec.side(token)
        if step.send is not None:
            self._send(step.send, step, token=step.token)
        if step.send is MsgType.CORRECT:  # frames decoded past a rollback are stale
            self.backlog = deque(x for x in self.backlog if x.type is MsgType.ERROR)
        return step

    async def _await_hidden(self, step: Step) -> Message | None:
        while True:
            m = await self._receive()
            if m.type is MsgType.HIDDEN and m["pos"] == step.pos and m["epoch"] == step.epoch:
                return m
            if m.type in (MsgType.ERROR, SILENCE):
                self.backlog.appendleft(m)
                return None
            self.backlog.append(m)  # frames decoded ahead meanwhile

    # ---------------------------------------------------------------- replay
    def _failed(self, m) -> bool:
        return m.type is SILENCE or (m.type is MsgType.ERROR
                                     and retryable(m["code"], self.streak.replaying))

    async def _replay(self, m) -> None:
        """Back off, then re-OPEN with prompt + accepted tokens; or give up (SessionError)."""
        code = ErrorCode.TIMEOUT.value if m.type is SILENCE else m["code"]
        try:
            delay = self.streak.fail()
        except GiveUp as e:
            self.acct.error(code)
            detail = m["detail"] if m.type is MsgType.ERROR else f"silent {self._timeout():g}s"
            raise SessionError(code, f"{detail}; {e} at pos={self.decoder.pos}", self.id) from None
        await asyncio.sleep(delay)
        self.acct.replay()
        self.decoder.reopen()
        self.backlog.clear()
        self._open(close_old=True)  # harmless if gone, frees it if not

    def _open(self, close_old: bool = False) -> None:
        """OPEN, or on a replay re-OPEN with prompt + accepted tokens under a new id
        (Petals-style): the new worker continues at the same position, the output is the same."""
        agent, edge = self.agent, self.agent.edge
        old = self.id
        if close_old:
            agent.forget(self)
            agent.send(msg(MsgType.CLOSE, session=old), self.wire_label)
            self.id = os.urandom(16)
        self.heard, self._ack = False, None
        agent.register(self)
        layers = edge.wire_layers(self.mode)
        quantised = {"wire_dtype": self.wire.value} if self.wire.quantised else {}
        grid = [edge.grid_rows(layers)] if self.wire.quantised else None  # (K+1, d) fp16
        budget = {} if self.stats.m_budget is None else {"m_budget": self.stats.m_budget}
        self._account(agent.send(msg(
            MsgType.OPEN, grid, **quantised, session=self.id, prompt=self.prompt_ids + self.tokens,
            max_new_tokens=self.max_new - len(self.tokens), mode=self.mode.value,
            window=self.window, sampling=self.sampling.to_dict(), fingerprint=edge.fingerprint,
            wire_layers=layers, eos=edge.eos_token_id, **budget), self.wire_label))

    # ---------------------------------------------------------------- I/O
    def deliver(self, m: Message, nbytes: int) -> None:
        """The agent's reader hands over a message of this session (or a connection-wide one)."""
        self.acct.down(nbytes)
        self.queue.put_nowait(m)

    def _send(self, type_: MsgType, step: Step, **extra) -> None:
        self._account(self.agent.send(msg(type_, session=self.id, pos=step.pos, epoch=step.epoch,
                                          **extra), self.wire_label))

    def _account(self, nbytes: int) -> None:
        self.acct.up(nbytes)

    def _flush_ack(self) -> None:
        """Acknowledge the last accepted position (cumulative; the agent coalesces per tick)."""
        if self._ack is not None:
            self.agent.ack(self, self._ack)
            self._ack = None

    async def _next(self):
        return self.backlog.popleft() if self.backlog else await self._receive()

    def _timeout(self) -> float:
        """Silence means a dead worker only once the session has been heard from: before, its
        OPEN may be waiting in the broker's admission queue (lost paths are the agent's)."""
        p = self.streak.policy
        return p.silence_s if self.heard else max(p.silence_s, p.deadline_s)

    async def _receive(self):
        """The next message of this session (or a connection-wide one), or _Silence."""
        while True:
            if self.queue.empty():
                self._flush_ack()
            try:
                async with asyncio.timeout(self._timeout()):
                    m = await self.queue.get()
            except TimeoutError:
                return _Silence()
            if m.session is None or m.session == self.id:
                if m.session is not None:
                    self.heard = True
                return m  # messages of a session replaced by a replay are dropped
