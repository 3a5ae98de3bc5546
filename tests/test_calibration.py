"""τ by dev quality (issue 17 item 2): the bisection keeps the lowest firing rate whose dev
Rouge-L reaches tau_quality × the side-always run's, on a real (tiny) bundle."""

from __future__ import annotations

import pytest

from lab.train_config import TrainConfig
from routing.errors import InputError


def test_tau_by_is_validated():
    with pytest.raises(InputError):
        TrainConfig(tau_by="rouge")
    with pytest.raises(InputError):
        TrainConfig(tau_by="quality", tau_quality=1.2)


def test_tau_by_quality_keeps_the_lowest_rate_that_reaches_the_goal(backbone, tasks_file):
    from lab.data import load_examples
    from lab.training import train_bundle

    cfg = TrainConfig(mode="spa", epochs=4, clf_epochs=2, rollout_prompts=8, rollout_tokens=12,
                      calib_steps=5, tau_by="quality", tau_quality=0.9, clf_features="z",
                      clf_hidden=0, seed=3)
    edge, record = train_bundle(backbone, load_examples(tasks_file)[:120], cfg, progress=False)
    cal = record["heads"]["add"]["calibration"]
    assert cal["tau_by"] == "quality"
    assert cal["rouge_dev_always"] > 5 and 0 < cal["fire_quantile"] < 1  # a real choice was made
    assert cal["rouge_dev_goal"] == pytest.approx(0.9 * cal["rouge_dev_always"])
    rows = {r["q"]: r for r in cal["measured"]}
    q = cal["fire_quantile"]
    assert q in rows and rows[q]["threshold"] == cal["threshold"]
    assert rows[q]["rouge_l"] >= cal["rouge_dev_goal"]  # the kept rate reaches the goal …
    below = q - 2 ** -cfg.calib_steps  # … and the rate just under it (the bisection's lo) does not
    assert below <= 0 or rows[below]["rouge_l"] < cal["rouge_dev_goal"]
    assert edge.heads["add"].threshold == cal["threshold"]
