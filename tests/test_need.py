"""Issue 19 item 3: the need router (edge_agent/need.py) — fitting, recall, its file."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.need import NeedConfig, NeedRouter, prompt_embedding
from routing.errors import InputError


def _two_topics(n: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    shared = [0, 1, 2, 3]  # a chat template's tokens, in every prompt
    pos = [shared + torch.randint(10, 30, (12,), generator=g).tolist() for _ in range(n)]
    neg = [shared + torch.randint(60, 120, (12,), generator=g).tolist() for _ in range(n * 3)]
    return pos, neg


def _lm_head(v: int = 128, d: int = 64) -> torch.nn.Linear:
    torch.manual_seed(0)
    head = torch.nn.Linear(d, v, bias=False)
    head.weight.data.normal_()
    return head


def test_need_router_separates_topics_and_keeps_recall():
    head = _lm_head()
    pos, neg = _two_topics(16, 0)
    r = NeedRouter.fit(pos, neg, head, NeedConfig(recall=0.95))
    assert r.info["oof_recall"] >= 0.9
    test_pos, test_neg = _two_topics(16, 1)
    kept = sum(r.customised(p, head) for p in test_pos) / len(test_pos)
    sent = sum(r.customised(p, head) for p in test_neg) / len(test_neg)
    assert kept >= 0.8 and sent <= 0.2


def test_need_threshold_in_the_middle_of_a_separating_gap():
    """Separated out of fold: the threshold sits halfway between the lowest user prompt and the
    highest generic one (below the recall quantile); overlapping: the recall quantile."""
    head = _lm_head()
    pos, neg = _two_topics(16, 0)
    r = NeedRouter.fit(pos, neg, head, NeedConfig(recall=0.95))
    lo, hi = r.info["oof_lowest"], r.info["oof_generic_highest"]
    assert lo > hi and r.threshold == pytest.approx((lo + hi) / 2)
    assert r.info["oof_recall"] == 1.0 and r.info["oof_generic_as_customised"] == 0.0
    # one topic for both: no gap, so the threshold keeps 95 % of the user's prompts out of fold
    mixed = NeedRouter.fit(pos, pos * 3, head, NeedConfig(recall=0.95))
    assert mixed.info["oof_lowest"] <= mixed.info["oof_generic_highest"]
    assert mixed.threshold > mixed.info["oof_lowest"]


def test_need_router_on_disk(tmp_path):
    head = _lm_head()
    pos, neg = _two_topics(8, 2)
    r = NeedRouter.fit(pos, neg, head, NeedConfig(steps=50))
    r.save(tmp_path)
    back = NeedRouter.load(tmp_path, 64)
    assert torch.equal(back.scores(pos, head), r.scores(pos, head))
    assert NeedRouter.load(tmp_path / "none", 64) is None
    with pytest.raises(InputError, match="expected"):
        NeedRouter.load(tmp_path, 32)
    with pytest.raises(InputError, match="outside the vocabulary"):
        prompt_embedding([[500]], head)
    with pytest.raises(InputError, match="empty prompt"):
        prompt_embedding([[]], head)
    with pytest.raises(InputError, match="needs"):
        NeedRouter.fit(pos[:1], neg, head, NeedConfig())


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=200), st.dictionaries(
    st.sampled_from(["format", "weight", "bias", "threshold", "info"]),
    st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=5),
              st.lists(st.floats(allow_nan=True), max_size=4), st.just("spa-need-router/1")))))
def test_need_file_parsing_never_crashes(tmp_path_factory, content):
    d = tmp_path_factory.mktemp("need")
    (d / "need.json").write_text(content if isinstance(content, str) else json.dumps(content))
    try:
        r = NeedRouter.load(d, 4)
    except InputError:
        return
    assert r is not None and r.weight.shape == (4,) and torch.isfinite(r.weight).all()
