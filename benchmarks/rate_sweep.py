"""Goodput against offered rate (issue 16): one local stack (broker + worker, CURVE on, metrics),
then `spa loadtest --request-rate R1,R2,…` as one process per --procs, open loop (Poisson), every
request through EdgeAgent.generate (gate, side network, detokenization), SLOs on the command line.
The printed table is loadtest's own sweep table (one row per rate, per process merged here);
`--plot DIR` keeps loadtest's PNGs (sweep.png: throughput and goodput against offered rate, the
knee where goodput stops following the rate).

    .venv/bin/python benchmarks/rate_sweep.py [--rates 1,2,4,8,16,inf] [--num-prompts 48] \
        [--modes base] [--tokens 32] [--goodput ttft:1000 tpot:200 e2e:8000] [--plot DIR] \
        [--backbone DIR --bundle DIR --device cuda --prompts FILE --procs 4]
    .venv/bin/python benchmarks/rate_sweep.py --smoke     # seconds: two rates, 4 requests each

With several --procs each process offers rate/procs (their Poisson sums make the offered rate),
the merged row sums throughput and goodput and takes the worst process's percentiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, models

from spa.stack import LocalStack


def run_sweep(stack: LocalStack, bundle: Path, a, tmp: Path) -> list[list[dict]]:
    """One `spa loadtest` sweep per process, run at once; per process, its list of per-rate reports."""
    rates = a.rates.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1"}
    runs = []
    for k in range(a.procs):
        share = ",".join(r if r == "inf" else f"{float(r) / a.procs:g}" for r in rates)
        cmd = [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle", str(bundle),
               "--modes", a.modes, "--request-rate", share, "--num-prompts", str(max(1, a.num_prompts // a.procs)),
               "--warmup", str(a.warmup), "--max-new-tokens", str(a.tokens), "--report", "0",
               "--seed", str(1000 * k), "--json", str(tmp / f"sweep{k}.json"),
               "--broker-metrics", f"http://127.0.0.1:{stack.metrics_ports['broker']}/metrics",
               "--goodput", *a.goodput.split(), "--compute-device", a.compute_device, *stack.client_args]
        if a.prompts:
            cmd += ["--prompts", a.prompts, "--max-prompt-tokens", str(a.prompt_tokens)]
        if a.plot and k == 0:
            cmd += ["--plot", a.plot]
        runs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, env=env))
    out = []
    for k, p in enumerate(runs):
        err = p.communicate(timeout=3600)[1]
        if p.returncode != 0:
            raise SystemExit(f"loadtest {k} failed: {err[-3000:]}")
        if k == 0:
            print(err[-6000:], file=sys.stderr)  # loadtest's own sweep table (process 0)
        out.append(json.loads((tmp / f"sweep{k}.json").read_text())["sweep"])
    return out


def merge(per_proc: list[list[dict]], rates: list[str]) -> list[dict]:
    """Per rate: throughputs summed over processes, percentiles the worst process's."""
    rows = []
    for i, rate in enumerate(rates):
        parts = [p[i] for p in per_proc]

        def worst(key: str, parts: list[dict] = parts) -> float:
            return max((d.get(key) or 0.0) for d in parts)

        rows.append({"offered_rate": rate, "completed": sum(d["completed"] for d in parts),
                     "request_throughput": sum(d["request_throughput"] for d in parts),
                     "request_goodput": sum(d.get("request_goodput") or 0.0 for d in parts),
                     "output_throughput": sum(d["output_throughput"] for d in parts),
                     "p99_ttft_ms": worst("p99_ttft_ms"), "median_tpot_ms": worst("median_tpot_ms"),
                     "p99_e2el_ms": worst("p99_e2el_ms"),
                     "errors": sum(sum(d.get("errors", {}).values()) for d in parts),
                     "generator_cpu": max(d.get("cpu_share") or 0.0 for d in parts)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1,2,4,8,16,inf", help="offered request rates, req/s (all processes)")
    ap.add_argument("--num-prompts", type=int, default=48, help="requests per rate (all processes)")
    ap.add_argument("--warmup", type=int, default=2, help="requests per process left out, before each rate")
    ap.add_argument("--modes", default="base")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--goodput", default="ttft:1000 tpot:200 e2e:8000", help="SLOs, as loadtest's --goodput")
    ap.add_argument("--procs", type=int, default=1, help="load-test processes")
    ap.add_argument("--compute-device", default="cpu", choices=("cpu", "cuda"),
                    help="where the simulated devices compute (loadtest's flag)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per load-test process")
    ap.add_argument("--max-sessions", type=int, default=64, help="the worker's session capacity")
    ap.add_argument("--prompts")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--backbone")
    ap.add_argument("--bundle")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--plot", help="directory for loadtest's PNGs (process 0's)")
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="seconds: rates 4,inf, 4 requests, 4 tokens")
    a = ap.parse_args()
    if a.smoke:
        a.rates, a.num_prompts, a.warmup, a.tokens, a.procs = "4,inf", 4, 0, 4, 1
    backbone, bundle = (Path(a.backbone), Path(a.bundle)) if a.backbone else models()
    rates = a.rates.split(",")
    with tempfile.TemporaryDirectory() as tmp, LocalStack(
            backbone, workers=1, max_sessions=a.max_sessions, device=a.device, metrics=True,
            # every simulated device shares the stack's one agent key: the broker's per-key caps
            # (a real device's fairness limits) would cap the whole load test, so they are lifted
            broker_args=("--max-agent-sessions", "65536", "--queue-per-key", "65536",
                         "--queue-max", "65536")) as stack:
        rows = merge(run_sweep(stack, bundle, a, Path(tmp)), rates)
    print(f"modes {a.modes}, {a.tokens} tokens a request, {a.num_prompts} requests a rate over {a.procs} "
          f"load-test process(es), worker on {a.device} (max {a.max_sessions} sessions), SLOs {a.goodput}")
    print(f"{'offered':>8} {'done':>5} {'req/s':>7} {'goodput':>8} {'tok/s':>8} {'TTFT p99':>9} "
          f"{'TPOT p50':>9} {'E2E p99':>9} {'errors':>6} {'gen CPU':>7}")
    for r in rows:
        print(f"{r['offered_rate']:>8} {r['completed']:>5} {r['request_throughput']:>7.2f} "
              f"{r['request_goodput']:>8.2f} {r['output_throughput']:>8.0f} {r['p99_ttft_ms']:>7.0f}ms "
              f"{r['median_tpot_ms']:>7.1f}ms {r['p99_e2el_ms']:>7.0f}ms {r['errors']:>6} "
              f"{r['generator_cpu']:>6.0%}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "rows": rows}, indent=1))
    if a.plot and len(rows) > 1:
        print(f"plot: {plot_merged(rows, a, Path(a.plot))}")


def plot_merged(rows: list[dict], a, out: Path) -> Path:
    """Every process together: throughput and goodput against the offered rate (the knee), and
    TTFT p99 on a second axis; `inf` drawn at twice the largest finite rate."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [float(r["offered_rate"]) for r in rows if r["offered_rate"] != "inf"]
    top = 2 * max(finite) if finite else 1.0
    x = [top if r["offered_rate"] == "inf" else float(r["offered_rate"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(x, [r["request_throughput"] for r in rows], "o-", label="throughput, req/s")
    ax.plot(x, [r["request_goodput"] for r in rows], "s-", label=f"goodput ({a.goodput}), req/s")
    ax.plot(x, x, ":", color="grey", label="offered")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("offered rate, req/s (rightmost: unbounded)")
    ax.set_ylabel("req/s")
    ax2 = ax.twinx()
    ax2.plot(x, [r["p99_ttft_ms"] for r in rows], "^--", color="tab:red", label="TTFT p99, ms")
    ax2.set_ylabel("TTFT p99, ms")
    ax.legend(loc="upper left", fontsize=8)
    ax2.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{a.modes}, {a.procs} load-test processes, worker on {a.device}", fontsize=9)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / "sweep_all.png", dpi=110)
    plt.close(fig)
    return out / "sweep_all.png"


if __name__ == "__main__":
    main()
