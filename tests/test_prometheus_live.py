"""A real Prometheus server scrapes a live localhost stack (broker, worker, a load-test process
generating in every mode, its devices on fp16 and int8 frames); every expression of the recording rules and of the Grafana dashboard
runs through Prometheus' HTTP API and returns data; the M that Prometheus computes equals the
load test's own count for the run, overall and by mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
import zmq
from prom import PrometheusServer

from monitoring.grafana.dashboard import build as build_dashboard
from spa.stack import LocalStack, free_port

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "monitoring" / "prometheus" / "rules.yml"
MODES = ["spa", "choice", "full", "lst", "base"]
WIRES = ["fp16", "int8"]  # the load test's devices take them in turn (issue 22)
SESSIONS = 30


def rule_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [(r["record"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for p in build_dashboard()["panels"]:
        for t in p.get("targets", []):
            out.append((f"{p['title']} / {t['refId']}", t["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """What Grafana sends: template variables replaced (all modes; a 1 m rate window, which
    holds the whole run)."""
    return expr.replace("$__rate_interval", "1m").replace("$mode", ".*")


@pytest.fixture(scope="module")
def live(backbone_dir, bundle_dir, tasks_file, prometheus_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prom")
    lt_port, prom_port = free_port(), free_port()
    with LocalStack(backbone_dir, workers=1, metrics=True, log_dir=tmp / "logs") as stack:
        mp = stack.metrics_ports
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
                for job, port in [("broker", mp["broker"]), ("cloud-worker", mp["worker0"]),
                                  ("edge-agent", lt_port)]],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        prom = PrometheusServer(prometheus_bin, tmp / "prometheus.yml", tmp / "data", prom_port)
        lt = None
        try:
            prom.wait_ready()
            # Prometheus starts its scrape loops a few seconds after it is ready: wait for them,
            # so the load test's counters are scraped at 0 (during its --delay) before traffic
            deadline = time.monotonic() + 30
            while not (n := prom.query("count(up)")) or n[0]["value"][1] != "3":
                assert time.monotonic() < deadline, prom.targets_up()
                time.sleep(0.2)
            # one malformed message: the errors panel has something to show
            from routing.security import connect_as

            s = zmq.Context.instance().socket(zmq.DEALER)
            connect_as(s, stack.agent_keys)
            s.connect(stack.agents_addr)
            s.send_multipart([b"not msgpack"])
            assert s.poll(5000), "the broker did not answer a malformed message"
            s.recv_multipart()
            s.close(0)
            summary = tmp / "loadtest.json"
            started = time.time()
            lt = subprocess.Popen(
                [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr,
                 "--bundle", str(bundle_dir), "--prompts", str(tasks_file), "--modes", ",".join(MODES),
                 "--wire-dtype", ",".join(WIRES),
                 "--concurrency", "6", "--sessions", str(SESSIONS), "--max-new-tokens", "16",
                 "--delay", "3", "--linger", "60", "--report", "0", "--json", str(summary),
                 "--metrics-port", str(lt_port), *stack.client_args],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            deadline = time.monotonic() + 180
            while not summary.exists():
                assert lt.poll() is None, f"loadtest exited {lt.returncode}: {lt.stdout.read()}"
                assert time.monotonic() < deadline, "loadtest did not finish in 180 s"
                time.sleep(0.2)
            # the agents' final counts scraped, then a rule evaluation well after that scrape
            result = json.loads(summary.read_text())
            final = f'sum(spa_tokens_generated_total{{job="edge-agent"}}) == {result["tokens"]}'
            while not prom.query(final):
                assert time.monotonic() < deadline, "Prometheus never scraped the final counts"
                time.sleep(0.2)
            scraped = float(prom.query('max(timestamp(spa_tokens_generated_total{job="edge-agent"}))')
                            [0]["value"][1])
            at = max(prom.wait_evaluated(rule, scraped + 0.5)  # ingested by then; every rule the
                     for rule in (":spa_blocking_transmissions_per_token:ratio_rate1m",  # tests read
                                  "direction_wire_dtype:spa_message_bytes_per_token:ratio_rate1m"))
            prom.wait_scraped(after=at)  # every target, for the dashboard's queries
            pages = {job: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                     for job, port in [("broker", mp["broker"]), ("cloud-worker", mp["worker0"]),
                                       ("edge-agent", lt_port)]}
            yield prom, result, at, started, pages
        finally:
            if lt is not None:
                lt.terminate()
                lt.wait(10)
            prom.stop()


def test_every_target_is_up(live):
    prom, *_ = live
    assert set(prom.targets_up().values()) == {"up"}, prom.targets_up()


@pytest.mark.parametrize("name,expr", rule_exprs() + dashboard_exprs())
def test_expression_returns_data(live, name, expr):
    prom, _, at, *_ = live
    result = prom.query(grafana_to_promql(expr), at)
    assert result, f"{name}: no data for {expr}"
    values = [float(r["value"][1]) for r in result]
    if "histogram_quantile" in expr:  # a quantile of an empty window is NaN; one must be real
        assert any(math.isfinite(v) for v in values), (name, result)
    else:
        assert all(math.isfinite(v) for v in values), (name, result)


def test_recorded_series_exist(live):
    prom, _, at, *_ = live
    for record, _ in rule_exprs():
        assert prom.query(record, at), f"recording rule {record} has no series"


def test_prometheus_m_equals_agents_count(live):
    prom, summary, at, started, _ = live
    assert summary["completed"] == SESSIONS and not summary["errors"], summary
    exact = prom.query("sum(spa_blocking_transmissions_total) / sum(spa_tokens_generated_total)", at)
    assert float(exact[0]["value"][1]) == pytest.approx(summary["m"], abs=1e-12)
    # The recording rules' rates: every series is 0 at a scrape before the first token (the
    # load test's --delay) and all come from one target, so Prometheus extrapolates numerator
    # and denominator alike and the rate ratio is the count ratio, when the rule's 1 m window
    # holds the whole run.
    assert at - started < 55, f"the run took {at - started:.0f}s: longer than the rules' window"
    overall = prom.query(":spa_blocking_transmissions_per_token:ratio_rate1m", at)
    assert float(overall[0]["value"][1]) == pytest.approx(summary["m"], rel=1e-9)
    by_mode = {r["metric"]["mode"]: float(r["value"][1])
               for r in prom.query("mode:spa_blocking_transmissions_per_token:ratio_rate1m", at)}
    assert set(by_mode) == set(MODES)
    for mode, s in summary["modes"].items():
        assert by_mode[mode] == pytest.approx(s["m"], rel=1e-9, abs=1e-12), mode
    assert by_mode["full"] == by_mode["lst"] == 1.0 and by_mode["base"] == 0.0
    assert 0 < by_mode["spa"] < 1


def test_bytes_per_token_by_wire_dtype(live):
    """The dashboard's per-dtype line (the recording rule) has fp16 and int8 and equals the
    counters' exact ratio (every series at 0 before the run: rates extrapolated alike), int8
    lower edge←cloud; the counters' ratio equals the load test's own bytes per token."""
    prom, summary, at, started, _ = live
    assert at - started < 55, f"the run took {at - started:.0f}s: longer than the rules' window"
    rule = "direction_wire_dtype:spa_message_bytes_per_token:ratio_rate1m"
    per = {(r["metric"]["wire_dtype"], r["metric"]["direction"]): float(r["value"][1])
           for r in prom.query(rule, at)}
    assert {w for w, _ in per} == set(WIRES), per
    exact = {(r["metric"]["wire_dtype"], r["metric"]["direction"]): float(r["value"][1])
             for r in prom.query(
        'sum by (wire_dtype, direction) (spa_message_bytes_total{component="agent", wire_dtype!=""})'
        ' / on (wire_dtype) group_left sum by (wire_dtype) (spa_tokens_generated_total)', at)}
    assert set(per) == set(exact), (per, exact)
    for key, value in exact.items():
        assert value > 0 and per[key] == pytest.approx(value, rel=1e-6), (key, per, exact)
    assert exact[("int8", "in")] < exact[("fp16", "in")], exact
    own = summary["wire_dtypes"]
    assert set(own) == set(WIRES) and own["int8"]["sessions"] > 0, own
    for wire in WIRES:  # every message of a live session is both counted and in its stream's bytes
        assert exact[(wire, "in")] == pytest.approx(own[wire]["bytes_down_per_token"], rel=1e-9), wire


def test_agent_message_series_start_at_zero(live):
    """Every message type an agent counts (heartbeats aside: connection-wide, from its first
    second) was scraped at 0 before the run's traffic, so the dashboard's per-type rates have
    two samples however short the run (a run inside one scrape interval gave 'no data')."""
    prom, _, at, *_ = live
    first = prom.query('min_over_time(spa_messages_total{job="edge-agent", component="agent", '
                       'type!="HEARTBEAT"}[5m])', at)
    assert {r["metric"]["type"] for r in first} >= {"OPEN", "ACK", "FRAME", "TOKEN"}, first
    assert all(float(r["value"][1]) == 0.0 for r in first), first
    assert prom.query('sum by (type, direction) (rate(spa_messages_total{component="agent"}[1m]))', at)


def test_promtool_check_metrics_on_every_process(live, promtool):
    """Broker, worker and the load-test process (after a run in every mode)."""
    for job, page in live[4].items():
        res = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True)
        assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), (
            job, res.stdout, res.stderr)


def test_mode_variable_lists_the_modes(live):
    prom, *_ = live
    values = prom.api("label/mode/values", **{"match[]": "spa_tokens_generated_total"})
    assert set(values) == set(MODES)


def test_dashboard_covers_the_quantities():
    exprs = " ".join(e for _, e in dashboard_exprs())
    for needed in ["mode:spa_blocking_transmissions_per_token:ratio_rate1m", "spa_messages_total",
                   "spa_message_bytes_total", "spa_time_to_first_token_seconds_bucket",
                   "spa_inter_token_latency_seconds_bucket", "spa_backbone_step_seconds_bucket",
                   "spa_batch_size", "spa_active_sessions", "spa_live_workers", "spa_errors_total"]:
        assert needed in exprs, needed
    for p in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({p}, sum by (le) (rate(spa_inter_token_latency_seconds" in exprs
