"""Issue 19: the pool of side networks, blending a new user from a few examples, routing by need.
Tiny backbone (conftest), small budgets."""

from __future__ import annotations

import json

import pytest
import torch

from edge_agent.need import NeedRouter
from routing.errors import FingerprintMismatch, InputError

STYLES3 = ("letter", "captain", "brief")  # tests/conftest.py pool's members


@pytest.fixture(scope="module")
def blended(backbone, pool):
    from lab.blend import BlendConfig, blend
    from lab.pool import STYLES, style_records

    ex = style_records(STYLES["ada"], 8, backbone.tokenizer)
    return blend(backbone, pool, ex, BlendConfig(max_examples=8, steps=12, clf_epochs=1, tune_steps=0))


def test_pool_members_share_one_shape(pool, backbone):
    from lab.pool import load_pool

    again = load_pool(pool.path, backbone.fingerprint)
    assert again.names == list(STYLES3)
    assert again.side_cfg.layers == pool.side_cfg.layers and pool.side_cfg.layers[0] == 2
    base = again.network("base").state_dict()
    for name in again.names:  # fine-tuned from θ0: same keys and shapes, different values
        sd = again.network(name).state_dict()
        assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in base.items()}
        assert any(not torch.equal(sd[k], base[k]) for k in sd)
    info = json.loads((pool.path / "pool.json").read_text())
    for name in STYLES3:  # each member fits its own style at least as well as the start θ0
        s = info["styles"][name]
        assert s["dev_nll"] <= s["dev_nll_base_net"] + 1e-6
    assert len(again.generic()) == 64


def test_blend_is_a_weighted_combination_of_the_pool(blended, pool):
    from lab.blend import blended_network

    edge, record = blended
    b = record["blend"]
    w = torch.tensor([b["coefficients"][n] for n in pool.names])
    assert len(w) == 3 and b["examples"] == 8 and b["positions"] > 0
    assert b["nll_candidates_end"] <= b["nll_candidates_start"]
    side = edge.heads["add"].side.state_dict()
    want = blended_network(pool, w).state_dict()
    for k, v in side.items():  # θ0 + Σ w_k (θ_k − θ0), up to the 4 digits the record keeps
        assert torch.allclose(v, want[k], atol=1e-3 * (1 + float(want[k].abs().max())))
    assert b["cpu_seconds"]["total"] > 0 and b["seconds"]["total"] > 0
    cal = edge.heads["add"].info["calibration"]
    fire = (edge.heads["add"].classifier.logit(torch.zeros(1, edge.d_model), edge.lm_head))
    assert cal["fire_rate"] == 0.4 and cal["copy"] == edge.heads["add"].copy == 1 and fire.shape == (1,)


def test_tuning_starts_from_the_blend_and_fits_the_examples(backbone, pool):
    """A few steps on all weights lower the examples' loss from the blend's; with a held-back
    slice the kept weights are those of its best step (the blend's own when no step helps)."""
    import dataclasses

    from edge_agent.edge_model import EdgeModel
    from lab.blend import (
        BlendConfig,
        blended_network,
        candidate_vocab,
        fit_coefficients,
        train_config,
    )
    from lab.blend_tune import answer_lengths, record_slices, tune_network
    from lab.pool import STYLES, style_records
    from lab.training import extract_features

    cfg = BlendConfig(max_examples=8, steps=6, tune_steps=6, tune_lr=3e-3, coef_on="all")
    ex = style_records(STYLES["ada"], 8, backbone.tokenizer)
    feats = extract_features(backbone, ex, pool.side_cfg, train_config(cfg), progress=False)
    lengths = answer_lengths(ex, backbone.tokenizer, train_config(cfg))
    eos = backbone.eos_token_id
    assert sum(lengths) == len(feats) and all(  # each record's slice ends with its eos
        int(feats.y[e - 1]) == eos for e in torch.tensor(lengths).cumsum(0).tolist())
    fit, held = record_slices(lengths, 0.25)
    assert len(held) == sum(lengths[-2:]) and len(fit) + len(held) == len(feats)
    assert len(record_slices(lengths, 0.0)[1]) == 0 and len(record_slices([5, 5, 5], 0.5)[1]) == 0
    lm = EdgeModel.for_backbone(backbone).cpu().lm_head
    vocab, _ = candidate_vocab(lm, pool, feats, cfg)
    w, _ = fit_coefficients(lm, pool, feats, cfg, vocab)
    net = blended_network(pool, w)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    rec = tune_network(net, lm, feats, vocab, cfg, lengths)
    assert rec["kept_step"] == 6 and len(rec["history"]) == 6
    assert rec["history"][-1][0] < rec["history"][0][0]  # the examples' loss fell
    assert any(not torch.equal(v, start[k]) for k, v in net.state_dict().items())
    held_cfg = dataclasses.replace(cfg, tune_holdout=0.25, tune_lr=0.1)  # a large step size
    net = blended_network(pool, w)
    rec = tune_network(net, lm, feats, vocab, held_cfg, lengths)
    best = min([h for _, h in rec["history"]])
    if rec["kept_step"] == 0:  # no step beat the blend on the held-back slice: the blend is kept
        assert all(torch.equal(v, start[k]) for k, v in net.state_dict().items())
    else:
        assert rec["history"][rec["kept_step"] - 1][1] == best
    assert tune_network(net, lm, feats, vocab, BlendConfig(tune_steps=0)) == {"steps": 0}
    with pytest.raises(ValueError, match="every target"):
        tune_network(net, lm, feats, vocab[vocab != feats.y[0]], cfg, lengths)


