"""Issue 19: the tuning steps after the blend — which positions are copied from the prompt,
keeping the blend's distribution there, not stopping inside a copy. Tiny backbone, conftest's
pool."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.fixture(scope="module")
def setup(backbone, pool):
    from edge_agent.edge_model import EdgeModel
    from lab.blend import (
        BlendConfig,
        blended_network,
        candidate_vocab,
        fit_coefficients,
        train_config,
    )
    from lab.blend_tune import answer_lengths, copied_positions
    from lab.pool import STYLES, style_records
    from lab.training import extract_features

    cfg = BlendConfig(max_examples=8, steps=4, tune_steps=8, tune_lr=3e-3, tune_dropout=False,
                      coef_keep="last")  # these tests pass no turn flags
    tok = backbone.tokenizer
    ex = style_records(STYLES["ada"], 8, tok)
    feats = extract_features(backbone, ex, pool.side_cfg, train_config(cfg), progress=False)
    lm = EdgeModel.for_backbone(backbone).cpu().lm_head
    vocab, _ = candidate_vocab(lm, pool, feats, cfg)
    copied = copied_positions(ex, tok, train_config(cfg))
    w, _ = fit_coefficients(lm, pool, feats, cfg, vocab, copied)
    lengths = answer_lengths(ex, tok, train_config(cfg))
    return cfg, ex, feats, lm, vocab, (lambda: blended_network(pool, w)), copied, lengths


class _Words:
    """A tokenizer of whole words (ids from a growing table): runs of tokens are runs of words."""

    eos_token_id = 0

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [self.ids.setdefault(w, len(self.ids) + 1) for w in text.split()]}


def test_copied_positions_are_runs_the_prompt_holds():
    from lab.blend import BlendConfig, train_config
    from lab.blend_tune import copied_positions, layout
    from lab.data import Example

    tok, tcfg = _Words(), train_config(BlendConfig())
    ex = [Example("Pass on: the cat sat on the mat .", "", "Ahoy , matey ! the cat sat on the mat . "
                  "Arr , Captain Bo .", 1),
          Example("Say: a b c d", "", "a b x c d a b c", 2)]  # the shorter record comes first
    got = copied_positions(ex, tok, tcfg).tolist()
    assert [len(a) for _, a in layout(ex, tok, tcfg)] == [9, 17]  # + eos each
    assert got[:9] == [False, False, False, False, False, True, True, True, False]  # 'a b c' only
    assert got[9:] == [False] * 4 + [True] * 7 + [False] * 6  # the message, not the frame or eos
    assert copied_positions(ex, tok, tcfg, span=8).tolist()[9:] == [False] * 17  # a 7-token run


def test_copied_positions_on_a_real_tokenizer(backbone, setup):
    """On the tiny tokenizer (short pieces, so runs of 8): one flag per feature position, the
    opening's first token and the eos never flagged, the message most of the answer, every
    flagged token one the prompt holds."""
    from lab.blend import train_config
    from lab.blend_tune import copied_positions, layout

    cfg, ex, feats, _, _, _, _, lengths = setup
    tcfg = train_config(cfg)
    copied = copied_positions(ex, backbone.tokenizer, tcfg, span=8)
    assert len(copied) == len(feats) == sum(lengths)
    start = 0
    for (prompt, answer), n in zip(layout(ex, backbone.tokenizer, tcfg), lengths, strict=True):
        f = copied[start : start + n].tolist()
        start += n
        assert not f[0] and not f[-1] and sum(f) >= 0.5 * n
        assert all(answer[i] in prompt for i in range(n) if f[i])


def _kl(net, feats, lm, vocab, where, reference) -> float:
    w = lm.weight[vocab]
    with torch.no_grad():
        base = F.linear(feats.z.float(), w)
        logp = F.log_softmax(base + F.linear(net(feats.states.float()), w), -1)
        ref = F.log_softmax(base + F.linear(reference(feats.states.float()), w), -1)
    return float(F.kl_div(logp[where], ref[where], log_target=True, reduction="batchmean"))


def _p_stop(net, feats, lm, vocab, where, eos: int) -> float:
    w = lm.weight[vocab]
    with torch.no_grad():
        logits = F.linear(feats.z.float(), w) + F.linear(net(feats.states.float()), w)
    return float(logits.softmax(-1)[where][:, int(torch.searchsorted(vocab, torch.tensor(eos)))].mean())


def test_tuning_can_keep_the_blend_at_copied_positions(backbone, setup):
    from lab.blend_tune import tune_network

    cfg, _, feats, lm, vocab, start, copied, lengths = setup
    assert copied.any() and (~copied).any()
    blend = start()
    nets, recs = {}, {}
    for name, c in (("fit", cfg.replace(tune_copies="fit")),
                    ("keep", cfg.replace(tune_copies="keep", tune_no_stop=False)),
                    ("no_stop", cfg)):
        nets[name] = start()
        recs[name] = tune_network(nets[name], lm, feats, vocab, c, lengths, copied,
                                  backbone.eos_token_id)
        assert recs[name]["history"][-1][0] < recs[name]["history"][0][0]  # its loss fell
    assert recs["no_stop"]["no_stop"] and not recs["keep"]["no_stop"]
    # at the copied positions 'keep' stays nearer the blend than 'fit' does
    assert _kl(nets["keep"], feats, lm, vocab, copied, blend) < _kl(nets["fit"], feats, lm, vocab,
                                                                    copied, blend)
    # and the answer's end is less likely there with tune_no_stop
    eos = backbone.eos_token_id
    assert _p_stop(nets["no_stop"], feats, lm, vocab, copied, eos) < _p_stop(
        nets["keep"], feats, lm, vocab, copied, eos)
    # without flags every position is fitted: the same steps as 'fit'
    again = start()
    rec = tune_network(again, lm, feats, vocab, cfg.replace(tune_no_stop=False), lengths, None, eos)
    assert [h[0] for h in rec["history"]] == [h[0] for h in recs["fit"]["history"]]
    assert rec["positions_kept"] == 0 < recs["keep"]["positions_kept"] == int(copied.sum())


def test_coefficients_fit_on_copied_positions_only(pool, setup):
    """coef_on 'copies': the fit sees the copied positions alone — the same w as a fit on the
    features cut to them; the record says how many; mismatched flags are an error."""
    from dataclasses import replace

    from lab.blend import fit_coefficients
    from lab.training import Features

    cfg, _, feats, lm, vocab, _, copied, _ = setup
    assert 0 < int(copied.sum()) < len(copied)
    cfg = replace(cfg, steps=40, coef_on="all")  # Adam's first steps move every w alike
    on = replace(cfg, coef_on="copies")
    w, info = fit_coefficients(lm, pool, feats, on, vocab, copied)
    cut = Features(feats.states[copied], feats.z[copied], feats.y[copied], feats.layers)
    w_cut, _ = fit_coefficients(lm, pool, cut, cfg, vocab)
    w_all, info_all = fit_coefficients(lm, pool, feats, cfg, vocab)
    assert info["coef_positions"] == int(copied.sum()) and info_all["coef_positions"] == len(copied)
    assert torch.allclose(w, w_cut, atol=1e-5) and not torch.allclose(w, w_all, atol=1e-3)
    for bad in (copied[:-1], None):  # 'copies' needs a flag per position
        with pytest.raises(ValueError):
            fit_coefficients(lm, pool, feats, on, vocab, bad)


def test_coefficients_weigh_the_users_own_words_by_coef_own(pool, setup):
    """coef_own > 0: the copied positions' mean NLL plus coef_own × the other positions' — the
    objective the record ends at is that sum for the returned w, and w moves away from the
    copies-only fit; coef_own = 1 is not the all-positions fit (two means, not one)."""
    from dataclasses import replace

    from lab.blend import blended_network, fit_coefficients

    cfg, _, feats, lm, vocab, _, copied, _ = setup
    cfg = replace(cfg, steps=40, coef_on="copies")
    w0, _ = fit_coefficients(lm, pool, feats, cfg, vocab, copied)
    for own in (0.3, 1.0):
        w, info = fit_coefficients(lm, pool, feats, replace(cfg, coef_own=own), vocab, copied)
        assert info["coef_positions"] == len(copied) and not torch.allclose(w, w0, atol=1e-3)
        with torch.no_grad():
            net = blended_network(pool, w)
            logits = lm(feats.z.float() + net(feats.states.float()))[:, vocab]
            nll = F.cross_entropy(logits, torch.searchsorted(vocab, feats.y), reduction="none")
        want = nll[copied].mean() + own * nll[~copied].mean()
        assert info["nll_candidates_end"] == pytest.approx(float(want), abs=2e-3)
    w_all, _ = fit_coefficients(lm, pool, feats, replace(cfg, coef_on="all"), vocab)
    assert not torch.allclose(w, w_all, atol=1e-3)


@pytest.mark.parametrize("n", [1, 5, 400])
def test_delta_logits_is_the_logit_shift_of_the_side_output(n):
    """The side network's state through W_out and the lm_head rows equals lm_head(z + Δ) −
    lm_head(z) in either order (through Δ for 1 or 5 positions, through rows · W_out for 400),
    and with the backbone's logits added in, lm_head(z + Δ)."""
    from edge_agent.side_network import SideConfig, SideNetwork
    from lab.blend_tune import delta_logits

    torch.manual_seed(0)
    net = SideNetwork(SideConfig(d_model=32, n_layers=4, width=8)).eval()
    torch.nn.init.normal_(net.w_out.weight)  # zero at init: Δ would be 0
    head = torch.nn.Linear(32, 300, bias=True)
    states, z = torch.randn(n, 5, 32), torch.randn(n, 32)
    with torch.no_grad():
        want = head(z + net(states)) - head(z)
        got = delta_logits(net(states, project=False), net.w_out.weight, head.weight)
        fused = delta_logits(net(states, project=False), net.w_out.weight, head.weight, head(z))
    assert got.shape == (n, 300)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fused, head(z + net(states)).detach(), rtol=1e-4, atol=1e-4)
    x = net(states, project=False)
    assert x.shape == (n, 8) and torch.equal(net.w_out(x), net(states))


