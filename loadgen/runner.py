"""Runs the load: many simulated devices in one process, each request through
`EdgeAgent(...).generate(...)`, the only entry into the device runtime.

`LoadTest.run()` runs the warm-up (left out of the figures), then one phase per offered rate
(a single closed-loop phase without `--request-rate`), and returns a `Phase` each: the request
records and the timeline. Every bundle has one EdgeAgent (one connection) for the whole run.

A request refused for a reason a retry can fix (`ErrorCode.retryable`: BUSY, NO_WORKER, a
worker lost beyond the agent's replays, …) is tried again after a jittered back-off; its
latency counts from its first attempt. Any other error stops the run (raised), since a retry
cannot fix it. TIMEOUT is counted in /metrics here only for the load test's own
`--session-timeout`; the agent counts the TIMEOUTs it raises itself.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.agent import EdgeAgent, SessionError
from edge_agent.budget import BudgetConfig
from edge_agent.config import AgentConfig
from edge_agent.edge_model import EdgeModel
from loadgen import queue_wait
from loadgen.arrivals import gaps
from loadgen.config import LoadConfig
from loadgen.figures import RequestRecord, Timeline
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode, InputError
from routing.modes import Mode
from routing.quant import WireDtype
from routing.sampling import Sampling


@dataclass
class Phase:
    """One measured run: the closed loop, or one offered rate of a sweep (inf included)."""

    rate: float | None  # offered requests/s; None = closed loop
    records: list[RequestRecord] = field(default_factory=list)
    seconds: float = 0.0
    timeline: Timeline = field(default_factory=Timeline)
    started: float = field(default_factory=time.perf_counter)
    queue: dict = field(default_factory=dict)  # the broker's admission-queue figures (queue_wait)
    cpu_s: float = 0.0  # this process's CPU seconds during the phase (every thread)


def retryable(code: str) -> bool:
    c = ErrorCode.of(code)
    return c is not None and c.retryable


class LoadTest:
    """`users` holds one (bundle, prompts) per private user; request i goes to user
    i mod len(users) (in a closed loop, simulated user k stays with bundle k mod len(users))."""

    def __init__(self, users: list[tuple[EdgeModel, list[list[int]]]], cfg: LoadConfig,
                 keys: security.ClientKeys | None = None, budget: BudgetConfig | None = None) -> None:
        if not users:
            raise InputError("a load test needs at least one bundle")
        self.modes, self.wires = cfg.mode_list, cfg.wire_list
        for edge, _ in users:
            for mode in self.modes:
                if not edge.supports(mode):
                    edge.head_for(mode)  # raises with the reason
                if mode.uses_side:
                    for wire in self.wires:
                        edge.check_grid(wire)  # int8/int4 need the kit's grid
        self.users, self.cfg, self.keys, self.budget = users, cfg, keys, budget
        self.issued = 0  # requests handed out (picks prompt, mode and seed)
        self.stopping = False
        self.fatal: SessionError | None = None
        self.live: dict[int, tuple[RequestRecord, object]] = {}  # requests in flight → stream
        self.seen: set[str] = set()  # codes already shown with their detail
        self.on_finish: Callable[[RequestRecord], None] | None = None  # progress hooks
        self.on_sample: Callable[[Phase], None] | None = None
        self.phase: Phase | None = None
        self.phases: list[Phase] = []
        metrics.init_agent_series([m.value for m in self.modes], [w.value for w in self.wires])

    # ---- one request -------------------------------------------------------------------
    def _job(self, u: int | None = None) -> tuple[int, list[int], Mode, WireDtype, int]:
        """Request i: its user, prompt, mode (i mod modes), wire dtype (the (i div modes)-th in
        turn: every mode runs with each) and seed."""
        i = self.issued
        self.issued += 1
        u = i % len(self.users) if u is None else u
        prompts = self.users[u][1]
        mode = self.modes[i % len(self.modes)]
        wire = self.wires[(i // len(self.modes)) % len(self.wires)]
        return u, prompts[i % len(prompts)], mode, wire if mode.uses_side else WireDtype.FP16, \
            self.cfg.seed + i

    async def _request(self, agent: EdgeAgent, prompt: list[int], mode: Mode, seed: int,
                       rec: RequestRecord) -> None:
        cfg = self.cfg
        t0 = time.perf_counter()
        while True:
            rec.attempts += 1
            stream = agent.generate(prompt, cfg.max_new_tokens, mode,
                                    Sampling(cfg.temperature, cfg.top_k, seed), cfg.window,
                                    wire_dtype=rec.wire, budget=self.budget)
            self.live[id(rec)] = (rec, stream)
            try:
                async with asyncio.timeout(cfg.session_timeout):
                    async for _ in stream:
                        pass
            except (SessionError, TimeoutError) as e:
                own_timeout = not isinstance(e, SessionError)
                code = ErrorCode.TIMEOUT.value if own_timeout else e.code
                self._absorb(rec, stream)
                rec.errors.append(code)
                if own_timeout:  # the agent counts the TIMEOUTs it raises; this one is ours
                    metrics.ERRORS.labels("agent", code).inc()
                if code not in self.seen:  # the first of each code, with its detail
                    self.seen.add(code)
                    detail = f"no answer in {cfg.session_timeout:g}s" if own_timeout else e.detail
                    print(f"loadtest: {code}: {detail}" + (" (retrying)" if retryable(code) else ""),
                          file=sys.stderr, flush=True)
                if not retryable(code):
                    rec.error = code
                    if isinstance(e, SessionError):
                        self.fatal = e
                    self.stopping = True
                    return
                if self.stopping:
                    rec.error = code
                    return
                await asyncio.sleep(cfg.backoff * (0.5 + random.random()))
                continue
            except asyncio.CancelledError:
                self._absorb(rec, stream)
                rec.error = "cancelled"
                raise
            finally:
                self.live.pop(id(rec), None)
            self._absorb(rec, stream)
            s = stream.stats
            rec.output_tokens = s.tokens
            # the stream's clock starts inside generate(): its first token counts from there
            rec.ttft = stream.acct.t0 - t0 + s.ttft_s
            rec.e2el = time.perf_counter() - t0
            rec.itl = list(s.inter_token_s)
            return

    @staticmethod
    def _absorb(rec: RequestRecord, stream) -> None:
        """An attempt's counts into its request (every attempt's tokens, as /metrics counts)."""
        s = stream.stats
        rec.sent.tokens += s.tokens
        rec.sent.side_used += s.side_used
        rec.sent.requests += s.requests
        rec.sent.corrections += s.corrections
        rec.sent.lockstep += s.lockstep
        rec.bytes_up += s.bytes_up
        rec.bytes_down += s.bytes_down
        rec.output_tokens = s.tokens
        rec.m_budget = s.m_budget

    async def _one(self, agents: list[EdgeAgent], phase: Phase, t0: float, u: int | None = None,
                   ) -> None:
        u, prompt, mode, wire, seed = self._job(u)
        rec = RequestRecord(mode.value, time.perf_counter() - t0, len(prompt),
                            wire=wire.value if mode.uses_side else "")
        phase.records.append(rec)
        try:
            await self._request(agents[u], prompt, mode, seed, rec)
        finally:
            if self.on_finish is not None:
                self.on_finish(rec)

    # ---- the two loops -----------------------------------------------------------------
    def _more(self, phase: Phase, limit: int) -> bool:
        return not self.stopping and (not limit or len(phase.records) < limit)

    async def _closed(self, agents: list[EdgeAgent], phase: Phase, t0: float, limit: int,
                      users: int) -> None:
        cfg = self.cfg

        async def user(k: int) -> None:
            await asyncio.sleep(cfg.ramp * k / users)
            while self._more(phase, limit):
                await self._one(agents, phase, t0, k % len(self.users))
                if cfg.think:
                    await asyncio.sleep(cfg.think)

        await asyncio.gather(*(user(k) for k in range(users)))

    async def _open(self, agents: list[EdgeAgent], phase: Phase, t0: float, limit: int,
                    rate: float) -> None:
        cfg = self.cfg
        cap = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
        tasks: set[asyncio.Task] = set()

        async def capped() -> None:  # latency counts from the slot, not the arrival (as vLLM)
            if cap is None:
                return await self._one(agents, phase, t0)
            async with cap:
                if not self.stopping:
                    await self._one(agents, phase, t0)

        arrivals = gaps(rate, cfg.burstiness, cfg.seed + len(self.phases))
        due = time.perf_counter()
        sent = 0
        try:
            while not self.stopping and (not limit or sent < limit):
                await asyncio.sleep(max(0.0, due - time.perf_counter()))  # 0: a turn for the rest
                t = asyncio.get_running_loop().create_task(capped())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
                sent += 1
                due += next(arrivals)
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _sample(self, phase: Phase, t0: float) -> None:
        while True:
            tokens = blocking = 0
            for r in phase.records:
                tokens += r.sent.tokens
                blocking += r.sent.blocking
            for _, stream in list(self.live.values()):
                tokens += stream.stats.tokens
                blocking += stream.stats.blocking
            phase.timeline.add(time.perf_counter() - t0, tokens, blocking, len(self.live))
            if self.on_sample is not None and self.phase is phase:
                self.on_sample(phase)
            await asyncio.sleep(self.cfg.sample)

    async def _phase(self, agents: list[EdgeAgent], rate: float | None, limit: int,
                     duration: float, measured: bool = True) -> Phase:
        phase = Phase(rate)
        self.phase = phase if measured else None
        url, loop = self.cfg.broker_metrics, asyncio.get_running_loop()
        before = await loop.run_in_executor(None, queue_wait.read, url) if url and measured else None
        phase.started = t0 = time.perf_counter()
        cpu0 = time.process_time()
        sampler = asyncio.get_running_loop().create_task(self._sample(phase, t0))
        if rate is None:
            work = self._closed(agents, phase, t0, limit, self.cfg.concurrency if measured
                                else max(1, min(limit, self.cfg.concurrency)))
        else:
            work = self._open(agents, phase, t0, limit, rate)
        try:
            if duration:
                try:
                    async with asyncio.timeout(duration):
                        await work
                except TimeoutError:
                    pass  # --duration is up: requests in flight are cancelled and counted
            else:
                await work
        finally:
            phase.seconds = time.perf_counter() - t0
            phase.cpu_s = time.process_time() - cpu0
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            phase.timeline.add(phase.seconds, sum(r.sent.tokens for r in phase.records),
                               sum(r.sent.blocking for r in phase.records), 0)
        if url and measured:
            phase.queue = queue_wait.between(before, await loop.run_in_executor(None, queue_wait.read, url))
        return phase

    async def run(self) -> list[Phase]:
        """Warm-up, then every phase; until done, SIGINT/SIGTERM (the phase in progress is
        cut short and counted, later ones skipped) or an error no retry can fix (raised after
        the agents are closed, with the phases so far in `self.phases`)."""
        cfg, loop = self.cfg, asyncio.get_running_loop()
        agent_cfg = AgentConfig(window=cfg.window, compute_device=cfg.compute_device)
        agents = [EdgeAgent(edge, cfg.broker, keys=self.keys, cfg=agent_cfg) for edge, _ in self.users]
        main = asyncio.current_task()

        def halt() -> None:
            self.stopping = True
            if main is not None:
                main.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, halt)
        try:
            if cfg.warmup:
                await self._phase(agents, None, cfg.warmup, 0.0, measured=False)
            for rate in cfg.rates or [None]:
                if self.stopping:
                    break
                self.phases.append(Phase(rate))  # replaced when it ends
                self.phases[-1] = await self._phase(agents, rate, cfg.num_prompts, cfg.duration)
        except asyncio.CancelledError:
            if self.phase is not None and self.phases:  # what the cut-short phase measured
                self.phases[-1] = self.phase
                self.phase.seconds = self.phase.seconds or (
                    self.phase.timeline.points[-1][0] if self.phase.timeline.points else 0.0)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            for agent in agents:
                await agent.close()
        if self.fatal is not None:
            raise self.fatal
        return self.phases


def offered(rate: float | None) -> str:
    if rate is None:
        return "closed"
    return "inf" if math.isinf(rate) else f"{rate:g}"
