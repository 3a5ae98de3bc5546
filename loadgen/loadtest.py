"""`spa loadtest`: one process hosting many edge users against a broker.

Each user runs generations back to back (prompt and mode taken in turn from the lists), all
sessions of the process share one EdgeAgent (one DEALER socket). The process serves the agent
metrics on /metrics, prints a progress line every few seconds and a summary at the end: per
mode sessions, tokens, M, side usage, TTFT and inter-token latency percentiles, errors by code.

Transient refusals (no worker yet, all busy, a worker lost beyond the replays, a timeout) are
counted and retried after a back-off; any other ERROR (a bundle for another backbone, a bad
request) stops the run with that error, since retrying cannot fix it.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.agent import EdgeAgent, SessionError
from edge_agent.edge_model import EdgeModel
from monitoring import metrics
from routing import security
from routing.errors import ErrorCode, InputError, SpaError
from routing.modes import Mode
from routing.sampling import Sampling

RETRYABLE = frozenset(c.value for c in ErrorCode if c.retryable)  # the job is handed out again


@dataclass
class LoadConfig:
    broker: str
    modes: list[Mode]
    concurrency: int = 8  # users (sessions in flight); sane range 1–1024
    sessions: int = 0  # stop after this many finished generations (0 = no limit)
    duration_s: float = 0.0  # stop after this long (0 = no limit)
    max_new_tokens: int = 32
    window: int = 8
    think_s: float = 0.0  # pause between one user's generations
    ramp_s: float = 0.0  # users start spread over this long
    backoff_s: float = 1.0  # wait after a transient refusal; sane range 0.1–10 s
    session_timeout_s: float = 120.0
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    report_s: float = 5.0  # progress line interval (0 = none)
    keys: security.ClientKeys | None = None  # CURVE; None = plaintext

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InputError(f"--concurrency must be >= 1, got {self.concurrency}")
        if self.sessions < 0 or self.duration_s < 0:
            raise InputError("--sessions and --duration must be >= 0")
        if not self.modes:
            raise InputError("--modes is empty")


@dataclass
class ModeTotals:
    sessions: int = 0
    tokens: int = 0
    side: int = 0
    blocking: int = 0
    ttft_s: list[float] = field(default_factory=list)
    itl_s: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        def pct(xs: list[float], q: float) -> float | None:
            return float(np.percentile(xs, q)) if xs else None

        return {"sessions": self.sessions, "tokens": self.tokens, "blocking": self.blocking,
                "m": self.blocking / self.tokens if self.tokens else 0.0,
                "side_rate": self.side / self.tokens if self.tokens else 0.0,
                "ttft_p50_s": pct(self.ttft_s, 50), "ttft_p95_s": pct(self.ttft_s, 95),
                "itl_p50_s": pct(self.itl_s, 50), "itl_p95_s": pct(self.itl_s, 95),
                "itl_p99_s": pct(self.itl_s, 99)}


@dataclass
class LoadReport:
    by_mode: dict[str, ModeTotals] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    def add(self, mode: Mode, stream, finished: bool = True) -> None:
        """A generation's counts; an unfinished one (cancelled, refused) adds its tokens so far
        (the metrics counted them too) but not a session."""
        t = self.by_mode.setdefault(mode.value, ModeTotals())
        s = stream.stats
        t.sessions += int(finished)
        t.tokens += s.tokens
        t.side += s.side_used
        t.blocking += s.blocking
        if s.tokens:
            t.ttft_s.append(s.ttft_s)
        t.itl_s.extend(s.inter_token_s)

    @property
    def sessions(self) -> int:
        return sum(t.sessions for t in self.by_mode.values())

    def to_dict(self) -> dict:
        tokens = sum(t.tokens for t in self.by_mode.values())
        blocking = sum(t.blocking for t in self.by_mode.values())
        secs = self.seconds or time.monotonic() - self.started
        return {"seconds": secs, "sessions": self.sessions, "tokens": tokens, "blocking": blocking,
                "m": blocking / tokens if tokens else 0.0, "tokens_per_s": tokens / max(secs, 1e-9),
                "errors": dict(self.errors),
                "modes": {k: v.summary() for k, v in sorted(self.by_mode.items())}}

    def line(self) -> str:
        d = self.to_dict()
        errs = " ".join(f"{k}={v}" for k, v in sorted(self.errors.items())) or "none"
        return (f"[{d['seconds']:6.1f}s] sessions={d['sessions']} tokens={d['tokens']} "
                f"({d['tokens_per_s']:.0f} tok/s) M={d['m']:.3f} errors: {errs}")


def load_prompts(path: str | None, tokenizer, max_prompt_tokens: int = 384,
                 n_default: int = 64) -> list[list[int]]:
    """Prompts as token ids, at most `max_prompt_tokens` each, from a JSONL task file
    (instruction/output or document/summary: the long part is cut, the cue kept), a text file
    (one prompt a line, `\\n` for a newline; the head is kept), or, with no path, the built-in
    personal-style tasks."""
    from lab.data import load_examples, read_prompt_file, record_to_example

    if max_prompt_tokens < 1:
        raise InputError(f"--max-prompt-tokens must be >= 1, got {max_prompt_tokens}")
    if path is None:
        from lab.synthetic import make_personal_tasks

        examples = [record_to_example(r, i + 1, "builtin")
                    for i, r in enumerate(make_personal_tasks(n_default, seed=2))]
    elif path.endswith(".jsonl"):
        examples = load_examples(path)
    else:
        return [tokenizer(ln)["input_ids"][:max_prompt_tokens] for ln in read_prompt_file(path)]
    if not examples:
        raise InputError(f"{path}: no prompts in the file")
    return [ex.prompt_ids(tokenizer, max_prompt_tokens) for ex in examples]


class LoadTest:
    """`users` holds one (bundle, prompts) per private user; simulated user k is a device of
    user k mod len(users), with that user's bundle and prompts, on that bundle's EdgeAgent."""

    def __init__(self, users: list[tuple[EdgeModel, list[list[int]]]], cfg: LoadConfig) -> None:
        if not users:
            raise InputError("a load test needs at least one bundle")
        for edge, _ in users:
            for mode in cfg.modes:
                if not edge.supports(mode):
                    edge.head_for(mode)  # raises with the reason
        self.users, self.cfg = users, cfg
        self.report = LoadReport()
        self.issued = 0  # generations handed out (picks prompt, mode and seed)
        # refused jobs, per bundle, handed out again first
        self.retry: list[deque[tuple[list[int], Mode, int]]] = [deque() for _ in users]
        self.stopping = False
        metrics.init_agent_series([m.value for m in cfg.modes])

    def _next(self, u: int) -> tuple[list[int], Mode, int] | None:
        cfg = self.cfg
        if self.stopping:
            return None
        if self.retry[u]:
            return self.retry[u].popleft()
        if cfg.sessions and self.issued >= cfg.sessions:
            return None
        i = self.issued
        self.issued += 1
        prompts = self.users[u][1]
        return prompts[i % len(prompts)], cfg.modes[i % len(cfg.modes)], cfg.seed + i

    async def _user(self, agent: EdgeAgent, k: int) -> None:
        cfg, u = self.cfg, k % len(self.users)
        await asyncio.sleep(cfg.ramp_s * k / cfg.concurrency)
        while (job := self._next(u)) is not None:
            prompt, mode, seed = job
            stream = agent.generate(prompt, cfg.max_new_tokens, mode,
                                    Sampling(cfg.temperature, cfg.top_k, seed), cfg.window)
            try:
                async with asyncio.timeout(cfg.session_timeout_s):
                    async for _ in stream:
                        pass
            except (SessionError, TimeoutError) as e:
                code = e.code if isinstance(e, SessionError) else ErrorCode.TIMEOUT.value
                self.report.add(mode, stream, finished=False)
                if not self.report.errors[code]:  # the first of each code, with its detail
                    detail = e.detail if isinstance(e, SessionError) else f"no answer in {cfg.session_timeout_s:g}s"
                    print(f"loadtest: {code}: {detail}" + (" (retrying)" if code in RETRYABLE else ""),
                          file=sys.stderr, flush=True)
                self.report.errors[code] += 1
                if code == ErrorCode.TIMEOUT:
                    metrics.ERRORS.labels("agent", code).inc()
                if code not in RETRYABLE:
                    self.stopping = True
                    raise
                self.retry[u].append(job)  # handed out again: nothing is lost
                await asyncio.sleep(cfg.backoff_s * (0.5 + random.random()))
                continue
            except asyncio.CancelledError:
                self.report.add(mode, stream, finished=False)
                raise
            self.report.add(mode, stream)
            if cfg.think_s:
                await asyncio.sleep(cfg.think_s)

    async def _progress(self) -> None:
        while self.cfg.report_s:
            await asyncio.sleep(self.cfg.report_s)
            print(self.report.line(), file=sys.stderr, flush=True)

    async def run(self) -> LoadReport:
        """Until --sessions are done, --duration is up, SIGINT/SIGTERM, or an error that a
        retry cannot fix (raised). Generations in flight at a stop are cancelled and their
        tokens so far counted."""
        cfg, loop = self.cfg, asyncio.get_running_loop()
        self.report.started = time.monotonic()
        agents = [EdgeAgent(edge, cfg.broker, cfg.window, cfg.keys) for edge, _ in self.users]
        progress = loop.create_task(self._progress())
        users = [loop.create_task(self._user(agents[k % len(agents)], k))
                 for k in range(cfg.concurrency)]

        def halt() -> None:
            self.stopping = True
            for u in users:
                u.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, halt)
        timer = loop.call_later(cfg.duration_s, halt) if cfg.duration_s else None
        try:
            results = await asyncio.gather(*users, return_exceptions=True)
        finally:
            halt()
            if timer:
                timer.cancel()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            progress.cancel()
            await asyncio.gather(*users, progress, return_exceptions=True)
            for agent in agents:
                await agent.close()
            self.report.seconds = time.monotonic() - self.report.started
        for r in results:
            if isinstance(r, Exception):
                raise r
        return self.report


def ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f}" if seconds is not None else "-"


def main(args) -> None:
    from edge_agent.bundle import load_bundle
    from routing import aio
    from routing.modes import parse_modes
    from routing.security import client_keys

    cfg = LoadConfig(broker=args.broker, modes=[Mode.parse(m) for m in parse_modes(args.modes)],
                     concurrency=args.concurrency, sessions=args.sessions,
                     duration_s=args.duration, max_new_tokens=args.max_new_tokens,
                     window=args.window, think_s=args.think, ramp_s=args.ramp,
                     session_timeout_s=args.session_timeout, temperature=args.temperature,
                     top_k=args.top_k, seed=args.seed, report_s=args.report)
    if args.models:  # every user `spa build-models` made, each with its held-out prompts
        from lab.build import ModelSet

        if args.bundle or args.prompts:
            raise InputError("--models names the bundles and prompts: drop --bundle/--prompts")
        models = ModelSet.load(args.models)
        sources = [(models.bundle(n), str(models.prompts(n))) for n in models.user_names()]
    elif args.bundle:
        sources = [(args.bundle, args.prompts)]
    else:
        raise InputError("give --bundle (and --prompts) or --models")
    users = []
    for bundle, prompts in sources:
        edge = load_bundle(bundle)
        users.append((edge, load_prompts(prompts, edge.tokenizer, args.max_prompt_tokens)))
    cfg.keys = client_keys(args, "agent")
    test = LoadTest(users, cfg)  # its series exist at 0 before the first scrape
    metrics.serve(args.metrics_port, args.metrics_addr)
    print(f"loadtest: {cfg.concurrency} users of {len(users)} bundles, modes {','.join(m.value for m in cfg.modes)}, "
          f"broker {cfg.broker}" + (f", /metrics on :{args.metrics_port}" if args.metrics_port else ""),
          file=sys.stderr, flush=True)
    if args.delay:
        time.sleep(args.delay)
    failure = None
    try:
        report = aio.run(test.run())
    except SessionError as e:  # the summary of what ran is still printed
        failure, report = e, test.report
    d = report.to_dict()
    if args.json == "-":
        print(json.dumps(d), flush=True)
    elif args.json:
        tmp = Path(args.json + ".tmp")
        tmp.write_text(json.dumps(d, indent=1))
        tmp.replace(args.json)  # whole or absent, for whoever polls for it
    print(report.line(), file=sys.stderr)
    for mode, s in d["modes"].items():
        print(f"  {mode:>6}: sessions={s['sessions']} tokens={s['tokens']} M={s['m']:.3f} "
              f"side={s['side_rate']:.2f} TTFT p50={ms(s['ttft_p50_s'])}ms "
              f"ITL p50/p95/p99={ms(s['itl_p50_s'])}/{ms(s['itl_p95_s'])}/{ms(s['itl_p99_s'])}ms",
              file=sys.stderr)
    if args.linger and args.metrics_port:
        print(f"serving /metrics for {args.linger:g}s more", file=sys.stderr, flush=True)
        time.sleep(args.linger)
    if failure is not None:
        raise SpaError(f"loadtest stopped: {failure}")
