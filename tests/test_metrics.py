"""Every process serves /metrics; the agents' M counters equal their own per-session count."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import EdgeAgent
from edge_agent.bundle import load_bundle
from lab.data import load_examples
from monitoring import metrics
from spa.stack import LocalStack


def fetch(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def parse(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def _total(counter) -> float:
    return sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))


@pytest.fixture(scope="module")
def run(backbone_dir, bundle_dir, tasks_file, backbone, tmp_path_factory):
    edge = load_bundle(bundle_dir)
    prompts = [ex.prompt_ids(backbone.tokenizer) for ex in load_examples(tasks_file)[120:128]]
    before = (_total(metrics.BLOCKING), _total(metrics.TOKENS))
    with LocalStack(backbone_dir, workers=1, metrics=True, log_dir=tmp_path_factory.mktemp("m")) as stack:
        async def go():
            agent = EdgeAgent(edge, stack.agents_addr, keys=stack.agent_keys)
            streams = [agent.generate(p, 12, m) for p in prompts for m in ("spa", "full", "base")]

            async def consume(s):
                async for _ in s:
                    pass
                return s

            try:
                return await asyncio.wait_for(asyncio.gather(*(consume(s) for s in streams)), 120)
            finally:
                await agent.close()

        streams = asyncio.run(go())
        scraped = {name: fetch(port) for name, port in stack.metrics_ports.items()}
    scraped["agent"] = generate_latest(metrics.REGISTRY).decode()
    after = (_total(metrics.BLOCKING), _total(metrics.TOKENS))
    return streams, scraped, before, after


def test_agent_m_counters_match_sessions(run):
    streams, _, before, after = run
    blocking = sum(s.stats.blocking for s in streams)
    tokens = sum(s.stats.tokens for s in streams)
    assert after[0] - before[0] == blocking
    assert after[1] - before[1] == tokens
    assert 0 < blocking < tokens * 2


def test_broker_and_worker_serve_metrics(run):
    _, scraped, _, _ = run
    b, w = parse(scraped["broker"]), parse(scraped["worker0"])
    assert b["spa_messages_total"] > 0 and b["spa_message_bytes_total"] > 0
    assert b["spa_live_workers"] == 1
    assert w["spa_backbone_step_seconds_count"] > 0
    assert w["spa_batch_size_sum"] >= w["spa_batch_size_count"]


def test_promtool_check_metrics_is_clean(run, promtool):
    for name, text in run[1].items():
        res = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
            name, res.stdout, res.stderr)


def test_promtool_check_rules(promtool):
    rules = Path(__file__).resolve().parent.parent / "monitoring" / "prometheus" / "rules.yml"
    res = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    import yaml

    count = sum(len(g["rules"]) for g in yaml.safe_load(rules.read_text())["groups"])
    assert count >= 7 and f"SUCCESS: {count} rules found" in res.stdout  # M's 5, bytes/token's 2
