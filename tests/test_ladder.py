"""LST's ladder side network (edge_agent/ladder.py): it starts as the best rank-r reading of the
backbone's own distribution (the backbone itself at r = d), it learns from there, and a bundle
with one round-trips and serves through the same `EdgeModel` calls."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from edge_agent.bundle import load_bundle, save_bundle
from edge_agent.edge_model import EdgeModel
from edge_agent.ladder import LadderSide
from edge_agent.side_network import SideConfig
from lab.data import load_examples
from lab.training import TrainConfig, evaluate_side, extract_features, train_side
from routing.errors import InputError
from routing.modes import Mode


@pytest.fixture(scope="module")
def feats(backbone, tasks_file):
    cfg = TrainConfig(max_prompt_tokens=64, max_answer_tokens=16)
    side_cfg = SideConfig(backbone.d_model, backbone.n_layers)
    ex = load_examples(tasks_file)
    return (extract_features(backbone, ex[:40], side_cfg, cfg, progress=False),
            extract_features(backbone, ex[40:52], side_cfg, cfg, progress=False))


def _lst_head(backbone, width: int):
    edge = EdgeModel.for_backbone(backbone)
    cfg = SideConfig(backbone.d_model, backbone.n_layers, width=width, kind="lst", dropout=0.1)
    return edge, edge.new_head("replace", cfg)


def test_full_width_ladder_starts_as_the_backbone(backbone, feats):
    train, dev = feats
    edge, head = _lst_head(backbone, backbone.d_model)
    assert isinstance(head.side, LadderSide) and len(head.side.cfg.layers) == backbone.n_layers
    head.side.init_from(train.states.float())
    head.side.eval()
    with torch.no_grad():
        side = edge.lm_head(head.side(dev.states.float()))
        base = edge.lm_head(dev.z.float())
    # the z ladder carries the state (μ_L ≈ 0.007: the other ladders still reach it a little)
    assert (side.argmax(-1) == base.argmax(-1)).float().mean() >= 0.95
    assert evaluate_side(edge, head, dev) == pytest.approx(F.cross_entropy(base, dev.y).item(), abs=0.05)


def test_narrow_ladder_starts_as_a_rank_r_reading_and_learns(backbone, feats):
    train, dev = feats
    edge, head = _lst_head(backbone, max(8, backbone.d_model // 8))
    head.side.init_from(train.states.float())
    head.side.eval()
    u = head.side.out.weight  # (d, r): z's top-r principal directions
    with torch.no_grad():
        side = edge.lm_head(head.side(dev.states.float()))
        reading = edge.lm_head(dev.z.float() @ u @ u.T)
    assert torch.allclose(u.T @ u, torch.eye(u.shape[1]), atol=1e-4)
    assert (side.argmax(-1) == reading.argmax(-1)).float().mean() >= 0.9
    start = evaluate_side(edge, head, dev)
    hist = train_side(edge, head, train, dev, dataclasses.replace(TrainConfig(), epochs=3, lr=3e-3,
                                                                   dropout=0.1), progress=False)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert min(h["dev_loss"] for h in hist) < start
    assert head.side.gates()[-1] != pytest.approx(torch.sigmoid(torch.tensor(-5.0)).item())


def test_lst_bundle_round_trips_and_serves(backbone, feats, tmp_path):
    train, _ = feats
    edge, head = _lst_head(backbone, 16)
    head.side.init_from(train.states.float())
    edge.set_head(dataclasses.replace(head, threshold=0.0))
    edge.eval()  # no dropout: the loaded bundle is in eval mode too
    out = save_bundle(edge, tmp_path / "b", {"test": True})
    loaded = load_bundle(out, backbone.fingerprint)
    side = loaded.heads["replace"].side
    assert isinstance(side, LadderSide) and side.cfg == head.side.cfg
    states = train.states[:5].float()
    z, wire = train.z[:5], states[:, :-1]  # z is the last state; the wire carries the rest
    assert torch.equal(loaded.side_logits(Mode.LST, z, wire), edge.side_logits(Mode.LST, z, wire))
    assert loaded.wire_layers(Mode.LST) == [0] + list(range(1, backbone.n_layers))
    with pytest.raises(InputError):
        SideConfig(backbone.d_model, backbone.n_layers, kind="ladder")
