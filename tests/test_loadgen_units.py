"""The load generator's parts on their own: arrivals, flag parsing, figures, JSON and plots
(no stack; the end-to-end runs are in test_loadgen_stack.py)."""

from __future__ import annotations

import argparse
import json
import math
import random
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.arrivals import gaps, schedule
from loadgen.config import LoadConfig, parse_goodput, parse_rates
from loadgen.figures import RequestRecord, Timeline, report, summarize
from routing.errors import InputError
from routing.quant import parse_wire_dtypes
from routing.transmissions import Transmissions


@pytest.mark.parametrize("rate", [0.5, 4.0, 50.0])
def test_poisson_mean_gap_within_10_percent(rate):
    g = gaps(rate, 1.0, seed=7)
    xs = [next(g) for _ in range(500)]
    assert abs(np.mean(xs) - 1 / rate) <= 0.1 / rate
    # exponential: the standard deviation equals the mean (within sampling noise)
    assert 0.8 < np.std(xs) / np.mean(xs) < 1.2


def test_burstiness_keeps_the_mean_and_changes_the_spread():
    cv = {}
    for k in (0.25, 1.0, 4.0):
        g = gaps(10.0, k, seed=3)
        xs = np.array([next(g) for _ in range(4000)])
        assert abs(xs.mean() - 0.1) < 0.012, (k, xs.mean())
        cv[k] = xs.std() / xs.mean()  # gamma: 1/sqrt(k)
    assert cv[0.25] > 1.6 > cv[1.0] > 0.8 > 0.6 > cv[4.0]


def test_schedule_is_seeded_and_inf_is_all_at_once():
    assert schedule(5.0, 20, seed=1) == schedule(5.0, 20, seed=1) != schedule(5.0, 20, seed=2)
    assert schedule(math.inf, 5) == [0.0] * 5
    t = schedule(5.0, 20, seed=1)
    assert t[0] == 0 and all(b >= a for a, b in zip(t, t[1:], strict=False))
    with pytest.raises(ValueError):
        next(gaps(0.0))


def test_rates_and_goodput_parse():
    assert parse_rates("1, 2,inf") == [1.0, 2.0, math.inf] and parse_rates("") == []
    for bad in ("0", "-1", "x", "nan"):
        with pytest.raises(InputError, match="--request-rate"):
            parse_rates(bad)
    assert parse_goodput("ttft:200 tpot:50,e2e:3000") == {"ttft": 0.2, "tpot": 0.05, "e2el": 3.0}
    for bad in ("ttft", "ttft:x", "itl:5", "ttft:0", "ttft:-3", "e2e:inf"):
        with pytest.raises(InputError, match="--goodput"):
            parse_goodput(bad)


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=30))
def test_flag_parsers_refuse_cleanly(text):
    """Whatever a user types: a value or an InputError, never another exception."""
    for fn in (parse_rates, parse_goodput, parse_wire_dtypes):
        try:
            fn(text)
        except InputError:
            pass


def test_config_flags_are_generated_and_checked():
    from loadgen.cli_args import add_arguments, config

    p = argparse.ArgumentParser()
    add_arguments(p)
    cfg = config(p.parse_args(["--bundle", "b", "--request-rate", "1,inf", "--num-prompts", "5",
                               "--goodput", "ttft:100", "e2e:900", "--max-concurrency", "3"]))
    assert cfg.rates == [1.0, math.inf] and cfg.num_prompts == 5 and cfg.max_concurrency == 3
    assert cfg.slos == {"ttft": 0.1, "e2el": 0.9}
    assert config(p.parse_args(["--sessions", "7"])).num_prompts == 7  # the old name
    assert config(p.parse_args([])).num_prompts == 0
    for argv, needle in ((["--concurrency", "0"], "concurrency=0 outside"),
                         (["--request-rate", "1,2"], "sweep needs --num-prompts"),
                         (["--max-concurrency", "2"], "give --request-rate"),
                         (["--request-rate", "inf"], "give --num-prompts"),
                         (["--modes", "spa,nope"], "nope"),
                         (["--wire-dtype", "fp16,int3"], "int3"),
                         (["--wire-dtype", "int8,int8"], "twice"),
                         (["--wire-dtype", ","], "no wire dtypes"),
                         (["--goodput", "ttft"], "--goodput")):
        with pytest.raises(InputError, match=needle):
            config(p.parse_args(argv))
    assert LoadConfig().replace(concurrency=3).concurrency == 3