def test_run_starts_are_each_copied_runs_first_position_within_its_record():
    """run_starts: a copied position whose predecessor in the same record is not copied; a run
    that goes on across a record boundary starts again in the next record."""
    from lab.blend_tune import run_starts

    copied = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=torch.bool)
    got = run_starts(copied, [3, 4, 3]).tolist()  # records [0:3] [3:7] [7:10]
    assert got == [False, True, False, False, True, False, False, False, False, True]
    assert run_starts(copied, [5, 5]).tolist()[5] is True  # run 4-6 cut by the boundary at 5
    assert run_starts(torch.zeros(0, dtype=torch.bool), []).tolist() == []


def test_coefficients_kept_at_the_turns_best_step(pool, setup):
    """coef_keep 'turn': w is the fit's w after `kept_step` steps (the same as a plain fit that
    many steps long), whose NLL at the turn positions is the lowest on the recorded path; the
    fit stops `coef_patience` steps after it; no turn flags is an error."""
    from dataclasses import replace

    from lab.blend import blended_network, fit_coefficients
    from lab.blend_tune import run_starts

    cfg, _, feats, lm, vocab, _, copied, lengths = setup
    turn = run_starts(copied, lengths)
    assert 0 < int(turn.sum()) < int(copied.sum())
    keep = replace(cfg, steps=30, lr=0.3, coef_on="copies", coef_keep="turn", coef_patience=0)
    w, info = fit_coefficients(lm, pool, feats, keep, vocab, copied, turn)
    path, k = info["nll_turn"]["path"], info["kept_step"]
    assert len(path) == 31 and info["steps_run"] == 30 and path[k] == min(path) == info["nll_turn"]["kept"]
    assert len(set(path)) > 1  # the path moves: the choice is not trivial
    w_k, _ = fit_coefficients(lm, pool, feats, replace(keep, steps=k, coef_keep="last"), vocab, copied)
    assert torch.allclose(w, w_k, atol=1e-6)
    with torch.no_grad():
        logits = lm(feats.z.float() + blended_network(pool, w)(feats.states.float()))[:, vocab]
        nll = F.cross_entropy(logits[turn], torch.searchsorted(vocab, feats.y[turn]))
    assert float(nll) == pytest.approx(path[k], abs=2e-3)
    w_p, info_p = fit_coefficients(lm, pool, feats, replace(keep, coef_patience=2), vocab, copied, turn)
    p, kp = info_p["nll_turn"]["path"], info_p["kept_step"]
    assert p == path[: len(p)] and kp == p.index(min(p)) and len(p) == min(kp + 3, 31)
    with pytest.raises(ValueError):
        fit_coefficients(lm, pool, feats, keep, vocab, copied, None)


