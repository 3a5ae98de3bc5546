"""Many users, one batch: two users' private bundles — different side networks (width, which
layers travel), different classifiers, different modes — served by one worker at the same time.
Every session equals its own user's reference generation token for token, and the worker ran
them in shared backbone steps (its batch-size histogram holds steps of more than one row)."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle, save_bundle
from lab.data import load_examples
from lab.reference import ReferenceGenerator
from routing.modes import Mode
from spa.stack import LocalStack


@pytest.fixture(scope="module")
def second_user(backbone, tasks_file, workdir):
    """Another user's bundle: a narrower adding network that reads every 2nd layer only."""
    from lab.training import TrainConfig, train_bundle

    cfg = TrainConfig(mode="spa", epochs=3, clf_epochs=2, rollout_prompts=8, rollout_tokens=16,
                      target_m=0.5, width=8, every=2, seed=5)
    edge, record = train_bundle(backbone, load_examples(tasks_file)[40:120], cfg, progress=False)
    return load_bundle(save_bundle(edge, workdir / "bundle-user2", record))


def test_two_users_bundles_share_the_worker_batch(backbone_dir, backbone, edge, second_user, prompts,
                                                  tmp_path):
    users = {"alice": edge, "bob": second_user}
    assert users["alice"].wire_layers(Mode.SPA) != users["bob"].wire_layers(Mode.SPA)  # unlike configs
    jobs = [("alice", p, m) for p, m in zip(prompts[:6], ["spa", "full", "choice"] * 2, strict=True)]
    jobs += [("bob", p, "spa") for p in prompts[6:12]] + [("bob", prompts[12], "base")]
    with LocalStack(backbone_dir, workers=1, metrics=True, log_dir=tmp_path) as stack:
        async def go():
            agents = {u: EdgeAgent(e, stack.agents_addr, window=4, keys=stack.agent_keys)
                      for u, e in users.items()}
            try:
                streams = [agents[u].generate(p, 16, m) for u, p, m in jobs]

                async def run(s):
                    async for _ in s:
                        pass
                    return s

                return await asyncio.wait_for(asyncio.gather(*(run(s) for s in streams)), 180)
            finally:
                for a in agents.values():
                    await a.close()

        streams = asyncio.run(go())
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.metrics_ports['worker0']}/metrics", timeout=5).read().decode()
    refs = {u: ReferenceGenerator(backbone, e) for u, e in users.items()}
    for (u, p, m), s in zip(jobs, streams, strict=True):
        want = refs[u].generate(p, 16, m)
        assert s.tokens == want.tokens and s.stats.m == pytest.approx(want.stats.m), (u, m)
    hist = {s.labels.get("le"): s.value for f in text_string_to_metric_families(text)
            for s in f.samples if s.name == "spa_batch_size_bucket"}
    assert hist["+Inf"] > hist["1.0"], f"no step ran more than one session: {hist}"