def rec(mode="spa", ttft=0.1, e2el=1.0, n=10, error=None, errors=(), start=0.0) -> RequestRecord:
    itl = [(e2el - ttft) / (n - 1)] * (n - 1) if error is None and n > 1 else []
    sent = Transmissions(tokens=n, side_used=n // 2, requests=n // 2, corrections=1)
    return RequestRecord(mode, start, 12, n, ttft if error is None else None,
                         e2el if error is None else None, itl, sent, 100 * n, 300 * n,
                         1 + len(errors), list(errors), error)


def random_records(seed: int) -> list[RequestRecord]:
    r = random.Random(seed)
    out = []
    for _ in range(60):
        ttft = r.uniform(0.01, 0.5)
        out.append(rec(r.choice(["spa", "full", "base"]), ttft, ttft + r.uniform(0.05, 2.0),
                       r.randint(1, 20), error=r.choice([None] * 6 + ["cancelled", "TIMEOUT"]),
                       errors=r.choice([(), ("BUSY",), ("BUSY", "NO_WORKER")])))
    return out


def test_counts_add_up_per_mode_and_overall():
    recs = random_records(0)
    d = report(recs, 10.0, {"ttft": 0.2})
    modes = d["modes"].values()
    assert d["completed"] + d["failed"] == len(recs)
    for key in ("completed", "failed", "tokens", "blocking", "total_output_tokens", "retries"):
        assert sum(m[key] for m in modes) == d[key], key
    assert sum(d["errors"].values()) == sum(len(r.errors) for r in recs)
    assert sum(d["unfinished"].values()) == d["failed"]
    assert d["output_throughput"] == pytest.approx(d["total_output_tokens"] / 10.0)
    assert d["m"] == pytest.approx(d["blocking"] / d["tokens"])
    assert d["bytes_down_per_token"] == pytest.approx(300.0)


def test_wire_dtypes_taken_in_turn_and_counted_apart():
    """--wire-dtype fp16,int8,int4: every mode runs with each dtype in turn; modes without a side
    network stay fp16; bytes per token are figured per dtype and add up to the totals."""
    from loadgen.runner import LoadTest

    class Bundle:  # what LoadTest asks of an edge model before the run
        def supports(self, mode):
            return True

        def check_grid(self, wire):
            pass

    cfg = LoadConfig(modes="spa,base", wire_dtype="fp16,int8,int4").validate()
    test = LoadTest([(Bundle(), [[1, 2]])], cfg)
    jobs = [(m.value, w.value) for _, _, m, w, _ in (test._job() for _ in range(12))]
    assert jobs[:6] == [("spa", "fp16"), ("base", "fp16"), ("spa", "int8"), ("base", "fp16"),
                        ("spa", "int4"), ("base", "fp16")]
    assert jobs[6:] == jobs[:6]
    recs = random_records(2)
    for i, r in enumerate(recs):
        r.wire = ("fp16", "int8", "int4")[i % 3]
    d = report(recs, 10.0, {})
    per = d["wire_dtypes"]
    assert set(per) == {"fp16", "int8", "int4"}
    assert sum(w["tokens"] for w in per.values()) == d["tokens"]
    assert sum(w["sessions"] for w in per.values()) == len(recs)
    assert sum(w["bytes_down_per_token"] * w["tokens"] for w in per.values()) == pytest.approx(
        d["bytes_down_per_token"] * d["tokens"])
    for mode, m in d["modes"].items():
        assert sum(w["tokens"] for w in m["wire_dtypes"].values()) == m["tokens"], mode


def test_budget_figures_per_session():
    """Sessions under an M budget: b, the largest |M − b| of one session, the share within 0.05;
    nothing about budgets when no session had one."""
    assert "m_budget" not in summarize(random_records(1), 5.0)
    recs = [rec(n=20), rec(n=20), rec(n=20), rec(n=20, error="TIMEOUT")]
    for r, blocking in zip(recs, (14, 15, 24, 2), strict=True):  # M 0.35, 0.375, 0.60, 0.05
        r.sent = Transmissions(tokens=40, requests=blocking)
        r.m_budget = 0.35
    d = summarize(recs, 5.0)
    assert d["m_budget"] == [0.35] and d["budget_sessions"] == 3  # completed ones
    assert d["budget_gap_max"] == pytest.approx(0.25)
    assert d["budget_within_0.05"] == pytest.approx(2 / 3)


def test_goodput_is_the_share_meeting_every_slo():
    recs = random_records(1)
    slos = {"ttft": 0.25, "tpot": 0.08, "e2el": 1.5}
    d = summarize(recs, 5.0, slos)
    done = [r for r in recs if r.error is None]
    good = [r for r in done if r.ttft <= 0.25 and r.e2el <= 1.5
            and (r.output_tokens < 2 or (r.e2el - r.ttft) / (r.output_tokens - 1) <= 0.08)]
    assert 0 < len(good) < len(done)
    assert d["goodput_share"] == pytest.approx(len(good) / len(done))
    assert d["request_goodput"] == pytest.approx(len(good) / 5.0)
    assert summarize(recs, 5.0)["request_goodput"] is None  # no SLOs, no goodput


def test_latency_fields_named_as_vllm_and_consistent():
    recs = random_records(2)
    d = summarize(recs, 3.0)
    for name in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("mean", "median", "std", "p90", "p99"):
            assert f"{stat}_{name}_ms" in d
        assert d[f"median_{name}_ms"] <= d[f"p90_{name}_ms"] <= d[f"p99_{name}_ms"]
    done = [r for r in recs if r.completed]
    assert d["mean_ttft_ms"] == pytest.approx(np.mean([r.ttft for r in done]) * 1000)
    assert d["mean_e2el_ms"] == pytest.approx(np.mean([r.e2el for r in done]) * 1000)
    empty = summarize([], 1.0)
    assert empty["completed"] == 0 and empty["p99_ttft_ms"] is None and empty["m"] == 0


def test_timeline_rates():
    t = Timeline()
    for i, (k, b) in enumerate([(0, 0), (100, 50), (300, 60), (300, 60)]):
        t.add(i * 0.5, k, b, 4 - i)
    rows = t.rates()
    assert [r["tokens_per_s"] for r in rows] == [200.0, 400.0, 0.0]
    assert rows[0]["m"] == 0.5 and rows[1]["m"] == pytest.approx(0.05) and rows[2]["m"] is None


def png_ok(path) -> bool:
    """A whole PNG: the signature, then chunks with correct CRCs up to IEND."""
    data = path.read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return False
    i = 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + n]
        (crc,) = struct.unpack(">I", data[i + 8 + n:i + 12 + n])
        if zlib.crc32(kind + body) != crc:
            return False
        if kind == b"IEND":
            return i + 12 + n == len(data)
        i += 12 + n
    return False


