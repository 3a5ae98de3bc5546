"""The Grafana dashboard, written as code: `python -m monitoring.grafana.dashboard` rewrites
monitoring/grafana/dashboards/spa.json (a test checks the committed file is this output, and
runs every expression in it against a real Prometheus).

Variables in expressions: `$mode` (a multi-value template variable over the modes seen) and
Grafana's `$__rate_interval`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

UID = "spa-overview"
DATASOURCE = {"type": "prometheus", "uid": "spa-prometheus"}  # provisioning/datasources
OUT = Path(__file__).resolve().parent / "dashboards" / "spa.json"

M = '{mode=~"$mode"}'
RI = "[$__rate_interval]"


def q(expr: str, legend: str = "") -> dict:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, by: str = "", sel: str = "") -> list[dict]:
    """p50/p95/p99 of a histogram, summed over processes."""
    extra = f", {by}" if by else ""
    prefix = f"{{{{{by}}}}} " if by else ""
    return [q(f"histogram_quantile({p}, sum by (le{extra}) (rate({metric}_bucket{sel}{RI})))",
              f"{prefix}p{int(p * 100)}") for p in (0.5, 0.95, 0.99)]


# (title, unit, description, queries, width); a str entry starts a row
LAYOUT: list = [
    "M: blocking edge↔cloud transmissions per token",
    ("M by mode (1 m rate)", "none",
     "Blocking transmissions (REQUEST, CORRECT, lockstep TOKEN) per generated token: the "
     "recording rules divide the summed counter rates. spa/choice stay below 1; lst/full are 1.",
     [q(f"mode:spa_blocking_transmissions_per_token:ratio_rate1m{M}", "{{mode}}"),
      q(":spa_blocking_transmissions_per_token:ratio_rate1m", "all modes")], 12),
    ("M since the agents started", "none",
     "The same ratio over the counters' whole life: equals the agents' own count.",
     [q(f"sum by (mode) (spa_blocking_transmissions_total{M}) / "
        f"sum by (mode) (spa_tokens_generated_total{M})", "{{mode}}")], 6),
    ("Side-network share of tokens", "percentunit",
     "Tokens the side network produced (the gate fired) over all tokens, by mode.",
     [q(f"mode:spa_side_tokens_per_token:ratio_rate1m{M}", "{{mode}}")], 6),
    ("Blocking transmissions/s by kind", "ops",
     "request: gate fired, hidden states fetched; correct: the side token differed and the "
     "worker rolled back; lockstep: every token of lst/full.",
     [q(f"sum by (kind) (rate(spa_blocking_transmissions_total{M}{RI}))", "{{kind}}")], 12),
    ("Tokens/s by mode and path", "ops", "Generated tokens, by the path that produced them.",
     [q(f"sum by (mode, path) (rate(spa_tokens_generated_total{M}{RI}))", "{{mode}} {{path}}")], 12),
    "Communication",
    ("Edge messages/s by type (out = edge→cloud, in = cloud→edge)", "ops",
     "Every protocol message the agents sent and received.",
     [q(f'sum by (type, direction) (rate(spa_messages_total{{component="agent"}}{RI}))',
        "{{direction}} {{type}}")], 12),
    ("Edge bytes/s each way", "Bps", "Protocol bytes the agents sent (out) and received (in).",
     [q(f'sum by (direction) (rate(spa_message_bytes_total{{component="agent"}}{RI}))',
        "{{direction}}")], 6),
    ("Broker messages/s", "ops", "Messages the broker received from agents and from workers.",
     [q(f'sum by (direction) (rate(spa_messages_total{{component="broker"}}{RI}))',
        "{{direction}}")], 6),
    ("Edge bytes per generated token, each way", "decbytes",
     "Protocol bytes the agents sent (out) and received (in) per token they generated: the cost "
     "of the hidden states that REQUEST brings back, and of every frame. By wire dtype (the "
     "recording rule, 1 m rate; issue 22): fp16 frames, or int8/int4 codes on the edge kit's "
     "grid (~2× / ~3.9× fewer bytes edge←cloud for SmolLM2); all: every agent message.",
     [q(f'sum by (direction) (rate(spa_message_bytes_total{{component="agent"}}{RI})) / '
        f"scalar(sum(rate(spa_tokens_generated_total{RI})))", "all {{direction}}"),
      q("direction_wire_dtype:spa_message_bytes_per_token:ratio_rate1m",
        "{{wire_dtype}} {{direction}}")], 12),
    ("Corrections per token, by mode", "percentunit",
     "CORRECTs (the side token differed from the backbone's, the worker rolled back) over tokens.",
     [q(f'sum by (mode) (rate(spa_blocking_transmissions_total{{kind="correct",mode=~"$mode"}}{RI})) '
        f"/ sum by (mode) (rate(spa_tokens_generated_total{M}{RI}))", "{{mode}}")], 12),
    "Latency",
    ("Time to first token", "s", "p50/p95/p99 over all agents.",
     quantiles("spa_time_to_first_token_seconds", sel=M), 8),
    ("Inter-token latency", "s", "p50/p95/p99 over all agents.",
     quantiles("spa_inter_token_latency_seconds", sel=M), 8),
    ("Edge round trip and side compute", "s",
     "REQUEST→HIDDEN round trip seen by the agent; side network + head per side token.",
     [*quantiles("spa_edge_round_trip_seconds")[::2],
      *[dict(t, legendFormat="side " + t["legendFormat"])
        for t in quantiles("spa_side_compute_seconds", sel=M)[::2]]], 8),
    "Cloud",
    ("Backbone step time", "s", "One batched forward over every runnable session.",
     quantiles("spa_backbone_step_seconds"), 8),
    ("Batch size", "none", "Sessions per backbone forward: mean and p95.",
     [q(f"sum(rate(spa_batch_size_sum{RI})) / sum(rate(spa_batch_size_count{RI}))", "mean"),
      quantiles("spa_batch_size")[1]], 8),
    ("Sessions, workers, broker queue", "none",
     "Open sessions as each component sees them; live workers; messages waiting at flush.",
     [q("sum by (component) (spa_active_sessions)", "sessions {{component}}"),
      q("sum(spa_live_workers)", "live workers"), q("sum(spa_broker_queue_depth)", "queue")], 8),
    ("Speculation", "ops",
     "Tokens decoded ahead and thrown away, rollbacks applied, stale frames the agents dropped.",
     [q(f"sum(rate(spa_speculative_tokens_wasted_total{RI}))", "wasted tokens"),
      q(f"sum(rate(spa_rollbacks_total{RI}))", "rollbacks"),
      q(f"sum(rate(spa_speculative_frames_dropped_total{M}{RI}))", "stale frames")], 12),
    "Errors and sessions",
    ("Errors/s by component and code", "ops",
     "ERROR answers and faults: NO_WORKER/BUSY are admission refusals the load test retries.",
     [q(f"sum by (component, code) (rate(spa_errors_total{RI}))", "{{component}} {{code}}")], 12),
    ("Sessions finished/s by outcome", "ops", "eos, length, cancelled or error; and replays "
     "after a worker was lost.",
     [q(f"sum by (mode, outcome) (rate(spa_sessions_finished_total{M}{RI}))", "{{mode}} {{outcome}}"),
      q(f"sum(rate(spa_session_replays_total{RI}))", "replays")], 12),
]


def panel(pid: int, title: str, unit: str, desc: str, targets: list[dict], x: int, y: int,
          w: int) -> dict:
    kind = "stat" if title.startswith("M since") else "timeseries"
    return {
        "id": pid, "type": kind, "title": title, "description": desc, "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, **t}
                    for i, t in enumerate(targets)],
        "fieldConfig": {"defaults": {"unit": unit} | ({"decimals": 3} if unit == "none" else {}),
                        "overrides": []},
        "options": ({"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"}
                    if kind == "stat" else
                    {"legend": {"displayMode": "list", "placement": "bottom"},
                     "tooltip": {"mode": "multi"}}),
    }


def build() -> dict:
    panels, x, y, pid = [], 0, 0, 1
    for item in LAYOUT:
        if isinstance(item, str):
            y += 8 if x else 0
            x = 0
            panels.append({"id": pid, "type": "row", "title": item, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y, pid = y + 1, pid + 1
            continue
        title, unit, desc, targets, w = item
        if x + w > 24:
            x, y = 0, y + 8
        panels.append(panel(pid, title, unit, desc, targets, x, y, w))
        x, pid = x + w, pid + 1
    variable = {
        "name": "mode", "label": "mode", "type": "query", "datasource": DATASOURCE,
        "definition": "label_values(spa_tokens_generated_total, mode)",
        "query": {"query": "label_values(spa_tokens_generated_total, mode)", "refId": "mode"},
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }
    return {
        "uid": UID, "title": "SPA serving", "description": "M, communication, latency and the "
        "cloud side of split edge/cloud generation", "tags": ["spa"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "refresh": "5s",
        "time": {"from": "now-15m", "to": "now"}, "annotations": {"list": []},
        "templating": {"list": [variable]}, "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(render())
    print(f"dashboard -> {OUT}", file=sys.stderr)
