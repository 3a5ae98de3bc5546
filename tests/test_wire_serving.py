"""Quantised frames end to end over real sockets (issue 22): sessions opened with int8 and int4
wire dtypes equal the reference generator under the same grid token for token, with fewer bytes
from the cloud; a bundle saved int8 serves at fp and int8 weights."""

from __future__ import annotations

import asyncio
import copy

import pytest

from edge_agent.agent import EdgeAgent
from lab.reference import ReferenceGenerator
from spa.stack import LocalStack

MAX_NEW = 12


@pytest.fixture(scope="module")
def stack(backbone_dir, tmp_path_factory):
    with LocalStack(backbone_dir, workers=1, log_dir=tmp_path_factory.mktemp("wire")) as s:
        yield s


async def _serve(stack, edge, jobs):
    agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)

    async def one(p, mode, wire):
        s = agent.generate(p, MAX_NEW, mode, wire_dtype=wire)
        async for _ in s:
            pass
        return s

    try:
        return await asyncio.wait_for(asyncio.gather(*(one(*j) for j in jobs)), 120)
    finally:
        await agent.close()


def _check(stack, backbone, edge, prompts, modes, wires):
    jobs = [(p, m, w) for m in modes for w in wires for p in prompts]
    streams = asyncio.run(_serve(stack, edge, jobs))
    ref = ReferenceGenerator(backbone, edge)
    down: dict = {}
    for (p, m, w), s in zip(jobs, streams, strict=True):
        r = ref.generate(p, MAX_NEW, m, wire_dtype=w)
        assert s.tokens == r.tokens, f"mode={m} wire={w}"
        assert s.paths == r.paths and s.stats.m == r.stats.m
        down[(m, w)] = down.get((m, w), 0) + s.stats.bytes_down
    return down


def test_int8_and_int4_sessions_equal_the_reference(stack, backbone, edge, prompts):
    down = _check(stack, backbone, edge, prompts[:4], ["full", "choice"], ["fp16", "int8", "int4"])
    for m in ("full", "choice"):
        assert down[(m, "int8")] < down[(m, "fp16")] and down[(m, "int4")] < down[(m, "int8")], m


def test_gated_sessions_fetch_quantised_hidden_states(stack, backbone, bundle_dir, prompts):
    """The gate fires everywhere: every position's HIDDEN comes from the ring as int8/int4 codes."""
    from edge_agent.bundle import load_bundle

    edge = load_bundle(bundle_dir)
    edge.heads["add"].threshold = -1e9
    _check(stack, backbone, edge, prompts[:4], ["spa"], ["int8", "int4"])


def test_bundle_saved_int8_serves_at_fp_and_int8(stack, backbone, edge, prompts, tmp_path):
    from edge_agent.bundle import load_bundle, save_bundle

    out = save_bundle(copy.deepcopy(edge), tmp_path / "b8", weights="int8")
    small = load_bundle(out)
    assert (out / "weights.safetensors").stat().st_size < 0.5 * sum(
        v.numel() * 4 for h in edge.heads.values() for v in h.side.state_dict().values())
    for resident in ("fp32", "int8"):
        served = load_bundle(out, resident=resident)
        linear = type(served.heads["add"].side.w_in).__name__
        assert linear == ("Int8Linear" if resident == "int8" else "Linear")
        _check(stack, backbone, served, prompts[:3], ["full"], ["int8"])
    kit = small.lm_head.weight
    assert (kit - edge.lm_head.weight).abs().max() <= edge.lm_head.weight.abs().amax() / 127
