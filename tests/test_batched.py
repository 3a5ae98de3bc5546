"""The per-token state machine, and the batched generator against the reference oracle."""

from __future__ import annotations

import copy

import pytest
import torch

from edge_agent.decoding import Act, Decoder
from lab.batched import BatchConfig, BatchedGenerator
from lab.data import load_examples
from lab.reference import ReferenceGenerator
from routing.modes import Mode
from routing.sampling import Sampling


def test_decoder_gated_paths_and_counts():
    d = Decoder(Mode.SPA, max_new=4, eos=9, pos=10)
    s = d.frame(5, fire=False)
    assert (s.act, s.token, s.path, s.pos, s.send) == (Act.EMIT, 5, "base", 10, None)
    s = d.frame(6, fire=True, g=0.9)
    assert s.act is Act.REQUEST and s.counted and (s.pos, s.epoch) == (11, 0)
    assert not d.current(11, 0)  # no new frame while the request is pending
    s = d.side(6)  # agrees with the backbone: accepted, no CORRECT
    assert (s.token, s.path, s.send, d.epoch) == (6, "side", None, 0)
    assert d.frame(7, fire=True).act is Act.REQUEST
    s = d.side(8)  # disagrees: CORRECT, a new epoch
    assert (s.send, s.epoch, d.epoch, d.pos) == ("CORRECT", 0, 1, 13)
    assert not d.current(13, 0) and d.current(13, 1)
    s = d.side(9) if d.frame(1, fire=True).act is Act.REQUEST else None
    assert s.done and d.finished_by == "eos"
    t = d.stats
    assert (t.tokens, t.side_used, t.requests, t.corrections, t.lockstep) == (4, 3, 3, 2, 0)
    assert t.m == 5 / 4 and d.corrected == [False, False, True, True]
    assert d.differs == [False, False, True, True] and d.gates[1] == 0.9


def test_decoder_replay_counts_a_request_once():
    d = Decoder(Mode.SPA, max_new=3, eos=None, pos=0)
    assert d.frame(1, fire=True).counted
    d.reopen()  # the worker was lost before HIDDEN came; the new one sends pos 0 again
    assert d.current(0, 0)
    s = d.frame(1, fire=True)
    assert s.act is Act.REQUEST and not s.counted
    d.side(1)
    assert d.stats.requests == 1 and d.stats.m == 1.0


def test_decoder_lockstep_and_length():
    d = Decoder(Mode.FULL, max_new=2, eos=None, pos=3)
    assert d.frame(4, fire=True).act is Act.SIDE
    assert d.side(4).send == "TOKEN"  # every lockstep token waits, even when equal
    assert d.frame(4, fire=True).act is Act.SIDE
    s = d.side(2)
    assert s.send == "TOKEN" and s.done and d.finished_by == "length"
    assert d.stats.lockstep == 2 and d.stats.corrections == 0 and d.stats.m == 1.0
    with pytest.raises(RuntimeError):
        d.frame(1, fire=False)


@pytest.fixture(scope="module")
def prompts(backbone, tasks_file):
    exs = load_examples(tasks_file)[120:134]
    return [ex.prompt_ids(backbone.tokenizer) for ex in exs] + [backbone.encode("the"),
                                                                 backbone.encode("the old river")]


@pytest.mark.parametrize("mode", [m.value for m in Mode])
def test_batched_equals_reference(backbone, trained, prompts, mode):
    """CPU fp32: token for token, path for path, the same M, with chunks and rows leaving."""
    edge = trained[0]
    ref = ReferenceGenerator(backbone, edge)
    batched = BatchedGenerator(backbone, edge, BatchConfig(batch_size=6, progress=False))
    gens = batched.generate(prompts, 14, mode)
    for p, b in zip(prompts, gens, strict=True):
        r = ref.generate(p, 14, mode)
        assert b.tokens == r.tokens and b.paths == r.paths, mode
        assert b.corrected == r.corrected and b.finished_by == r.finished_by
        assert b.stats == r.stats


def test_batched_forced_gate_and_sampling(backbone, trained, prompts):
    edge = copy.deepcopy(trained[0])
    edge.heads["add"].threshold = -1e9  # fires everywhere: every disagreement is a CORRECT
    ref = ReferenceGenerator(backbone, edge)
    s = Sampling(temperature=1.0, top_k=20, seed=3)
    gens = BatchedGenerator(backbone, edge, BatchConfig(batch_size=4, progress=False)).generate(
        prompts[:8], 12, "spa", s, stop_at_eos=False, keep_z=True)
    assert sum(g.stats.corrections for g in gens) > 0
    for p, b in zip(prompts, gens, strict=False):
        r = ref.generate(p, 12, "spa", s, stop_at_eos=False, keep_z=True)
        assert b.tokens == r.tokens and b.stats == r.stats
        assert len(b.z) == len(r.z) == 12  # padding moves the last bits, not the tokens
        assert all(torch.allclose(x.float(), y.float(), atol=2e-2) for x, y in zip(b.z, r.z, strict=True))


def test_decoder_lead_sends_the_opening_to_the_side_network():
    d = Decoder(Mode.SPA, max_new=5, eos=None, pos=0, lead=2)
    for pos in (0, 1):  # the gate says no, the lead says yes
        s = d.frame(7, fire=False)
        assert s.act is Act.REQUEST and s.counted and s.pos == pos
        d.side(7)
    assert d.frame(7, fire=False).act is Act.EMIT  # then the gate decides again
    assert d.paths == ["side", "side", "base"] and d.stats.requests == 2
    d.reopen()  # a replayed session keeps its tokens: the lead is not spent again
    assert d.frame(7, fire=False).act is Act.EMIT


