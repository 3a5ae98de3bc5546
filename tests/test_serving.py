"""End to end over real sockets and processes: broker + 2 workers as subprocesses, edge agents
in this process. Every session's tokens and M must equal the reference generator's."""

from __future__ import annotations

import asyncio
import os

import pytest
import zmq
from inbox import next_message

from edge_agent.agent import EdgeAgent, SessionError
from edge_agent.budget import BudgetConfig
from edge_agent.bundle import load_bundle
from lab.reference import ReferenceGenerator
from routing.modes import Mode
from routing.protocol import MsgType, encode, msg
from spa.stack import LocalStack


@pytest.fixture(scope="module")
def stack(backbone_dir, tmp_path_factory):
    with LocalStack(backbone_dir, workers=2, log_dir=tmp_path_factory.mktemp("stack")) as s:
        yield s


async def _run(agent, prompt, mode, max_new, budget=None):
    stream = agent.generate(prompt, max_new, mode, budget=budget)
    async for _ in stream:
        pass
    return stream


async def _run_all(stack, edge, jobs, max_new=16, budget=None, sent=None):
    agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)
    if sent is not None:  # record what the agent sends
        send = agent.send
        agent.send = lambda m, *rest: (sent.append(m), send(m, *rest))[1]
    try:
        return await asyncio.wait_for(
            asyncio.gather(*(_run(agent, p, m, max_new, budget) for p, m in jobs)), 120)
    finally:
        await agent.close()


@pytest.mark.parametrize("mode", [m.value for m in Mode])
def test_equivalence_with_reference(stack, backbone, edge, prompts, mode):
    streams = asyncio.run(_run_all(stack, edge, [(p, mode) for p in prompts]))
    ref = ReferenceGenerator(backbone, edge)
    for p, s in zip(prompts, streams, strict=True):
        r = ref.generate(p, 16, mode)
        assert s.tokens == r.tokens, f"mode={mode}"
        assert s.paths == r.paths
        assert (s.stats.requests, s.stats.corrections, s.stats.lockstep) == (
            r.stats.requests, r.stats.corrections, r.stats.lockstep)
        assert s.stats.m == r.stats.m


def test_served_sessions_with_a_lead_equal_the_reference(stack, backbone, edge, prompts):
    """A bundle whose heads send the answer's first tokens to the side network (`lead`) and the
    token after each one where it differed (`follow`) and where the backbone would leave a copy
    of the prompt (`copy`): the agent's sessions equal the reference's, paths and counts
    included."""
    import copy

    edge = copy.deepcopy(edge)
    for head in edge.heads.values():
        head.lead, head.follow, head.copy = 2, 1, 1
    jobs = [(p, m) for p in prompts[:4] for m in ("spa", "choice")]
    streams = asyncio.run(_run_all(stack, edge, jobs))
    ref = ReferenceGenerator(backbone, edge)
    for (p, m), s in zip(jobs, streams, strict=True):
        r = ref.generate(p, 16, m)
        assert s.tokens == r.tokens and s.paths == r.paths and s.paths[:2] == ["side", "side"]
        assert (s.stats.requests, s.stats.corrections) == (r.stats.requests, r.stats.corrections)


@pytest.mark.parametrize("b", [0.2, 0.5])
def test_served_sessions_keep_their_m_budget(stack, backbone, edge, prompts, b):
    """Issue 17 item 3 end to end: OPEN carries b, every served session equals the reference
    under the same budget token for token and path for path, and a 64-token session's M is
    within 0.05 of b (each within the band's (slack + 1)/T); the stats report b and M − b."""
    cfg, sent = BudgetConfig(m_budget=b), []
    jobs = [(p, "spa") for p in prompts[:6]]
    streams = asyncio.run(_run_all(stack, edge, jobs, max_new=64, budget=cfg, sent=sent))
    opens = [m for m in sent if m.type is MsgType.OPEN]
    assert len(opens) == len(jobs) and all(m["m_budget"] == b for m in opens)
    ref = ReferenceGenerator(backbone, edge)
    for p, s in zip(prompts[:6], streams, strict=True):
        r = ref.generate(p, 64, "spa", budget=cfg)
        assert s.tokens == r.tokens and s.paths == r.paths
        assert (s.stats.requests, s.stats.corrections) == (r.stats.requests, r.stats.corrections)
        assert abs(s.stats.m - b) <= (cfg.budget_slack + 1) / s.stats.tokens + 1e-9
        if s.stats.tokens == 64:
            assert abs(s.stats.m - b) <= 0.05
        d = s.stats.to_dict()
        assert d["m_budget"] == b and d["budget_gap"] == pytest.approx(s.stats.m - b)
    plain: list = []  # without a budget: the bundle's τ, and no m_budget on the wire
    fixed = asyncio.run(_run_all(stack, edge, jobs[:1], max_new=64, sent=plain))[0]
    assert fixed.stats.m_budget is None and fixed.stats.to_dict()["budget_gap"] is None
    assert [m.fields.get("m_budget") for m in plain if m.type is MsgType.OPEN] == [None]


def test_forced_corrections_roll_back(stack, backbone, bundle_dir, prompts):
    edge = load_bundle(bundle_dir)
    edge.heads["add"].threshold = -1e9  # the gate fires everywhere: every disagreement corrects
    streams = asyncio.run(_run_all(stack, edge, [(p, "spa") for p in prompts], max_new=20))
    ref = ReferenceGenerator(backbone, edge)
    corrections = stale = 0
    for p, s in zip(prompts, streams, strict=True):
        r = ref.generate(p, 20, "spa")
        assert s.tokens == r.tokens and s.stats.m == r.stats.m
        corrections += s.stats.corrections
        stale += s.stats.stale_frames
    assert corrections > 0
    assert stale > 0  # speculative frames of old epochs were thrown away