def test_json_and_plots_from_a_sweep(tmp_path):
    from loadgen.loadtest import document, results, sweep_table
    from loadgen.plots import write_all
    from loadgen.runner import Phase

    cfg = LoadConfig(request_rate="2,8,inf", num_prompts=60, goodput="ttft:250")
    phases = []
    for k, rate in enumerate(cfg.rates):
        p = Phase(rate, random_records(k), 10.0 / (k + 1))
        for i in range(6):
            p.timeline.add(i * 0.5, 40 * i * i, 20 * i * i, 3)
        phases.append(p)
    reports = results(phases, cfg)
    doc = json.loads(json.dumps(document(reports), allow_nan=False))
    assert [r["request_rate"] for r in doc["sweep"]] == [2.0, 8.0, "inf"]
    assert all(r["request_goodput"] is not None and r["timeline"] for r in doc["sweep"])
    assert len(sweep_table(reports)) == 4
    paths = write_all(phases, reports, tmp_path / "plots")
    names = {p.name for p in paths}
    assert {"sweep.png", "latency_cdf_inf.png", "timeline_2.png"} <= names
    for p in paths:
        assert png_ok(p) and p.stat().st_size > 5000, p
    closed = [Phase(None, random_records(9), 4.0, phases[0].timeline)]
    single = results(closed, LoadConfig())
    d = json.loads(json.dumps(document(single)))
    assert d["request_rate"] is None and d["concurrency"] == 8 and set(d["modes"]) <= {"spa", "full", "base"}
    assert {p.name for p in write_all(closed, single, tmp_path / "one")} == {
        "latency_cdf.png", "timeline.png"}


def test_queue_wait_from_the_brokers_histogram():
    from prometheus_client import CollectorRegistry, Histogram, start_http_server

    from loadgen import queue_wait
    from spa.stack import free_port

    reg = CollectorRegistry()
    h = Histogram(queue_wait.WAIT, "wait", registry=reg)
    port = free_port()
    start_http_server(port, addr="127.0.0.1", registry=reg)
    url = f"http://127.0.0.1:{port}/metrics"
    h.observe(0.5)
    before = queue_wait.read(url)
    assert before == (0.5, 1.0)
    for w in (0.1, 0.3):
        h.observe(w)
    assert queue_wait.between(before, queue_wait.read(url)) == {
        "opens_placed": 2, "mean_queue_wait_ms": pytest.approx(200.0)}
    assert queue_wait.read(f"http://127.0.0.1:{free_port()}/metrics") is None  # nobody there
    assert queue_wait.between(None, before)["mean_queue_wait_ms"] is None