def test_a_blend_is_reproducible_by_its_seed(backbone, pool):
    """The tuning's dropout draws come from `seed`: the same seed, the same network (whatever
    the caller's RNG did before); another seed, another draw. The caller's RNG is untouched."""
    from lab.blend import BlendConfig, blend
    from lab.pool import STYLES, style_records

    ex = style_records(STYLES["ada"], 6, backbone.tokenizer)
    cfg = BlendConfig(max_examples=6, steps=3, tune_steps=3, tune_lr=3e-3, clf_epochs=1)

    def weights(c: BlendConfig, noise: int) -> dict:
        torch.manual_seed(noise)
        edge, _ = blend(backbone, pool, ex, c)
        return edge.heads["add"].side.state_dict()

    a, b, c = weights(cfg, 1), weights(cfg, 2), weights(cfg.replace(seed=1), 1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    blend(backbone, pool, ex, cfg)
    assert torch.equal(torch.rand(3), expected)  # the caller's RNG goes on where it was


def test_tuning_can_move_only_the_output_projection(backbone, pool):
    """tune_params='out': the steps move W_out only; without dropout they are deterministic."""
    from edge_agent.edge_model import EdgeModel
    from lab.blend import BlendConfig, blended_network, candidate_vocab, train_config
    from lab.blend_tune import tune_network
    from lab.pool import STYLES, style_records
    from lab.training import extract_features

    cfg = BlendConfig(max_examples=6, tune_steps=3, tune_lr=3e-3, tune_params="out", tune_dropout=False)
    ex = style_records(STYLES["ada"], 6, backbone.tokenizer)
    feats = extract_features(backbone, ex, pool.side_cfg, train_config(cfg), progress=False)
    lm = EdgeModel.for_backbone(backbone).cpu().lm_head
    vocab, _ = candidate_vocab(lm, pool, feats, cfg)
    w = torch.zeros(len(pool.names))
    outs = []
    for _ in range(2):
        net = blended_network(pool, w)
        start = {k: v.clone() for k, v in net.state_dict().items()}
        rec = tune_network(net, lm, feats, vocab, cfg)
        moved = {k for k, v in net.state_dict().items() if not torch.equal(v, start[k])}
        assert moved == {"w_out.weight"}
        outs.append([loss for loss, _ in rec["history"]])
    assert outs[0] == outs[1]  # no dropout: the same steps twice


def test_capped_coefficient_loss():
    """coef_cap: c·tanh(nll/c) per position — the plain mean at 0, ≤ c, ≈ the NLL where small."""
    from lab.blend import capped_nll

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 50, generator=g) * 4
    target = torch.randint(0, 50, (64,), generator=g)
    plain = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(capped_nll(logits, target, 0.0), plain)
    capped = capped_nll(logits, target, 1.0)
    assert capped < plain and capped <= 1.0
    easy = torch.zeros(4, 50)
    easy[torch.arange(4), torch.arange(4)] = 12.0  # NLL ≈ 3e-4 each
    assert torch.allclose(capped_nll(easy, torch.arange(4), 2.0),
                          torch.nn.functional.cross_entropy(easy, torch.arange(4)), rtol=1e-3)