def test_decoder_follow_keeps_the_side_network_after_it_differed():
    """`follow`: after a token where the side's differed from the backbone's, the next `follow`
    tokens consult the side network whatever the gate says; a token where it agreed ends it."""
    d = Decoder(Mode.SPA, max_new=8, eos=None, pos=0, follow=1)
    assert d.frame(7, fire=False).act is Act.EMIT  # nothing differed yet: the gate decides
    assert d.frame(7, fire=True).act is Act.REQUEST
    d.side(9)  # the side network's token differs (a CORRECT)
    s = d.frame(7, fire=False)  # the gate says no, the follow says yes
    assert s.act is Act.REQUEST and s.counted
    d.side(7)  # it agrees now: the phrase is over
    assert d.frame(7, fire=False).act is Act.EMIT
    assert d.paths == ["base", "side", "side", "base"] and d.stats.requests == 2
    two = Decoder(Mode.SPA, max_new=8, eos=None, pos=0, follow=2)
    two.frame(7, fire=True)
    two.side(9)
    for _ in range(2):  # two tokens follow a differing one, agreeing or not
        assert two.frame(7, fire=False).act is Act.REQUEST
        two.side(7)
    assert two.frame(7, fire=False).act is Act.EMIT
    off = Decoder(Mode.SPA, max_new=8, eos=None, pos=0)  # follow 0: the gate alone
    off.frame(7, fire=True)
    off.side(9)
    assert off.frame(7, fire=False).act is Act.EMIT


def test_decoder_copy_consults_the_side_network_where_the_backbone_leaves_a_copy():
    """`copy`: where the answer's last `copy` tokens occur in the prompt and the backbone's
    token continues none of those places, the side network is consulted whatever the gate says;
    a backbone token that continues one of them, or an answer whose tail is not in the prompt,
    leaves it to the gate."""
    from edge_agent.decoding import copy_index

    prompt = [1, 2, 3, 4, 2, 3, 5]
    assert copy_index(prompt, 2) == {(1, 2): {3}, (2, 3): {4, 5}, (3, 4): {2}, (4, 2): {3}}
    assert copy_index(prompt, 0) == {} and copy_index([1, 2], 3) == {}
    d = Decoder(Mode.SPA, max_new=8, eos=None, pos=7, copy=2, copy_next=copy_index(prompt, 2))
    for tok in (2, 3):  # the answer's tail is not yet 2 tokens of the prompt: the gate decides
        assert d.frame(tok, fire=False).act is Act.EMIT
    assert d.frame(5, fire=False).act is Act.EMIT  # (2, 3) -> 5 continues the prompt's 2 3 5
    assert d.frame(9, fire=False).act is Act.EMIT  # (3, 5) ends the prompt: nothing to break
    d2 = Decoder(Mode.SPA, max_new=8, eos=None, pos=7, copy=2, copy_next=copy_index(prompt, 2))
    d2.frame(2, fire=False)
    d2.frame(3, fire=False)
    s = d2.frame(7, fire=False)  # (2, 3) -> 7 leaves both copies: the side network is asked
    assert s.act is Act.REQUEST and s.counted
    d2.side(4)  # it goes on with the prompt's words (a CORRECT)
    assert d2.tokens == [2, 3, 4] and d2.stats.corrections == 1
    assert d2.frame(2, fire=False).act is Act.EMIT  # (3, 4) -> 2: the copy goes on
    off = Decoder(Mode.SPA, max_new=8, eos=None, pos=7)  # copy 0: the gate alone
    for tok in (2, 3, 7):
        assert off.frame(tok, fire=False).act is Act.EMIT


def test_lead_tokens_batched_equal_reference_and_survive_the_bundle(backbone, trained, prompts, tmp_path):
    from edge_agent.bundle import load_bundle, save_bundle
    from routing.errors import InputError

    edge = copy.deepcopy(trained[0])
    for head in edge.heads.values():
        head.lead, head.follow, head.copy = 3, 1, 1
    ref = ReferenceGenerator(backbone, edge)
    no_copy = copy.deepcopy(edge)
    for head in no_copy.heads.values():
        head.copy = 0
    without = ReferenceGenerator(backbone, no_copy)  # the copy rule is exercised: it changes sessions
    assert any(ref.generate(p, 10, "spa").stats.requests != without.generate(p, 10, "spa").stats.requests
               for p in prompts)
    for mode in ("spa", "choice", "full"):
        gens = BatchedGenerator(backbone, edge, BatchConfig(batch_size=5, progress=False)).generate(
            prompts, 10, mode)
        for p, b in zip(prompts, gens, strict=True):
            r = ref.generate(p, 10, mode)
            assert b.tokens == r.tokens and b.paths == r.paths and b.stats == r.stats, mode
            if mode != "full":  # a gated mode: the first three tokens are the side network's
                assert b.paths[:3] == ["side"] * min(3, len(b.paths)), mode
    out = save_bundle(edge, tmp_path / "lead", {})
    h = load_bundle(out).heads["add"]
    assert (h.lead, h.follow, h.copy) == (3, 1, 1)
    meta = out / "bundle.json"
    good = meta.read_text()
    for key, bad in (("lead", "99"), ("follow", "5"), ("follow", "true"), ("follow", "-1"),
                     ("copy", "9"), ("copy", "-1"), ("copy", "1.5")):
        meta.write_text(good.replace(f'"{key}": {3 if key == "lead" else 1}', f'"{key}": {bad}', 1))
        with pytest.raises(InputError, match=key):
            load_bundle(out)