def test_mixed_modes_concurrently(stack, backbone, edge, prompts):
    jobs = [(p, m.value) for p, m in zip(prompts, list(Mode) * 4, strict=False)]
    streams = asyncio.run(_run_all(stack, edge, jobs))
    ref = ReferenceGenerator(backbone, edge)
    for (p, m), s in zip(jobs, streams, strict=True):
        assert s.tokens == ref.generate(p, 16, m).tokens


def _raw(stack, key: str = "agent") -> zmq.Socket:
    from routing.security import ClientKeys, connect_as

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    connect_as(s, ClientKeys.from_dir(stack.key_dir, "agent", key))
    s.connect(stack.agents_addr)
    return s


def _answer(sock) -> object:
    return next_message(sock)


def test_bad_messages_get_errors_and_service_goes_on(stack, backbone, edge, prompts):
    a, b = _raw(stack), _raw(stack, "probe")  # two agents, two keys
    a.send_multipart(encode(msg("ACK", session=os.urandom(16), pos=3)))
    assert _answer(a)["code"] == "UNKNOWN_SESSION"
    a.send_multipart([b"\xc1 not msgpack"])
    assert _answer(a)["code"] == "BAD_MESSAGE"
    a.send_multipart([b"x" * (2 << 20)])
    assert _answer(a)["code"] == "TOO_LARGE"
    a.send_multipart(encode(msg("FRAME", session=os.urandom(16), pos=1, epoch=0, token=1)))
    assert _answer(a)["code"] == "FORBIDDEN"  # agents may not send FRAME
    # a session of a's, spoken for by b
    sid = os.urandom(16)
    a.send_multipart(encode(msg("OPEN", session=sid, prompt=prompts[0], max_new_tokens=2, mode="base",
                                window=1, sampling={}, fingerprint=backbone.fingerprint,
                                wire_layers=[], eos=None)))
    assert _answer(a).type == "FRAME"
    b.send_multipart(encode(msg("CORRECT", session=sid, pos=len(prompts[0]), epoch=0, token=1)))
    err = _answer(b)
    assert err["code"] == "NOT_OWNER" and err.session == sid
    a.send_multipart(encode(msg("OPEN", session=os.urandom(16), prompt=[1], max_new_tokens=1,
                                mode="base", window=1, sampling={}, fingerprint="f" * 64,
                                wire_layers=[], eos=None)))
    assert _answer(a)["code"] == "NO_WORKER"
    a.send_multipart(encode(msg("CLOSE", session=sid)))
    a.close(0)
    b.close(0)
    # the broker keeps serving everyone else
    streams = asyncio.run(_run_all(stack, edge, [(p, "spa") for p in prompts[:4]]))
    ref = ReferenceGenerator(backbone, edge)
    assert all(s.tokens == ref.generate(p, 16, "spa").tokens for p, s in zip(prompts, streams, strict=False))


def test_agent_errors_are_raised(stack, edge, prompts):
    async def go():
        agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)
        edge.fingerprint, saved = "0" * 64, edge.fingerprint
        try:
            with pytest.raises(SessionError, match="NO_WORKER"):
                await _run(agent, prompts[0], "spa", 4)
        finally:
            edge.fingerprint = saved
            await agent.close()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_worker_lost_replays_on_another_worker(backbone_dir, backbone, edge, prompts, tmp_path):
    """Kill a worker mid-generation: its sessions get WORKER_LOST, the agents re-open with
    prompt + accepted tokens on the surviving worker, and the output is unchanged."""
    import signal

    with LocalStack(backbone_dir, workers=2, log_dir=tmp_path) as stack:
        async def go():
            agent = EdgeAgent(edge, stack.agents_addr, window=2, keys=stack.agent_keys)
            streams = [agent.generate(p, 40, "spa") for p in prompts[:6]]
            seen = [0]

            async def consume(s):
                async for _ in s:
                    seen[0] += 1
                    if seen[0] == 30:
                        os.killpg(stack.procs[1].pid, signal.SIGKILL)  # worker 0 dies
                return s

            try:
                return await asyncio.wait_for(asyncio.gather(*(consume(s) for s in streams)), 60)
            finally:
                await agent.close()

        streams = asyncio.run(go())
    ref = ReferenceGenerator(backbone, edge)
    assert sum(s.stats.replays for s in streams) > 0
    for p, s in zip(prompts, streams, strict=False):
        assert s.tokens == ref.generate(p, 40, "spa").tokens


def test_queued_sessions_on_several_workers_equal_the_reference(backbone_dir, backbone, edge, prompts, tmp_path):
    """Issue 15: twelve sessions of one agent at once against two workers of two slots each —
    eight wait in the broker's queue, none is bounced, every one equals the reference token for
    token, and both workers serve (the broker places by free slots)."""
    jobs = [(prompts[i % len(prompts)], ("spa", "base", "full")[i % 3]) for i in range(12)]
    with LocalStack(backbone_dir, workers=2, log_dir=tmp_path, metrics=True,
                    worker_args=("--max-sessions", "2")) as stack:
        streams = asyncio.run(_run_all(stack, edge, jobs, max_new=12))
        placed = {w: _opens_taken(stack.metrics_ports[w]) for w in ("worker0", "worker1")}
    ref = ReferenceGenerator(backbone, edge)
    for (p, mode), s in zip(jobs, streams, strict=True):
        assert s.stats.replays == 0 and s.tokens == ref.generate(p, 12, mode).tokens, mode
    assert all(n > 0 for n in placed.values()) and sum(placed.values()) == 12, placed


def _opens_taken(port: int) -> float:
    """OPENs a worker process received, from its /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "spa_messages_total" and s.labels.get("type") == "OPEN"
               and s.labels.get("direction") == "in")