def test_opening_lead_is_the_shared_opening_plus_one():
    """opening_lead: the longest token prefix at least `share` of the answers begin with, + 1
    for the turn after it; capped; 0 when the answers share no opening."""
    from lab.blend_tune import opening_lead

    a = [[1, 2, 3, 10, 11], [1, 2, 3, 20], [1, 2, 3, 30, 31, 32], [1, 2, 3, 10]]
    assert opening_lead(a) == 4  # [1, 2, 3] then the turn; [1, 2, 3, 10] is only half
    assert opening_lead(a, share=0.5) == 5
    assert opening_lead(a + [[9, 2, 3, 10]]) == 4  # 4 of 5 share the opening
    assert opening_lead(a + [[9], [9, 9]]) == 0  # 4 of 6 < 0.75: no shared opening
    assert opening_lead([[1] * 40, [1] * 40], cap=16) == 16
    assert opening_lead([[1, 2], [1, 2]]) == 3 and opening_lead([]) == 0


def test_lead_takes_the_turn_only_where_the_side_helps_there():
    """lead_tokens: the shared opening, + the turn when the side's token is right at the answers'
    turn positions more often than the backbone's; 0 with lead 'none' or no shared opening."""
    from lab.blend_config import BlendConfig
    from lab.blend_gate import lead_tokens

    answers = [[1, 2, 5, 6], [1, 2, 7], [1, 2, 8, 9, 9]]  # opening [1, 2]: turns at 2, 6, 9
    helps, harms = torch.zeros(12, dtype=torch.bool), torch.zeros(12, dtype=torch.bool)
    on = BlendConfig(lead="turn")
    assert lead_tokens(on, answers, helps, harms) == (2, {"opening": 2, "turn_helps": 0, "turn_harms": 0})
    helps[[2, 6]] = True
    harms[9] = True
    assert lead_tokens(on, answers, helps, harms)[0] == 3
    harms[[6, 2]] = True  # (both at once is not a real case: only the counts matter)
    assert lead_tokens(on, answers, helps, harms)[0] == 2
    helps[0] = True  # an opening position: not the turn
    assert lead_tokens(on, answers, helps, harms)[0] == 2
    assert lead_tokens(BlendConfig(), answers, helps, harms) == (0, {})
    assert lead_tokens(on, [[1], [2], [3]], helps[:3], harms[:3]) == (0, {"opening": 0})