def test_gain_gate_fires_on_the_positions_the_side_helps(backbone, pool):
    """τ 'gain': the gate fires on at least gain_recall of the teacher-forced positions where the
    side's token is the target and the backbone's is not; never when it helps nowhere."""
    from lab.blend import BlendConfig, blend, train_config
    from lab.blend_gate import finish_head, side_gain, threshold
    from lab.pool import STYLES, style_records
    from lab.training import NEVER

    cfg = BlendConfig(max_examples=8, steps=6, tune_steps=4, tune_lr=3e-3, clf_epochs=2,
                      gate_labels="both", tau_rule="gain", gain_recall=0.8)
    feats: list = []
    edge, _ = blend(backbone, pool, style_records(STYLES["ada"], 8, backbone.tokenizer), cfg,
                    features_out=feats)
    head = edge.heads["add"]
    helps, harms = side_gain(edge, head, feats[0])
    cal = head.info["calibration"]
    assert cal["helps"] == int(helps.sum()) and cal["harms"] == int(harms.sum())
    assert not bool((helps & harms).any())
    with torch.no_grad():
        logit = head.classifier.logit(feats[0].z.float(), edge.lm_head).double()
    if bool(helps.any()):
        assert float((logit[helps] > head.threshold).float().mean()) >= 0.8
    else:
        assert head.threshold == NEVER
    assert threshold(logit, torch.zeros_like(helps), cfg) == NEVER
    rate = threshold(logit, helps, BlendConfig(tau_rule="rate", fire_rate=0.25))
    assert abs(float((logit > rate).float().mean()) - 0.25) < 0.05
    finish_head(edge, head, feats[0], train_config(cfg), BlendConfig(gate_labels="gain", tau_rule="gain"))
    assert head.info["calibration"]["tau_rule"] == "gain"


def test_blended_bundle_loads_and_generates(blended, backbone, tmp_path):
    from edge_agent.bundle import load_bundle
    from lab.batched import BatchConfig, BatchedGenerator
    from lab.blend import save_blended
    from lab.pool import STYLES, style_records
    from routing.modes import Mode

    edge, record = blended
    out = save_blended(edge, record, tmp_path / "user", kits=tmp_path / "kits")
    loaded = load_bundle(out, backbone.fingerprint, kits=tmp_path / "kits")
    need = NeedRouter.load(out, loaded.d_model)
    assert need is not None and need.threshold == edge.need.threshold
    # the follow rule (BlendConfig.follow, default 1) travels with the head and is recorded
    head = edge.heads["add"]
    assert loaded.heads["add"].follow == head.follow == head.info["calibration"]["follow"] == 1
    assert loaded.heads["add"].copy == head.copy == head.info["calibration"]["copy"] == 1  # the copy rule too
    ex = style_records(STYLES["ada"], 10, backbone.tokenizer)[8:]
    prompts = [e.prompt_ids(backbone.tokenizer, 128) for e in ex]
    gen = BatchedGenerator(backbone, loaded, BatchConfig(4, progress=False))
    for g in gen.generate(prompts, 6, Mode.SPA):
        assert 1 <= g.stats.tokens <= 6
    # the router decides from the prompt and the kit's lm_head alone
    assert isinstance(need.customised(prompts[0], loaded.lm_head), bool)


def test_blend_refuses_bad_input(backbone, pool, tmp_path):
    from lab.blend import BlendConfig, blend
    from lab.pool import STYLES, load_pool, style_records

    ex = style_records(STYLES["ada"], 2, backbone.tokenizer)
    with pytest.raises(InputError, match="at least 2 examples"):
        blend(backbone, pool, ex[:1], BlendConfig())
    with pytest.raises(FingerprintMismatch):
        load_pool(pool.path, "0" * 64)
    with pytest.raises(InputError, match="not a side-network pool"):
        load_pool(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "weights.safetensors").write_bytes((pool.path / "weights.safetensors").read_bytes())
    meta = json.loads((pool.path / "pool.json").read_text())
    (bad / "pool.json").write_text(json.dumps({**meta, "side": {**meta["side"], "width": 3}}))
    with pytest.raises(InputError, match="does not fit"):
        load_pool(bad)
    (bad / "pool.json").write_text("{not json")
    with pytest.raises(InputError, match="manifest"):
        load_pool(bad)
    with pytest.raises(InputError):
        BlendConfig(steps=-1)


def test_cli_blend_missing_pool_is_one_line(tmp_path, capsys):
    from spa.cli import main

    rc = main(["blend", "--pool", str(tmp_path / "nope"), "--examples", str(tmp_path / "x.jsonl"),
               "--out", str(tmp_path / "b")])
    assert rc == 2
    assert "not a side-network pool" in capsys.readouterr().err


