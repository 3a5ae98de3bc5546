"""Shared fixtures: a tiny backbone pretrained in the test session on generated text, and an
edge bundle trained on generated personal tasks. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Small but real: the `tiny` preset architecture, fewer steps.
PRETRAIN_STEPS = int(os.environ.get("SPA_TEST_PRETRAIN_STEPS", "120"))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("spa")


@pytest.fixture(scope="session")
def corpus_file(workdir) -> Path:
    from lab.synthetic import make_corpus

    path = workdir / "corpus.txt"
    path.write_text(make_corpus(800, seed=0))
    return path


@pytest.fixture(scope="session")
def tasks_file(workdir) -> Path:
    from lab.synthetic import make_personal_tasks, write_jsonl

    return write_jsonl(make_personal_tasks(160, seed=1), workdir / "tasks.jsonl")


@pytest.fixture(scope="session")
def backbone_dir(workdir, corpus_file) -> Path:
    from lab.pretrain import pretrain

    return pretrain(corpus_file, workdir / "backbone", "tiny", PRETRAIN_STEPS, seed=0, progress=False)


@pytest.fixture(scope="session")
def backbone(backbone_dir):
    from cloud_worker.backbone import Backbone

    return Backbone.load(backbone_dir)


@pytest.fixture(scope="session")
def trained(backbone, tasks_file):
    """(edge model, training record) for both combines, small budgets."""
    from lab.data import load_examples
    from lab.training import TrainConfig, train_bundle

    cfg = TrainConfig(mode="all", epochs=4, clf_epochs=2, rollout_prompts=8, rollout_tokens=16,
                      target_m=0.6, clf_features="z", clf_hidden=0,
                      overrides={"replace": {"width_div": 4, "dropout": 0.1}})
    # the tests' bundle stays as it was: the linear gate and the older replacing network (the
    # z+stats gate is exercised by the users' and the blend's bundles, LST by test_ladder.py)
    return train_bundle(backbone, load_examples(tasks_file)[:120], cfg, progress=False)


@pytest.fixture(scope="session")
def bundle_dir(workdir, trained) -> Path:
    from edge_agent.bundle import save_bundle

    edge, record = trained
    return save_bundle(edge, workdir / "bundle", record)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' promtool, installed from Debian's package `prometheus` when missing."""
    import shutil
    import subprocess

    path = shutil.which("promtool")
    if path is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
                       check=True, env=env, capture_output=True)
        path = shutil.which("promtool")
    assert path, "promtool not found after installing the Debian package 'prometheus'"
    return path


@pytest.fixture(scope="session")
def prometheus_bin(promtool) -> str:
    """The Prometheus server binary (same Debian package as promtool)."""
    import shutil

    path = shutil.which("prometheus")
    assert path, "prometheus not found after installing the Debian package 'prometheus'"
    return path


@pytest.fixture(scope="session")
def edge(bundle_dir):
    """The test bundle as an agent loads it."""
    from edge_agent.bundle import load_bundle

    return load_bundle(bundle_dir)


@pytest.fixture(scope="session")
def prompts(backbone, tasks_file) -> list[list[int]]:
    """16 held-out task prompts (records 120–135; training used 0–119) as token ids."""
    from lab.data import load_examples

    return [ex.prompt_ids(backbone.tokenizer) for ex in load_examples(tasks_file)[120:136]]


STYLES3 = ("letter", "captain", "brief")  # the test pool's members (issue 19)


@pytest.fixture(scope="session")
def pool(backbone, tmp_path_factory):
    """A pool of three personas on the tiny backbone (tests/test_blend*.py)."""
    from lab.pool import STYLES, PoolConfig, build_pool

    cfg = PoolConfig(records=12, base_epochs=1, epochs=1, every=2)
    return build_pool(backbone, tmp_path_factory.mktemp("pool"), cfg,
                      tuple(STYLES[s] for s in STYLES3))