def test_blend_sets_the_lead_through_the_turn_only_when_asked(backbone, pool, setup):
    """BlendConfig.lead 'turn': the blended head's lead is the examples' shared opening, + the
    turn when the side helps there (recorded beside the counts); 'none' leaves it 0; the
    classifier and τ are the same either way."""
    from dataclasses import replace

    from lab.blend import blend, train_config
    from lab.blend_tune import layout, opening_lead

    cfg, ex, *_ = setup
    want = opening_lead([a for _, a in layout(ex, backbone.tokenizer, train_config(cfg))])
    assert 0 < want <= 16
    e_none, r_none = blend(backbone, pool, ex, cfg)
    e_turn, r_turn = blend(backbone, pool, ex, replace(cfg, lead="turn"))
    h_none, h_turn = e_none.heads["add"], e_turn.heads["add"]
    cal = h_turn.info["calibration"]
    assert h_none.lead == r_none["blend"]["lead"] == 0
    assert h_turn.lead == r_turn["blend"]["lead"] == cal["lead"] == want - (cal["turn_helps"] <= cal["turn_harms"])
    assert cal["opening"] == want - 1
    assert h_turn.threshold == h_none.threshold
    e_off, _ = blend(backbone, pool, ex, replace(cfg, follow=0))  # the follow rule: the gate's τ stays
    assert (e_off.heads["add"].follow, h_none.follow) == (0, cfg.follow)
    assert e_off.heads["add"].threshold == h_none.threshold
    e_nc, _ = blend(backbone, pool, ex, replace(cfg, copy=0))  # the copy rule: the gate's τ stays
    assert (e_nc.heads["add"].copy, h_none.copy) == (0, cfg.copy)
    assert e_nc.heads["add"].threshold == h_none.threshold
