"""`spa loadtest`: one process hosting many simulated devices against a broker.

Closed loop (`--concurrency` users back to back) or open loop (`--request-rate R[,R2,…]`,
Poisson or gamma arrivals, `--max-concurrency`), `--num-prompts`/`--duration` per run, a
warm-up left out. The process serves the agent metrics on /metrics, shows progress (a bar on a
terminal, lines otherwise) and prints a table per mode (one row per rate for a sweep); `--json`
writes the figures (loadgen/figures.py), `--plot DIR` the PNGs (loadgen/plots.py).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.agent import SessionError
from loadgen.cli_args import budget, config
from loadgen.config import LoadConfig
from loadgen.figures import report
from loadgen.progress import Progress
from loadgen.prompts import load_prompts
from loadgen.runner import LoadTest, Phase, offered
from monitoring import metrics
from routing.errors import InputError, SpaError
from routing.quant import WireDtype


def ms(v: float | None) -> str:
    return f"{v:.1f}" if v is not None else "-"


def results(phases: list[Phase], cfg: LoadConfig) -> list[dict]:
    """One report per phase, with the run's settings beside its figures (vLLM's names)."""
    meta = {"backend": "spa", "date": datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
            "modes": [m.value for m in cfg.mode_list],
            "wire_dtype": [w.value for w in cfg.wire_list], "burstiness": cfg.burstiness,
            "num_prompts": cfg.num_prompts, "max_new_tokens": cfg.max_new_tokens,
            "goodput": {k: v * 1000 for k, v in cfg.slos.items()} or None}
    out = []
    for p in phases:
        loop = ({"request_rate": None, "concurrency": cfg.concurrency} if p.rate is None else
                {"request_rate": p.rate, "max_concurrency": cfg.max_concurrency or None})
        out.append(report(p.records, p.seconds, cfg.slos, p.timeline, **meta, **loop, **p.queue,
                          cpu_seconds=p.cpu_s, cpu_share=p.cpu_s / max(p.seconds, 1e-9)))
    return out


def mode_table(d: dict) -> list[str]:
    head = (f"{'mode':>6} {'done':>5} {'fail':>4} {'req/s':>6} {'tok/s':>7} {'M':>5} {'side':>5} "
            f"{'corr':>5} {'B up/tok':>8} {'B dn/tok':>8} {'TTFT p50':>8} {'p99':>7} "
            f"{'TPOT p50':>8} {'ITL p50':>7} {'p99':>7} {'E2E p50':>8} {'p99':>8}")
    if d.get("goodput_share") is not None:
        head += f" {'good':>5}"
    rows = [head]
    for mode, s in [*d["modes"].items(), ("all", d)]:
        row = (f"{mode:>6} {s['completed']:>5} {s['failed']:>4} {s['request_throughput']:>6.2f} "
               f"{s['output_throughput']:>7.1f} {s['m']:>5.3f} {s['side_rate']:>5.2f} "
               f"{s['correction_rate']:>5.2f} {s['bytes_up_per_token'] or 0:>8.0f} "
               f"{s['bytes_down_per_token'] or 0:>8.0f} {ms(s['median_ttft_ms']):>8} "
               f"{ms(s['p99_ttft_ms']):>7} {ms(s['median_tpot_ms']):>8} {ms(s['median_itl_ms']):>7} "
               f"{ms(s['p99_itl_ms']):>7} {ms(s['median_e2el_ms']):>8} {ms(s['p99_e2el_ms']):>8}")
        if d.get("goodput_share") is not None:
            row += f" {s['goodput_share'] or 0:>5.0%}"
        rows.append(row)
    return rows


def wire_table(d: dict) -> list[str]:
    """Bytes per generated token each way per mode and wire dtype (issue 22)."""
    rows = [f"{'mode':>6} {'wire':>5} {'sess':>5} {'tokens':>7} {'M':>5} {'B up/tok':>8} {'B dn/tok':>8}"]
    for mode, s in [*d["modes"].items(), ("all", d)]:
        for wire, w in s["wire_dtypes"].items():
            rows.append(f"{mode:>6} {wire:>5} {w['sessions']:>5} {w['tokens']:>7} {w['m']:>5.3f} "
                        f"{w['bytes_up_per_token'] or 0:>8.0f} {w['bytes_down_per_token'] or 0:>8.0f}")
    return rows


def sweep_table(reports: list[dict]) -> list[str]:
    rows = [f"{'rate':>6} {'done':>5} {'fail':>4} {'req/s':>6} {'good/s':>6} {'tok/s':>7} "
            f"{'TTFT p50':>8} {'p99':>7} {'TPOT p50':>8} {'ITL p99':>7} {'E2E p99':>8} {'M':>5} "
            f"{'errors':>6}"]
    for d in reports:
        good = d["request_goodput"]
        rows.append(f"{offered(d['request_rate']):>6} {d['completed']:>5} {d['failed']:>4} "
                    f"{d['request_throughput']:>6.2f} {good if good is not None else 0:>6.2f} "
                    f"{d['output_throughput']:>7.1f} {ms(d['median_ttft_ms']):>8} "
                    f"{ms(d['p99_ttft_ms']):>7} {ms(d['median_tpot_ms']):>8} "
                    f"{ms(d['p99_itl_ms']):>7} {ms(d['p99_e2el_ms']):>8} {d['m']:>5.3f} "
                    f"{sum(d['errors'].values()):>6}")
    return rows


def _strict(x):
    """JSON has no infinity: an infinite rate is written "inf" (as the flag takes it)."""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _strict(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_strict(v) for v in x]
    return x


def document(reports: list[dict]) -> dict:
    """What --json writes: the one report, or for a sweep the reports under `sweep`."""
    if len(reports) == 1:
        return _strict(reports[0])
    return _strict({"sweep": reports})


def write_json(doc: dict, target: str) -> None:
    if target == "-":
        print(json.dumps(doc), flush=True)
        return
    tmp = Path(target + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(target)  # whole or absent, for whoever polls for it


def main(args) -> None:
    from edge_agent.bundle import load_bundle
    from routing import aio
    from routing.security import client_keys

    cfg = config(args)
    if args.models:  # every user `spa build-models` made, each with its held-out prompts
        from lab.build import ModelSet

        if args.bundle or args.prompts:
            raise InputError("--models names the bundles and prompts: drop --bundle/--prompts")
        models = ModelSet.load(args.models)
        sources = [(models.bundle(n), str(models.prompts(n))) for n in models.user_names()]
    elif args.bundle:
        sources = [(args.bundle, args.prompts)]
    else:
        raise InputError("give --bundle (and --prompts) or --models")
    users = []
    for bundle, prompts in sources:
        edge = load_bundle(bundle)
        users.append((edge, load_prompts(prompts, edge.tokenizer, cfg.max_prompt_tokens)))
    test = LoadTest(users, cfg, client_keys(args, "agent"), budget(args))  # its series exist before a scrape
    progress = Progress(test, cfg.report)
    metrics.serve(args.metrics_port, args.metrics_addr)
    load = (f"{cfg.concurrency} users" if not cfg.rates else
            f"rate {','.join(offered(r) for r in cfg.rates)}/s"
            + (f" (at most {cfg.max_concurrency} in flight)" if cfg.max_concurrency else ""))
    print(f"loadtest: {load} of {len(users)} bundles, modes {cfg.modes}, wire {cfg.wire_dtype}, "
          f"broker {cfg.broker}"
          + (f", /metrics on :{args.metrics_port}" if args.metrics_port else ""),
          file=sys.stderr, flush=True)
    if args.delay:
        time.sleep(args.delay)
    while args.start_file and not os.path.exists(args.start_file):  # a common start (stack_efficiency)
        time.sleep(0.005)
    failure = None
    try:
        phases = aio.run(test.run())
    except SessionError as e:  # the figures of what ran are still written
        failure, phases = e, test.phases
    progress.close()
    reports = results(phases, cfg)
    if args.json and reports:
        write_json(document(reports), args.json)
    if args.plot and reports:
        from loadgen.plots import write_all

        for p in write_all(phases, reports, Path(args.plot)):
            print(f"plot: {p}", file=sys.stderr)
    for d in reports:
        errs = " ".join(f"{k}={v}" for k, v in d["errors"].items()) or "none"
        queued = (f", {d['opens_placed']} OPENs placed by the broker (mean queue wait "
                  f"{d['mean_queue_wait_ms']:.1f} ms)" if d.get("opens_placed") is not None else "")
        print(f"offered {offered(d['request_rate'])}: {d['completed']} done, {d['failed']} not, "
              f"{d['duration']:.1f} s, {d['output_throughput']:.0f} tok/s, M={d['m']:.3f}, "
              f"this process's CPU {d['cpu_share']:.0%} of a core, errors: {errs}{queued}", file=sys.stderr)
        if len(reports) == 1:
            print("\n".join(mode_table(d)), file=sys.stderr)
            if cfg.wire_list != [WireDtype.FP16]:  # fp16 alone: the mode table says it all
                print("\n".join(wire_table(d)), file=sys.stderr)
    if len(reports) > 1:
        print("\n".join(sweep_table(reports)), file=sys.stderr)
    if args.linger and args.metrics_port:
        print(f"serving /metrics for {args.linger:g}s more", file=sys.stderr, flush=True)
        time.sleep(args.linger)
    if failure is not None:
        raise SpaError(f"loadtest stopped: {failure}")