def test_blend_report_routing_and_gap():
    """The mixed stream's M and the customised half's Rouge-L, and the gap closed, by hand."""
    from types import SimpleNamespace as NS

    from lab.blend_report import gap_interval, markdown, routing_row

    spa_c = NS(sessions=[(10, 0.5), (10, 0.5)], scores=[50.0, 60.0])
    base_c = NS(sessions=[(10, 0.0), (10, 0.0)], scores=[40.0, 30.0])
    spa_g, base_g = NS(sessions=[(20, 0.25)], scores=[0.0]), NS(sessions=[(20, 0.0)], scores=[0.0])
    r = routing_row([True, False], [False], spa_c, base_c, spa_g, base_g)
    assert r["m_spa_for_all"] == pytest.approx(15 / 40) and r["m_routed"] == pytest.approx(5 / 40)
    assert r["m_fall"] == pytest.approx(2 / 3) and r["customised_kept"] == 0.5
    assert r["rouge_customised_routed"] == 40 and r["paired_routed_minus_all"]["diff"] == -15
    assert gap_interval([0, 0], [5, 5], [10, 10]) == pytest.approx((0.5, 0.5, 0.5))
    rows = {k: {"scores": [1.0, 2.0], "m": 0.5} for k in
            ("base", "blended full", "blended spa", "trained full", "trained spa")}
    blend_rec = {"examples": 2, "positions": 9, "seconds": {"total": 1.0, "features": 0.5},
                 "cpu_seconds": {"total": 2.0}, "cores": 2, "threads": 2, "coefficients": {"a": 0.5}}
    user = {"rows": rows, "blend": blend_rec, "trained": {"records": 4, "seconds": 3.0},
            "routing": {**r, "decision_ms": 1.0}}
    table = markdown({"u1": user, "u2": user}, pooled=True)
    assert "| all | 4 |" in table and "+66.7%" in table and "| u2 | 2 | 9 | 1.00 | 2.00 |" in table


def test_blend_report_variants_rows():
    """--variant rows: their own gap closed, against the trained spa row with their gate."""
    from lab.blend_report import variants_table

    rows = {k: {"scores": s, "m": 0.5} for k, s in (
        ("base", [0.0, 0.0]), ("blended full", [8.0, 8.0]), ("blended spa", [4.0, 4.0]),
        ("trained full", [10.0, 10.0]), ("trained spa", [8.0, 8.0]), ("old full", [5.0, 5.0]),
        ("old spa", [1.0, 1.0]), ("trained spa (old)", [2.0, 2.0]))}
    blend_rec = {"seconds": {"total": 1.0}, "cpu_seconds": {"total": 2.0}}
    user = {"rows": rows, "blend": blend_rec,
            "variants": {"old": {"blend": blend_rec, "trained_spa_row": "trained spa (old)"}}}
    lines = variants_table({"u1": user, "u2": user}, pooled=True)
    got = [ln for ln in lines if ln.startswith("| u1 |") or ln.startswith("| all |")]
    assert got[0].startswith("| u1 | blended | 8.0 | 4.0 | 0.500 | 0.80 [0.80, 0.80] | 0.50 [0.50, 0.50]")
    assert got[1].startswith("| u1 | old | 5.0 | 1.0 | 0.500 | 0.50 [0.50, 0.50] | 0.50 [0.50, 0.50]")
    assert got[-1].startswith("| all | old | 5.0 | 1.0 |  | 0.50")
    assert variants_table({"u1": {**user, "variants": {}}}) == []


def test_blend_report_seed_means():
    """--seeds: each record averaged over a recipe's seeds, then the gap closed; per-seed points."""
    from lab.blend_report import seed_table

    rows = {k: {"scores": s, "m": 0.5} for k, s in (
        ("base", [0.0, 0.0]), ("trained full", [10.0, 10.0]), ("blended full", [8.0, 8.0]),
        ("blended@s1 full", [6.0, 6.0]), ("cap full", [2.0, 2.0]), ("cap@s1 full", [4.0, 4.0]))}
    variants = {v: {} for v in ("blended@s1", "cap", "cap@s1")}
    lines = seed_table({"u1": {"rows": rows, "variants": variants},
                        "u2": {"rows": rows, "variants": variants}}, pooled=True)
    got = [ln for ln in lines if ln.startswith("| u1 |") or ln.startswith("| all |")]
    assert got[0] == "| u1 | blended | 2 | 7.0 | 0.70 [0.70, 0.70] | 0.80, 0.60 |"
    assert got[1] == "| u1 | cap | 2 | 3.0 | 0.30 [0.30, 0.30] | 0.20, 0.40 |"
    assert got[-1].startswith("| all | cap | 2 | 3.0 | 0.30")
    assert seed_table({"u1": {"rows": rows, "variants": {"cap": {}}}}) == []
