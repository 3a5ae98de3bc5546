"""Where the engine's tokens go: the serving path measured stage by stage in one run.

  engine   the worker's Scheduler driven in this process (no sockets, no serialization)
  worker   a `spa worker` process fed directly over ZeroMQ by a stand-in broker in this process
  broker   broker + worker processes, a protocol-level client here (OPEN, ACK, CLOSE; no gate)
  agents   broker + worker + `spa loadtest` processes (EdgeAgent: gate, side network, detok.)

at each number of concurrent sessions, in base and spa modes. Every session asks for the same
number of tokens (no EOS in the first three stages; the agents keep the bundle's EOS). In spa
mode the first three stages carry spa's frames (z and the wire layers) but answer instantly and
never REQUEST: the edge's cost is taken out; the agents stage pays it.

Per stage: tokens/s, the share of the engine's tokens/s, CPU seconds per 1k tokens of each
process (psutil), messages and bytes per token (the stand-in's own counts; the broker's
/metrics through the broker), and the bottleneck: the busiest process when it is near a full
core (Python's work is one thread), else "waiting" (no process saturated: round trips and
queues). `--profile` samples the processes of the largest level with py-spy (or, without
py-spy, cProfiles the in-process client) and prints each one's top functions by own time.

    .venv/bin/python benchmarks/stack_efficiency.py [--sessions 1,16,64] [--tokens 32]
        [--modes base,spa] [--stages engine,worker,broker,agents] [--workers 1] [--agent-procs 1]
        [--profile]
        [--backbone DIR --bundle DIR --device cuda] [--secure] [--json OUT]
    .venv/bin/python benchmarks/stack_efficiency.py --smoke   # seconds: 4 sessions, 4 tokens

The instruments (CPU meter, protocol-level client, stand-in broker, profiles): stage_probes.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from common import ROOT, models
from stage_probes import (
    PER_SOCKET,
    CpuMeter,
    Pump,
    StandIn,
    cprofile_top,
    finish_profiles,
    latencies,
    scrape,
    start_profiles,
)

from routing.protocol import MsgType, msg

STAGES = ("engine", "worker", "broker", "agents")


def opens(fingerprint: str, prompts: list[list[int]], n: int, tokens: int, mode: str,
          wire: list[int]) -> list:
    return [msg(MsgType.OPEN, session=os.urandom(16), prompt=prompts[i % len(prompts)],
                max_new_tokens=tokens, mode=mode, window=min(tokens, 64), sampling={},
                fingerprint=fingerprint, wire_layers=wire, eos=None) for i in range(n)]


# ---- stage 1: the engine alone ------------------------------------------------------------
def stage_engine(sched, prompts, n, tokens, mode, wire) -> dict:
    meter = CpuMeter({"engine": os.getpid()})
    os_ = opens(sched.backbone.fingerprint, prompts, n, tokens, mode, wire)
    meter.start()
    for m in os_:
        sched.handle(m)
    made = 0
    while sched.has_work():
        frames = sched.step()
        made += len(frames)
        for f in frames:
            sched.handle(msg(MsgType.ACK, session=f.session, pos=f["pos"]))
    cpu, wall = meter.stop()
    for m in os_:
        sched.close(m.session)
    return {"tokens": made, "seconds": wall, "cpu": cpu, "messages": 0, "bytes": 0}


# ---- stage 2: the worker process, fed by a stand-in broker (stage_probes.StandIn) --------
def stage_worker(si: StandIn, fp: str, prompts, n, tokens, mode, wire) -> dict:
    si.sync()
    meter = CpuMeter({"worker": si.proc.pid, "client": os.getpid()})
    pump = Pump([si.sock], batch=True, tokens=tokens, dest=si.ident, tick=si.beat)
    meter.start()
    pump.run(opens(fp, prompts, n, tokens, mode, wire))
    cpu, wall = meter.stop()
    return {"tokens": n * tokens, "seconds": wall, "cpu": cpu,
            "messages": pump.count["in"] + pump.count["out"], "bytes": pump.count["bytes"]}


# ---- stages 3 and 4: through the broker ---------------------------------------------------
def stack_pids(stack) -> dict[str, int]:
    """The broker's and every worker's pid ("worker" when there is one, else worker0, worker1, …)."""
    workers = {k: p.pid for k, p in stack.by_name.items() if k.startswith("worker")}
    if len(workers) == 1:
        workers = {"worker": next(iter(workers.values()))}
    return {"broker": stack.by_name["broker"].pid} | workers


def stage_broker(stack, fp: str, prompts, n, tokens, mode, wire) -> dict:
    import zmq

    from routing.security import connect_as

    socks = []
    for _ in range((n + PER_SOCKET - 1) // PER_SOCKET):
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 1_000_000)
        s.setsockopt(zmq.RCVHWM, 1_000_000)
        if stack.key_dir:
            connect_as(s, stack.agent_keys)
        else:
            s.setsockopt(zmq.IDENTITY, os.urandom(16))
        s.connect(stack.agents_addr)
        socks.append(s)
    meter = CpuMeter(stack_pids(stack) | {"client": os.getpid()})
    m0 = scrape(stack.metrics_ports["broker"])
    pump = Pump(socks, batch=False, tokens=tokens)
    meter.start()
    pump.run(opens(fp, prompts, n, tokens, mode, wire))
    cpu, wall = meter.stop()
    m1 = scrape(stack.metrics_ports["broker"])
    for s in socks:
        s.close(0)
    return {"tokens": n * tokens, "seconds": wall, "cpu": cpu, "messages": m1[0] - m0[0],
            "bytes": m1[1] - m0[1], "errors": dict(pump.errors)}


def stage_agents(stack, bundle: Path, n, tokens, mode, procs: int, tmp: Path, prompts_file: str | None,
                 profile_s: float = 0.0, prompt_tokens: int = 128, compute_device: str = "cpu") -> dict:
    procs = max(1, min(procs, n))
    go = tmp / f"go-{mode}-{n}"  # every process waits for it after loading: one common start
    go.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs = []
    for k in range(procs):
        users = n // procs + (k < n % procs)
        cmd = [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle",
               str(bundle), "--modes", mode, "--concurrency", str(users), "--num-prompts", str(users),
               "--max-new-tokens", str(tokens), "--report", "0", "--seed", str(1000 * k),
               "--json", str(tmp / f"lt{k}.json"), "--start-file", str(go),
               "--compute-device", compute_device, *stack.client_args]
        if prompts_file:
            cmd += ["--prompts", prompts_file, "--max-prompt-tokens", str(prompt_tokens)]
        runs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env))
    for p in runs:  # every process loaded (torch, bundle, prompts), then waiting for `go`
        while not (line := p.stderr.readline()).startswith("loadtest:"):
            if not line and p.poll() is not None:
                raise SystemExit(f"loadtest exited {p.returncode} before starting")
    meter = CpuMeter(stack_pids(stack))
    m0 = scrape(stack.metrics_ports["broker"])
    meter.start()
    spies = (start_profiles(meter.pids | {f"loadtest{k}": p.pid for k, p in enumerate(runs)}, profile_s, tmp)
             if profile_s else {})
    go.touch()
    parts = []
    for k, p in enumerate(runs):
        err = p.communicate(timeout=900)[1]
        if p.returncode != 0:
            raise SystemExit(f"loadtest failed: {err[-2000:]}")
        parts.append(json.loads((tmp / f"lt{k}.json").read_text()))
    cpu, _ = meter.stop()
    m1 = scrape(stack.metrics_ports["broker"])
    tokens_all = sum(d["tokens"] for d in parts)
    secs = max(d["duration"] for d in parts)  # each process's own measured phase (torch import excluded)
    cpu["loadtests"] = sum(d["cpu_seconds"] for d in parts)  # each one's own, over its phase
    out = {"tokens": tokens_all, "seconds": secs, "cpu": cpu, "procs": procs, "messages": m1[0] - m0[0],
           "bytes": m1[1] - m0[1], "m": sum(d["blocking"] for d in parts) / max(1, tokens_all),
           "errors": dict(sum((Counter(d["errors"]) for d in parts), Counter())),
           **latencies(parts)}
    if spies:
        out["profile"] = finish_profiles(spies)
    return out



# ---- the report -----------------------------------------------------------------------------
def bottleneck(r: dict) -> str:
    """The busiest process (the load tests: per process) if near a full core, else waiting."""
    busy = {k: v / r["seconds"] / (r.get("procs", 1) if k == "loadtests" else 1)
            for k, v in r["cpu"].items()}
    name, share = max(busy.items(), key=lambda kv: kv[1])
    if share >= 0.85:
        return f"{name} CPU ({share:.0%} of a core)"
    return f"waiting ({name} busiest, {share:.0%})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="1,16,64", help="concurrent sessions per level")
    ap.add_argument("--tokens", type=int, default=32, help="tokens per session")
    ap.add_argument("--modes", default="base,spa")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--workers", type=int, default=1, help="worker processes in the broker and agents "
                    "stages (each may hold every session; the broker places by free slots)")
    ap.add_argument("--agent-procs", type=int, default=1, help="loadtest processes in the agents stage")
    ap.add_argument("--compute-device", default="cpu", choices=("cpu", "cuda"),
                    help="where the agents stage's simulated devices compute (loadtest's flag)")
    ap.add_argument("--backbone")
    ap.add_argument("--bundle")
    ap.add_argument("--prompts", help="prompts file for the agents stage (default: built-in tasks)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--secure", action="store_true", help="CURVE on the broker's sockets")
    ap.add_argument("--profile", type=float, default=0.0, metavar="S",
                    help="py-spy the largest level's processes for S seconds (cProfile the client)")
    ap.add_argument("--prompt-tokens", type=int, default=128,
                    help="prompts cut to this many tokens (short prompts: decode-bound sessions)")
    ap.add_argument("--chunk-tokens", type=int, default=0,
                    help="the worker's tokens per step (0: its default); prefill of many sessions "
                    "takes prompt tokens × sessions / this many steps")
    ap.add_argument("--json")
    ap.add_argument("--smoke", action="store_true", help="seconds: 4 sessions, 4 tokens")
    a = ap.parse_args()
    if a.smoke:
        a.sessions, a.tokens = "4", 4
    levels = [int(x) for x in a.sessions.split(",")]
    stages = [s for s in a.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stages {unknown}; choose from {STAGES}")
    backbone, bundle = (Path(a.backbone), Path(a.bundle)) if a.bundle else models()

    import torch

    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from loadgen.prompts import load_prompts
    from routing.modes import Mode
    from spa.stack import LocalStack

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as `spa worker` does
    bb = Backbone.load(str(backbone), a.device)
    edge = load_bundle(bundle)
    prompts = load_prompts(a.prompts, edge.tokenizer, a.prompt_tokens)
    chunk = ("--chunk-tokens", str(a.chunk_tokens)) if a.chunk_tokens else ()
    wires = {m: edge.wire_layers(Mode.parse(m)) for m in a.modes.split(",")}
    cap = max(levels)
    rows: list[dict] = []
    profiles: dict[str, list] = {}
    tmp = Path(tempfile.mkdtemp(prefix="spa-eff-"))

    def record(stage: str, mode: str, n: int, r: dict) -> None:
        r.update(stage=stage, mode=mode, sessions=n, tok_s=r["tokens"] / r["seconds"])
        rows.append(r)
        print(f"  {stage:>7} {mode:>4} {n:>5}: {r['tok_s']:9.0f} tok/s  "
              + " ".join(f"{k}={v:.2f}s" for k, v in r["cpu"].items()), flush=True)

    print(f"{bb.source} on {a.device}, {a.tokens} tokens/session, {os.cpu_count()} CPUs, "
          f"CURVE {'on' if a.secure else 'off'}, {a.workers} worker(s)", flush=True)
    if "engine" in stages:
        from cloud_worker.config import WorkerConfig
        from cloud_worker.scheduler import Scheduler

        wc = WorkerConfig(max_sessions=cap)  # the step limits auto, as `spa worker` runs
        sched = Scheduler(bb, config=wc.replace(chunk_tokens=a.chunk_tokens) if a.chunk_tokens else wc)
        for mode in wires:
            stage_engine(sched, prompts, 1, 2, mode, wires[mode])  # warm-up
            for n in levels:
                if a.profile and n == cap:
                    r, profiles[f"engine {mode} (cProfile)"] = cprofile_top(
                        lambda n=n, mode=mode: stage_engine(sched, prompts, n, a.tokens, mode, wires[mode]))
                else:
                    r = stage_engine(sched, prompts, n, a.tokens, mode, wires[mode])
                record("engine", mode, n, r)
        sched = None
    fp, bb = bb.fingerprint, None  # the engine's memory back before the worker process takes its own
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    if "worker" in stages:
        si = StandIn(backbone, a.device, cap, tmp / "worker.log", chunk)
        try:
            for mode in wires:
                stage_worker(si, fp, prompts, 1, 2, mode, wires[mode])  # warm-up
                for n in levels:
                    record("worker", mode, n, stage_worker(si, fp, prompts, n, a.tokens, mode, wires[mode]))
        finally:
            si.close()
    # the simulated devices' models share the GPU in the agents stage: the worker leaves them room
    # (and several workers on one GPU each take their share, as they start at once)
    frac = (0.5 if a.compute_device == "cuda" else 0.85) / a.workers
    kv = (("--kv-memory-fraction", f"{frac:.3f}") if a.device.startswith("cuda")
          and (a.workers > 1 or a.compute_device == "cuda") else ())
    if "broker" in stages or "agents" in stages:
        with LocalStack(backbone, workers=a.workers, max_sessions=cap, device=a.device, secure=a.secure,
                        metrics=True, log_dir=tmp / "logs",
                        broker_args=("--max-agent-sessions", str(max(256, 2 * cap)),  # one key here
                                     "--queue-per-key", str(max(256, 2 * cap))),
                        worker_args=(*chunk, *kv)) as stack:
            for mode in wires:
                if "broker" in stages:
                    stage_broker(stack, fp, prompts, 1, 2, mode, wires[mode])
                    for n in levels:
                        record("broker", mode, n, stage_broker(stack, fp, prompts, n, a.tokens, mode,
                                                               wires[mode]))
                if "agents" in stages:
                    for n in levels:
                        r = stage_agents(stack, bundle, n, a.tokens, mode, a.agent_procs, tmp, a.prompts,
                                         a.profile if n == cap else 0.0, a.prompt_tokens, a.compute_device)
                        if "profile" in r:
                            for proc, top in r.pop("profile").items():
                                profiles[f"agents {mode} {n}: {proc}"] = top
                        record("agents", mode, n, r)
    report(rows, profiles, a)


def report(rows: list[dict], profiles: dict, a) -> None:
    engine = {(r["mode"], r["sessions"]): r["tok_s"] for r in rows if r["stage"] == "engine"}
    print("\n| mode | sessions | stage | tok/s | / engine | CPU s per 1k tokens (by process) | msgs/token "
          "| bytes/token | bottleneck |")
    print("|---|---:|---|---:|---:|---|---:|---:|---|")
    for r in sorted(rows, key=lambda r: (r["mode"], r["sessions"], STAGES.index(r["stage"]))):
        eng = engine.get((r["mode"], r["sessions"]))
        per_k = ", ".join(f"{k} {v / r['tokens'] * 1000:.2f}" for k, v in r["cpu"].items())
        r["bottleneck"] = bottleneck(r)
        print(f"| {r['mode']} | {r['sessions']} | {r['stage']} | {r['tok_s']:.0f} | "
              + (f"{r['tok_s'] / eng:.1%}" if eng else "-")
              + f" | {per_k} | {r['messages'] / r['tokens']:.2f} | {r['bytes'] / r['tokens']:.0f} | "
              f"{r['bottleneck']} |")
    for where, top in profiles.items():
        print(f"\nprofile, {where}: top functions by own time")
        for fn, share in top:
            print(f"  {share:>6.1%}  {fn}" if isinstance(share, float) else f"  {fn}: {share}")
    lat = [r for r in rows if "itl_p50_ms" in r]
    if lat:
        print("\n| mode | sessions | ITL p50 ms (processes' range) | ITL p99 | engine step ms | ITL p50 ÷ step "
              "| TTFT p50 ms | TTFT p99 |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in lat:  # the engine's step at that batch: sessions / its tokens per second
        eng = engine.get((r["mode"], r["sessions"]))
        step = r["sessions"] / eng * 1000 if eng else None
        r["engine_step_ms"] = step
        lo, hi = r["itl_p50_range_ms"]
        print(f"| {r['mode']} | {r['sessions']} | {r['itl_p50_ms']:.1f} ({lo:.1f}–{hi:.1f}) | "
              f"{r['itl_p99_ms']:.1f} | " + (f"{step:.2f} | {r['itl_p50_ms'] / step:.2f}×" if step else "- | -")
              + f" | {r.get('ttft_p50_ms', 0):.0f} | {r.get('ttft_p99_ms', 0):.0f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "profiles": profiles}, indent=1))


if __name__ == "__main__":
    main()
