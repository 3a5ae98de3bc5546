"""The blend's shortcuts (RESULTS §10.11) against the long way: the coefficient fit on each
member's precomputed affine parts, and the gate from the backbone's logits computed once.
Tiny backbone, conftest's pool."""

from __future__ import annotations

import pytest
import torch


def test_gate_from_the_cached_backbone_logits_is_the_same(backbone, pool, monkeypatch):
    """finish_head given the backbone's logits (one full-vocabulary pass in lab/blend.py) trains
    the same classifier and τ as finish_head computing them itself, cached or (past
    CACHED_POSITIONS, a trained comparator's records) batch by batch."""
    import lab.blend_gate as bg
    from lab.blend import BlendConfig, blend, train_config
    from lab.blend_gate import finish_head
    from lab.pool import STYLES, style_records

    cfg = BlendConfig(max_examples=8, steps=6, tune_steps=2, clf_epochs=2)
    feats: list = []
    edge, _ = blend(backbone, pool, style_records(STYLES["ada"], 8, backbone.tokenizer), cfg,
                    features_out=feats)
    head, f = edge.heads["add"], feats[0]
    with torch.no_grad():
        logits = edge.lm_head(f.z.float())
    runs = []
    for given, limit in ((None, bg.CACHED_POSITIONS), (logits, bg.CACHED_POSITIONS), (None, 0)):
        monkeypatch.setattr(bg, "CACHED_POSITIONS", limit)
        torch.manual_seed(5)
        finish_head(edge, head, f, train_config(cfg), cfg, None, given)
        runs.append((head.threshold, {k: v.clone() for k, v in head.classifier.state_dict().items()}))
    assert bg.backbone_logits(edge, f) is None  # past the limit: not cached
    for other in runs[1:]:
        assert runs[0][0] == other[0]
        assert all(torch.equal(v, other[1][k]) for k, v in runs[0][1].items())


@pytest.mark.parametrize("gates", [False, True])
def test_pool_basis_is_the_blended_network(backbone, pool, gates):
    """The coefficient fit's logits from each member's precomputed affine parts equal the
    explicitly blended network's, values and gradient in w; the side network on its own parts
    is the side network."""
    from torch.func import functional_call

    from edge_agent.edge_model import EdgeModel
    from edge_agent.side_network import SideConfig, SideNetwork
    from lab.blend import BlendConfig, train_config
    from lab.blend_basis import PoolBasis
    from lab.pool import STYLES, style_records
    from lab.training import extract_features

    ex = style_records(STYLES["bo"], 4, backbone.tokenizer)
    feats = extract_features(backbone, ex, pool.side_cfg, train_config(BlendConfig()), progress=False)
    states, z = feats.states.float(), feats.z.float()
    lm = EdgeModel.for_backbone(backbone).cpu().lm_head
    rows = lm.weight[torch.arange(0, lm.weight.shape[0], 3)].detach()  # a candidate vocabulary
    fixed = z @ rows.T
    if gates:  # the pool's members with LST-style gates: blended as weights too
        torch.manual_seed(0)
        cfg = SideConfig(**{**pool.side_cfg.to_dict(), "gates": True})
        pool.side_cfg, saved = cfg, (pool.side_cfg, pool.base, pool.members)
        pool.base = {**pool.base, "alpha": torch.zeros(len(cfg.layers))}
        pool.members = {m: {**sd, "alpha": torch.randn(len(cfg.layers))} for m, sd in pool.members.items()}
    try:
        basis = PoolBasis(pool, states, rows, fixed)
        w = torch.tensor([0.7, -0.4, 1.3], requires_grad=True)
        got = basis.logits(w)
        base = pool.base
        params = {k: v + sum(wk * (pool.members[m][k] - v) for wk, m in zip(w, pool.names, strict=True))
                  for k, v in base.items()}
        net = pool.network("base")
        want = fixed + functional_call(net, params, (states,)) @ rows.T
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        g_got, = torch.autograd.grad(got.square().mean(), w)
        g_want, = torch.autograd.grad(want.square().mean(), w)
        assert torch.allclose(g_got, g_want, rtol=1e-3, atol=1e-5)
        single = SideNetwork(pool.side_cfg).eval()
        single.load_state_dict(pool.members[pool.names[0]])
        assert torch.equal(single(states), single(None, parts=single.parts(states)))
    finally:
        if gates:
            pool.side_cfg, pool.base, pool.members = saved
