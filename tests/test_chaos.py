"""Chaos: users generate without pause while workers are killed (-9) and restarted at random and
the broker is killed and restarted once. A checker verifies every finished session against the
reference generator (tokens and M), every token delivered once and in order, and prints sessions,
faults, replays and tokens lost — which must be 0."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from edge_agent.agent import EdgeAgent, SessionError
from lab.reference import ReferenceGenerator
from spa.stack import LocalStack

MODES = ("spa", "base", "full", "choice")
USERS, MAX_NEW, FAULTS = 12, 40, 5
CAPACITY = 8  # per worker: with one worker down, 12 users do not fit: replays meet BUSY


def test_chaos_every_session_equals_the_reference(backbone_dir, backbone, edge, prompts, tmp_path):
    prompts = prompts[:USERS]
    ref = ReferenceGenerator(backbone, edge)
    expected = {(i, m): ref.generate(p, MAX_NEW, m) for i, p in enumerate(prompts) for m in MODES}
    rng = random.Random(7)
    faults: list[str] = []
    finished: list[tuple] = []  # (prompt index, mode, stream, pieces)
    refused: list[str] = []  # new sessions refused (BUSY, NO_WORKER): the user tries again

    with LocalStack(backbone_dir, workers=2, log_dir=tmp_path, worker_args=("--max-sessions", str(CAPACITY))) as stack:
        async def user(agent, k: int, stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                i, mode = (k + n) % len(prompts), MODES[(k + n) % len(MODES)]
                n += 1
                stream, pieces = agent.generate(prompts[i], MAX_NEW, mode), []
                try:
                    async for piece in stream:
                        pieces.append(piece)
                        await asyncio.sleep(0.01)  # a device that reads at its own pace
                except SessionError as e:
                    assert e.code in ("BUSY", "NO_WORKER") and not pieces, e  # only a new one's refusal
                    refused.append(e.code)
                    await asyncio.sleep(0.2)
                    continue
                finished.append((i, mode, stream, pieces))

        async def chaos(stop: asyncio.Event) -> None:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(2.0)
            for k in range(FAULTS):
                if k == 2:
                    stack.kill("broker")
                    faults.append("kill -9 broker")
                    await asyncio.sleep(rng.uniform(0.2, 1.0))
                    stack.respawn("broker")
                else:
                    name = rng.choice(["worker0", "worker1"])
                    stack.kill(name)
                    faults.append(f"kill -9 {name}")
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    stack.respawn(name)
                await loop.run_in_executor(None, stack.wait_ready, 120.0)  # both workers back
                await asyncio.sleep(rng.uniform(1.0, 2.5))
            stop.set()

        async def go():
            # the agent's default replay budget (issue 20: what users run, no raised policy)
            agent = EdgeAgent(edge, stack.agents_addr, window=4, keys=stack.agent_keys)
            stop = asyncio.Event()
            try:
                await asyncio.wait_for(asyncio.gather(chaos(stop), *(user(agent, k, stop)
                                                                    for k in range(USERS))), 400)
            finally:
                await agent.close()

        started = time.monotonic()
        asyncio.run(go())

    lost = replays = 0
    for i, mode, stream, pieces in finished:
        want = expected[(i, mode)]
        assert [p.token for p in pieces] == stream.tokens, "a token delivered twice or out of order"
        assert [p.pos for p in pieces] == list(range(len(prompts[i]), len(prompts[i]) + len(pieces)))
        assert stream.tokens == want.tokens, (mode, i, stream.tokens, want.tokens)
        assert stream.stats.m == pytest.approx(want.stats.m), (mode, i, stream.stats, want.stats)
        lost += len(want.tokens) - len(stream.tokens)
        replays += stream.stats.replays
    print(f"\nchaos: {len(finished)} sessions, faults: {', '.join(faults)}; {replays} replays, "
          f"{sum(len(s.tokens) for _, _, s, _ in finished)} tokens, {lost} tokens lost, "
          f"{len(refused)} new sessions refused and retried, "
          f"{time.monotonic() - started:.0f}s")
    assert len(faults) == FAULTS and replays > 0 and lost == 0
    assert len(finished) >= USERS * 2
