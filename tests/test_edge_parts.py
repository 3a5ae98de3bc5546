"""The stream's parts, each on its own: incremental detokenization, the replay policy (a time
budget), accounting, and the batched edge compute (equal to one-at-a-time row for row)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.accounting import Accounting
from edge_agent.decoding import Act, Step
from edge_agent.detok import Detokenizer
from edge_agent.edge_batch import EdgeCompute
from edge_agent.replay import GiveUp, RetryPolicy, Streak, retryable
from routing.errors import RETRYABLE, ErrorCode, InputError
from routing.modes import Mode
from routing.protocol import MsgType
from routing.sampling import Sampling


# ----------------------------------------------------------------- detokenization
def _pieces(tok, ids: list[int]) -> list[str]:
    d = Detokenizer(tok)
    return [d.push(t, final=i == len(ids) - 1) for i, t in enumerate(ids)]


def test_detokenizer_pieces_add_up_to_the_text(edge):
    tok = edge.tokenizer
    text = "Dear friend, the café is open – see you at 7½! 北京 ok"
    ids = tok(text)["input_ids"]
    assert "".join(_pieces(tok, ids)) == tok.decode(ids, skip_special_tokens=True)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_detokenizer_matches_a_full_decode(edge, data):
    tok = edge.tokenizer
    ids = data.draw(st.lists(st.integers(0, len(tok) - 1), min_size=1, max_size=40))
    assert "".join(_pieces(tok, ids)) == tok.decode(ids, skip_special_tokens=True)


def test_detokenizer_decodes_a_short_window(edge):
    """Per token it decodes the few tokens since the last piece, not the whole text."""
    tok = edge.tokenizer
    calls: list[int] = []

    class Counting:
        def decode(self, ids, **kw):
            calls.append(len(ids))
            return tok.decode(ids, **kw)

    ids = tok(" ".join(["the quick brown fox jumps over the lazy dog"] * 20))["input_ids"]
    d = Detokenizer(Counting())
    out = "".join(d.push(t) for t in ids)
    assert out == tok.decode(ids, skip_special_tokens=True)
    assert len(ids) > 150 and max(calls) <= 8


# ----------------------------------------------------------------- replay policy
def test_retryable_codes():
    assert retryable("WORKER_LOST", False) and retryable("TIMEOUT", False)
    assert not retryable("BUSY", False) and retryable("BUSY", True)  # a new session's refusal
    assert not retryable("NO_WORKER", False) and retryable("NO_WORKER", True)
    assert not retryable("BAD_POSITION", True) and not retryable("NOT_OWNER", True)
    assert {c for c in ErrorCode if c.retryable} == set(RETRYABLE)


def test_streak_gives_up_on_its_time_budget():
    p = RetryPolicy(first_delay_s=0.05, max_delay_s=2.0, deadline_s=120.0)
    s = Streak(p)
    assert not s.replaying
    for t in (0.0, 30.0, 90.0, 119.9):  # many replays, all inside the budget
        assert 0 < s.fail(now=t) <= 2.0
    with pytest.raises(GiveUp):
        s.fail(now=120.5)
    s.progressed()  # a new token: a fresh streak, a fresh budget
    assert not s.replaying and s.fail(now=500.0) <= 0.05


def test_streak_attempt_cap_and_defaults():
    s = Streak(RetryPolicy(max_attempts=2))
    s.fail(now=0)
    s.fail(now=0)
    with pytest.raises(GiveUp):
        s.fail(now=0)
    d = RetryPolicy()  # the defaults survive a full pool and a broker restart
    assert d.deadline_s >= 120 and d.max_attempts == 0
    with pytest.raises(InputError):
        RetryPolicy(deadline_s=0.0)
    assert RetryPolicy().replace(deadline_s=30.0).deadline_s == 30.0


# ----------------------------------------------------------------- accounting
def test_accounting_times_tokens():
    t = iter([10.0, 10.5, 10.7, 11.0])
    a = Accounting("spa", clock=lambda: next(t))
    for i, send in enumerate([None, MsgType.CORRECT, None]):
        a.stats.tokens += 1  # the Decoder counts tokens; accounting times them
        a.token(Step(Act.EMIT, 3 + i, 0, 7, "side" if send else "base", send))
    a.stale()
    a.replay()
    s = a.stats
    assert s.ttft_s == pytest.approx(0.5) and s.inter_token_s == pytest.approx([0.2, 0.3])
    assert (s.stale_frames, s.replays) == (1, 1)


# ----------------------------------------------------------------- batched compute
@pytest.mark.parametrize("inline", [False, True])
def test_batched_compute_equals_one_at_a_time(edge, inline):
    d, rng = edge.d_model, np.random.default_rng(0)
    modes = [m for m in (Mode.SPA, Mode.CHOICE, Mode.FULL, Mode.LST) if edge.supports(m)]
    sampling = [Sampling(), Sampling(temperature=0.8, top_k=20, seed=5)]
    asks = []
    for i in range(48):
        mode = modes[i % len(modes)]
        z = (rng.standard_normal(d) * 3).astype(np.float16)
        wire = rng.standard_normal((len(edge.wire_layers(mode)), d)).astype(np.float16)
        asks.append((mode, z, wire, sampling[i % 2], 10 + i))

    async def go():
        compute = EdgeCompute(edge, inline=inline)
        try:
            gates = [compute.gate(m, z) for m, z, *_ in asks]
            gates = [g if isinstance(g, tuple) else await g for g in gates]
            sides = await asyncio.gather(*(compute.side(m, z, w, s, p) for m, z, w, s, p in asks))
            return gates, sides, compute
        finally:
            compute.close()

    gates, sides, compute = asyncio.run(go())
    for (mode, z, wire, s, pos), (fire, g), tok in zip(asks, gates, sides, strict=True):
        want_fire, want_g = edge.gate(mode, torch.from_numpy(z))
        assert fire == want_fire and g == pytest.approx(want_g, rel=1e-5, abs=1e-6)
        assert tok == edge.side_token(mode, torch.from_numpy(z), torch.from_numpy(wire), s, pos)
    assert compute.rows >= 48 + 24 and compute.batches <= 3  # batched, not one at a time


def test_compute_on_another_device_is_a_copy_with_the_same_answers(edge):
    """`compute_device` (a load tester beside a GPU) computes on `on_device`'s copy: here the copy
    is made for the CPU so the test runs anywhere; its answers equal the original's, the original
    is untouched, and the tokenizer and grid are shared rather than copied."""
    from edge_agent.edge_batch import on_device

    twin = on_device(edge, "cpu")
    assert twin is not edge and twin.tokenizer is edge.tokenizer and twin.grid is edge.grid
    assert twin.lm_head.weight.data_ptr() != edge.lm_head.weight.data_ptr()
    rng = np.random.default_rng(1)
    for mode in (m for m in (Mode.SPA, Mode.FULL, Mode.CHOICE) if edge.supports(m)):
        z = torch.from_numpy((rng.standard_normal((6, edge.d_model)) * 3).astype(np.float32))
        wire = torch.from_numpy(rng.standard_normal((6, len(edge.wire_layers(mode)), edge.d_model))
                                .astype(np.float32))
        assert twin.gate_batch(mode, z) == edge.gate_batch(mode, z)
        assert torch.equal(twin.side_logits(mode, z, wire), edge.side_logits(mode, z, wire))
