"""The load generator against a live stack on 127.0.0.1 (broker and worker processes, CURVE):
closed loop, open loop with a cap, a sweep through the CLI with JSON and plots."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_loadgen_units import png_ok

from loadgen.config import LoadConfig
from loadgen.runner import LoadTest
from routing import aio
from spa.stack import LocalStack


@pytest.fixture(scope="module")
def stack(backbone_dir):
    with LocalStack(backbone_dir, workers=1, max_sessions=8, metrics=True) as s:
        yield s


def check_requests(phase, n: int, max_new: int) -> None:
    """Every request finished, its latencies ordered and its token gaps counted."""
    assert len(phase.records) == n
    for r in phase.records:
        assert r.completed, r
        assert 1 <= r.output_tokens <= max_new
        assert 0 < r.ttft <= r.e2el, r
        assert len(r.itl) == r.output_tokens - 1
        assert r.ttft + sum(r.itl) <= r.e2el + 1e-6
        assert r.sent.tokens >= r.output_tokens and r.bytes_up > 0 and r.bytes_down > 0


def test_closed_and_open_loops(stack, edge, prompts):
    cfg = LoadConfig(broker=stack.agents_addr, modes="spa,base", concurrency=3, num_prompts=6,
                     max_new_tokens=6, warmup=2, request_rate="")
    test = LoadTest([(edge, prompts)], cfg, stack.agent_keys)
    (closed,) = aio.run(test.run())
    assert test.issued == 8  # the warm-up ran, and is not in the figures
    check_requests(closed, 6, 6)
    assert {r.mode for r in closed.records} == {"spa", "base"}
    assert all(r.sent.m == 0 for r in closed.records if r.mode == "base")

    cfg = cfg.replace(request_rate="40,inf", max_concurrency=2, warmup=0, modes="spa",
                      broker_metrics=f"http://127.0.0.1:{stack.metrics_ports['broker']}/metrics")
    test = LoadTest([(edge, prompts)], cfg, stack.agent_keys)
    peak = []
    test.on_sample = lambda phase: peak.append(len(test.live))
    fast, burst = aio.run(test.run())
    for phase in (fast, burst):
        check_requests(phase, 6, 6)
        assert phase.timeline.points
    assert max(peak) <= 2  # --max-concurrency held
    from monitoring import metrics

    if hasattr(metrics, "ADMISSION_WAIT"):  # the broker queues OPENs: the wait is read back
        assert fast.queue["opens_placed"] == 6 and 0 <= fast.queue["mean_queue_wait_ms"] < 1000
    starts = sorted(r.start for r in fast.records)
    assert starts[-1] > 0.05  # 40/s spreads six arrivals over ~0.15 s; inf sends them at once


def test_wire_dtypes_and_an_m_budget_reach_the_sessions(stack, edge, prompts):
    """--wire-dtype fp16,int8 and --m-budget over the stack: each request's session runs with its
    dtype and its budget; int8 sessions bring fewer bytes per token of a lockstep mode."""
    from edge_agent.budget import BudgetConfig

    cfg = LoadConfig(broker=stack.agents_addr, modes="full,spa", wire_dtype="fp16,int8",
                     concurrency=2, num_prompts=8, max_new_tokens=6)
    test = LoadTest([(edge, prompts[:1])], cfg, stack.agent_keys, BudgetConfig(m_budget=0.5))
    (phase,) = aio.run(test.run())
    check_requests(phase, 8, 6)
    got = sorted((r.mode, r.wire) for r in phase.records)
    assert got == sorted([(m, w) for m in ("full", "spa") for w in ("fp16", "int8")] * 2)
    assert all(r.m_budget == 0.5 for r in phase.records if r.mode == "spa")
    full = {w: sum(r.bytes_down for r in phase.records if (r.mode, r.wire) == ("full", w)) /
            sum(r.sent.tokens for r in phase.records if (r.mode, r.wire) == ("full", w))
            for w in ("fp16", "int8")}
    assert full["int8"] < full["fp16"], full


def test_cli_sweep_writes_json_and_plots(stack, bundle_dir, tmp_path):
    out, plots = tmp_path / "lt.json", tmp_path / "plots"
    res = subprocess.run(
        [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle",
         str(bundle_dir), "--modes", "spa,full", "--request-rate", "30,inf", "--num-prompts", "4",
         "--max-new-tokens", "5", "--goodput", "ttft:60000", "e2e:60000", "--json", str(out),
         "--plot", str(plots), "--report", "0", *stack.client_args],
        capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [d["request_rate"] for d in doc["sweep"]] == [30.0, "inf"]
    for d in doc["sweep"]:
        assert d["completed"] == 4 and d["failed"] == 0 and not d["errors"]
        assert sum(m["completed"] for m in d["modes"].values()) == 4
        assert d["goodput_share"] == 1.0 and d["request_goodput"] == d["request_throughput"]
        assert d["modes"]["full"]["m"] == 1.0 and d["median_ttft_ms"] <= d["median_e2el_ms"]
    assert "rate" in res.stderr and "inf" in res.stderr.splitlines()[-1]
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["latency_cdf_30.png", "latency_cdf_inf.png", "sweep.png", "timeline_30.png",
                     "timeline_inf.png"]
    assert all(png_ok(p) for p in plots.iterdir())
