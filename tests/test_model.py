"""The SPA model on one machine: backbone, side network, bundle, training, reference."""

from __future__ import annotations

import copy

import pytest
import torch

from cloud_worker.backbone import Backbone
from edge_agent.bundle import load_bundle
from edge_agent.edge_model import EdgeModel
from edge_agent.side_network import SideConfig
from lab.data import load_examples
from lab.reference import ReferenceGenerator
from lab.training import TrainConfig, extract_features, train_side
from routing.errors import FingerprintMismatch, InputError
from routing.modes import Mode
from routing.sampling import Sampling

PROMPTS = ["Instruction: Where is it?\nInput: the cat\nResponse:",
           "the old river", "Instruction: Describe it briefly.\nInput: the small ship\nResponse:"]


def test_backbone_states_shapes(backbone):
    ids = torch.tensor([backbone.encode("the cat saw the dog.")])
    out = backbone.forward(ids)
    L, d, T = backbone.n_layers, backbone.d_model, ids.shape[1]
    assert len(out.hidden) == L + 1
    assert all(h.shape == (1, T, d) for h in out.hidden)
    assert torch.equal(out.hidden[L], out.z)
    assert torch.allclose(out.logits, backbone.lm_head(out.z))


def test_fingerprint_stable_and_sensitive(backbone, backbone_dir):
    again = Backbone.load(backbone_dir)
    assert again.fingerprint == backbone.fingerprint
    with torch.no_grad():
        next(again.model.parameters()).add_(0.01)
    del again.__dict__["fingerprint"]
    assert again.fingerprint != backbone.fingerprint


def test_base_mode_equals_hf_greedy_generate(backbone):
    ref = ReferenceGenerator(backbone, None)
    for prompt in PROMPTS:
        ids = backbone.encode(prompt)
        gen = ref.generate(ids, 20, "base", stop_at_eos=False)
        hf = backbone.model.generate(torch.tensor([ids]), max_new_tokens=20, min_new_tokens=20,
                                     do_sample=False, pad_token_id=backbone.eos_token_id)
        assert gen.tokens == hf[0, len(ids):].tolist()
        assert gen.stats.m == 0.0


def test_full_with_zero_output_projection_equals_base(backbone, trained):
    edge = copy.deepcopy(trained[0])
    torch.nn.init.zeros_(edge.heads["add"].side.w_out.weight)
    ref = ReferenceGenerator(backbone, edge)
    for prompt in PROMPTS:
        ids = backbone.encode(prompt)
        full = ref.generate(ids, 16, "full", stop_at_eos=False)
        base = ref.generate(ids, 16, "base", stop_at_eos=False)
        assert full.tokens == base.tokens
        assert full.stats.m == 1.0 and full.stats.corrections == 0


def test_m_per_mode(backbone, trained, tasks_file):
    edge = trained[0]
    ref = ReferenceGenerator(backbone, edge)
    examples = load_examples(tasks_file)[120:140]
    totals = {}
    for mode in Mode:
        from routing.transmissions import Transmissions

        t = Transmissions()
        for ex in examples:
            g = ref.generate(ex.prompt_ids(backbone.tokenizer), 16, mode)
            t += g.stats
            assert len(g.paths) == len(g.tokens) == g.stats.tokens
            assert g.stats.side_used == g.paths.count("side")
            assert g.stats.corrections == sum(g.corrected)
        totals[mode] = t
    assert totals[Mode.BASE].m == 0.0
    assert totals[Mode.LST].m == 1.0 and totals[Mode.FULL].m == 1.0
    for mode in (Mode.CHOICE, Mode.SPA):
        t = totals[mode]
        assert 0.0 < t.m < 1.0, (mode, t)
        assert t.m == (t.requests + t.corrections) / t.tokens
        assert t.requests == t.side_used


def test_seeded_sampling_replays(backbone, trained):
    ref = ReferenceGenerator(backbone, trained[0])
    ids = backbone.encode(PROMPTS[0])
    s = Sampling(temperature=1.0, top_k=50, seed=7)
    a = ref.generate(ids, 20, "spa", s, stop_at_eos=False)
    b = ref.generate(ids, 20, "spa", s, stop_at_eos=False)
    c = ref.generate(ids, 20, "spa", Sampling(1.0, 50, seed=8), stop_at_eos=False)
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens


def test_eos_stops(backbone):
    ref = ReferenceGenerator(backbone, None)
    gen = ref.generate(backbone.encode("the cat"), 400, "base")
    if gen.finished_by == "eos":
        assert gen.tokens[-1] == backbone.eos_token_id
    else:
        assert len(gen.tokens) == 400


def test_training_never_touches_backbone(backbone, tasks_file):
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    assert not any(p.requires_grad for p in backbone.model.parameters())
    cfg = TrainConfig(mode="spa", epochs=2)
    side_cfg = SideConfig(backbone.d_model, backbone.n_layers)
    examples = load_examples(tasks_file)[:40]
    feats = extract_features(backbone, examples[:30], side_cfg, cfg, progress=False)
    dev = extract_features(backbone, examples[30:], side_cfg, cfg, progress=False)
    edge = EdgeModel.for_backbone(backbone)
    head = edge.new_head("add", side_cfg)
    hist = train_side(edge, head, feats, dev, cfg, progress=False)
    assert all(p.grad is None for p in backbone.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in backbone.model.state_dict().items())
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_training_lowers_loss(trained):
    _, record = trained
    for combine in ("add", "replace"):
        hist = record["heads"][combine]["side_history"]
        assert min(h["dev_loss"] for h in hist) < hist[0]["dev_loss"]
        assert hist[-1]["train_loss"] < hist[0]["train_loss"]
        cal = record["heads"][combine]["calibration"]
        assert cal["dev_nll_side"] < cal["dev_nll_base"]


def test_bundle_round_trip(backbone, trained, bundle_dir):
    edge = trained[0]
    loaded = load_bundle(bundle_dir, backbone.fingerprint)
    assert loaded.fingerprint == edge.fingerprint
    for combine, head in edge.heads.items():
        other = loaded.heads[combine]
        assert other.threshold == head.threshold
        assert other.side.cfg == head.side.cfg
        for (k, v), (k2, v2) in zip(head.side.state_dict().items(),
                                    other.side.state_dict().items(), strict=True):
            assert k == k2 and torch.equal(v, v2)
    ids = backbone.encode(PROMPTS[2])
    a = ReferenceGenerator(backbone, edge).generate(ids, 16, "spa")
    b = ReferenceGenerator(backbone, loaded).generate(ids, 16, "spa")
    assert a.tokens == b.tokens and a.stats == b.stats


def test_bundle_for_another_backbone_is_refused(bundle_dir):
    with pytest.raises(FingerprintMismatch) as err:
        load_bundle(bundle_dir, "0" * 64)
    assert "0" * 64 in str(err.value)


def test_bad_requests(backbone, trained):
    ref = ReferenceGenerator(backbone, trained[0])
    with pytest.raises(InputError, match="empty prompt"):
        ref.generate([], 5, "spa")
    with pytest.raises(InputError, match="max_new_tokens"):
        ref.generate([1, 2], 0, "spa")
    with pytest.raises(InputError, match="unknown mode"):
        ref.generate([1, 2], 5, "fast")
