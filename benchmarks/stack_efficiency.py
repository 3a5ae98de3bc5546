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
        [--modes base,spa] [--stages engine,worker,broker,agents] [--agent-procs 1] [--profile]
        [--backbone DIR --bundle DIR --device cuda] [--secure] [--json OUT]
    .venv/bin/python benchmarks/stack_efficiency.py --smoke   # seconds: 1 and 4 sessions, 4 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
from common import ROOT, models

from routing.protocol import MAX_BATCH, MsgType, decode, encode, encode_batch, msg, split_batch

STAGES = ("engine", "worker", "broker", "agents")
PER_SOCKET = 256  # sessions per client connection in the protocol-level client
START_S = 3.0  # load-test processes wait this long after loading, so that they start together


def cpu_s(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system
    except psutil.Error:
        return 0.0


class CpuMeter:
    """CPU seconds of named processes between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids, self.t0 = pids, {}

    def start(self) -> None:
        self.t0 = {k: cpu_s(p) for k, p in self.pids.items()}
        self.wall0 = time.perf_counter()

    def stop(self) -> tuple[dict[str, float], float]:
        wall = time.perf_counter() - self.wall0
        return {k: cpu_s(p) - self.t0[k] for k, p in self.pids.items()}, wall


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


# ---- a protocol-level client: the stand-in broker (stage 2) and the agent side (stage 3) ----
class Pump:
    """Sends OPENs, ACKs each session's newest frame once per drain (as one coalesced send
    where the peer takes BATCH), CLOSEs sessions that are done; counts messages and bytes."""

    def __init__(self, socks: list, batch: bool, tokens: int, dest: bytes | None = None,
                 tick=None) -> None:
        self.socks, self.batch, self.tokens, self.dest, self.tick = socks, batch, tokens, dest, tick
        self.count = Counter()
        self.errors = Counter()
        self.got: dict[bytes, int] = {}
        self.home: dict[bytes, int] = {}  # session → socket index

    def send(self, k: int, ms: list) -> None:
        if not ms:
            return
        enc = [encode(m) for m in ms]
        groups = ([encode_batch(enc[i:i + MAX_BATCH]) for i in range(0, len(enc), MAX_BATCH)]
                  if self.batch else enc)
        for frames in groups:
            self.count["out"] += 1
            self.count["bytes"] += sum(len(f) for f in frames)
            self.socks[k].send_multipart(([self.dest] if self.dest else []) + frames)

    def run(self, os_: list, deadline_s: float = 600.0) -> None:
        import zmq

        for i, m in enumerate(os_):
            self.home[m.session] = (i // PER_SOCKET) % len(self.socks)
            self.got[m.session] = 0
        for k in range(len(self.socks)):
            self.send(k, [m for m in os_ if self.home[m.session] == k])
        pending = {m.session: m for m in os_}
        poller = zmq.Poller()
        for s in self.socks:
            poller.register(s, zmq.POLLIN)
        done, deadline = 0, time.monotonic() + deadline_s
        while done < len(os_):
            if time.monotonic() > deadline:
                raise SystemExit(f"stalled: {done}/{len(os_)} sessions done, errors {dict(self.errors)}")
            ready = dict(poller.poll(100))
            if self.tick is not None:
                self.tick()
            for k, s in enumerate(self.socks):
                if s not in ready:
                    continue
                acks: dict[bytes, int] = {}
                closes, reopen = [], []
                while True:
                    try:
                        frames = s.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if self.dest is not None:
                        frames = frames[1:]  # the worker's routing id
                    self.count["in"] += 1
                    self.count["bytes"] += sum(len(f) for f in frames)
                    m = decode(frames)
                    for part in (split_batch(m, frames) if m.type is MsgType.BATCH else [frames]):
                        pm = decode(part) if m.type is MsgType.BATCH else m
                        if pm.type is MsgType.FRAME and pm.session in self.got:
                            self.got[pm.session] += 1
                            acks[pm.session] = pm["pos"]  # cumulative, as the agent acks
                            if self.got[pm.session] == self.tokens:
                                closes.append(pm.session)
                        elif pm.type is MsgType.ERROR and pm.session in pending:
                            self.errors[pm["code"]] += 1
                            if pm["code"] in ("BUSY", "NO_WORKER") and not self.got[pm.session]:
                                reopen.append(pending[pm.session])
                            else:
                                raise SystemExit(f"session failed: {pm['code']}: {pm['detail']}")
                out = [msg(MsgType.ACK, session=sid, pos=p) for sid, p in acks.items()
                       if sid not in closes]
                out += [msg(MsgType.CLOSE, session=sid) for sid in closes]
                done += len(closes)
                for sid in closes:
                    del self.got[sid]
                self.send(k, out)
                if reopen:
                    time.sleep(0.05)
                    self.send(k, reopen)


def stage_worker(si: StandIn, fp: str, prompts, n, tokens, mode, wire) -> dict:
    si.sync()
    meter = CpuMeter({"worker": si.proc.pid, "client": os.getpid()})
    pump = Pump([si.sock], batch=True, tokens=tokens, dest=si.ident, tick=si.beat)
    meter.start()
    pump.run(opens(fp, prompts, n, tokens, mode, wire))
    cpu, wall = meter.stop()
    return {"tokens": n * tokens, "seconds": wall, "cpu": cpu,
            "messages": pump.count["in"] + pump.count["out"], "bytes": pump.count["bytes"]}


class StandIn:
    """A stand-in broker: a ROUTER where a `spa worker` connects, beating as a broker does."""

    def __init__(self, backbone: Path, device: str, capacity: int, log: Path,
                 extra: tuple[str, ...] = ()) -> None:
        import zmq

        from spa.stack import free_port

        port = free_port()
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1_000_000)
        self.sock.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "spa", "worker", "--broker", f"tcp://127.0.0.1:{port}", "--backbone",
             str(backbone), "--device", device, "--plaintext", "--max-sessions", str(capacity),
             "--max-batch", str(capacity), *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
        self.broker_id, self.ident, self.last = os.urandom(8), None, 0.0
        deadline = time.monotonic() + 300
        while self.ident is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise SystemExit(f"the worker never said READY (log: {log})")
            self.sync(1000)

    def sync(self, wait_ms: int = 0) -> None:
        """Take what the worker sent between stages (a READY again means a new identity)."""
        import zmq

        while self.sock.poll(wait_ms):
            wait_ms = 0
            ident, *frames = self.sock.recv_multipart(zmq.NOBLOCK)
            if decode(frames).type is MsgType.READY:
                self.ident = ident
        self.beat()

    def beat(self) -> None:
        if self.ident is not None and time.monotonic() - self.last > 0.2:
            self.last = time.monotonic()
            self.sock.send_multipart([self.ident, *encode(msg(MsgType.HEARTBEAT, broker=self.broker_id))])

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.sock.close(0)


# ---- stages 3 and 4: through the broker ---------------------------------------------------
def scrape(port: int) -> tuple[float, float]:
    """The broker's protocol messages and bytes so far, both directions."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    n = b = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "spa_messages_total" and s.labels.get("component") == "broker":
                n += s.value
            elif s.name == "spa_message_bytes_total" and s.labels.get("component") == "broker":
                b += s.value
    return n, b


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
    meter = CpuMeter({"broker": stack.by_name["broker"].pid, "worker": stack.by_name["worker0"].pid,
                      "client": os.getpid()})
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
                 profile_s: float = 0.0, prompt_tokens: int = 128) -> dict:
    procs = max(1, min(procs, n))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    runs = []
    for k in range(procs):
        users = n // procs + (k < n % procs)
        cmd = [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle",
               str(bundle), "--modes", mode, "--concurrency", str(users), "--num-prompts", str(users),
               "--max-new-tokens", str(tokens), "--report", "0", "--seed", str(1000 * k),
               "--json", str(tmp / f"lt{k}.json"), "--delay", str(START_S), *stack.client_args]
        if prompts_file:
            cmd += ["--prompts", prompts_file, "--max-prompt-tokens", str(prompt_tokens)]
        runs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env))
    for p in runs:  # every process loaded (torch, bundle, prompts): they start START_S after that
        while not (line := p.stderr.readline()).startswith("loadtest:"):
            if not line and p.poll() is not None:
                raise SystemExit(f"loadtest exited {p.returncode} before starting")
    meter = CpuMeter({"broker": stack.by_name["broker"].pid, "worker": stack.by_name["worker0"].pid})
    m0 = scrape(stack.metrics_ports["broker"])
    meter.start()
    spies = (start_profiles(meter.pids | {f"loadtest{k}": p.pid for k, p in enumerate(runs)}, profile_s, tmp)
             if profile_s else {})
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
           "errors": dict(sum((Counter(d["errors"]) for d in parts), Counter()))}
    if spies:
        out["profile"] = finish_profiles(spies)
    return out


# ---- profiles -------------------------------------------------------------------------------
def start_profiles(pids: dict[str, int], seconds: float, tmp: Path) -> dict:
    import shutil

    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("profile: no py-spy on PATH or beside the interpreter: processes not sampled", flush=True)
        return {}
    out = {}
    for name, pid in pids.items():
        f = tmp / f"{name}.spy"
        p = subprocess.Popen([str(spy), "record", "--pid", str(pid), "--duration", str(int(max(1, seconds))),
                              "--rate", "200", "--format", "raw", "--nonblocking", "-o", str(f)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        out[name] = (p, f)
    return out


def finish_profiles(spies: dict, top: int = 8) -> dict[str, list]:
    """Per process: its top functions by own time (the leaf of each sampled stack)."""
    res = {}
    for name, (p, f) in spies.items():
        try:
            err = p.communicate(timeout=120)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = "timed out"
        if not f.exists():
            res[name] = [("py-spy gave nothing", (err or "").strip()[-200:])]
            continue
        own, total = Counter(), 0
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            leaf = stack.split(";")[-1]
            leaf = leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].split("/")[-1] + ")"
            own[leaf] += int(count)
            total += int(count)
        res[name] = [(fn, round(c / max(1, total), 3)) for fn, c in own.most_common(top)]
    return res


def cprofile_top(fn, top: int = 8) -> tuple[object, list]:
    import cProfile
    import pstats

    prof = cProfile.Profile()
    result = prof.runcall(fn)
    st = pstats.Stats(prof)
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]  # by own (tottime)
    total = sum(v[2] for v in st.stats.values()) or 1
    return result, [(f"{func} ({Path(file).name}:{line})", round(v[2] / total, 3))
                    for (file, line, func), v in rows]


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
    ap.add_argument("--agent-procs", type=int, default=1, help="loadtest processes in the agents stage")
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
    ap.add_argument("--smoke", action="store_true", help="seconds: 1 and 4 sessions, 4 tokens")
    a = ap.parse_args()
    if a.smoke:
        a.sessions, a.tokens = "1,4", 4
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
          f"CURVE {'on' if a.secure else 'off'}", flush=True)
    if "engine" in stages:
        from cloud_worker.config import WorkerConfig
        from cloud_worker.scheduler import Scheduler

        wc = WorkerConfig(max_sessions=cap, max_batch=cap)
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
    if "broker" in stages or "agents" in stages:
        with LocalStack(backbone, workers=1, max_sessions=cap, device=a.device, secure=a.secure,
                        metrics=True, log_dir=tmp / "logs",
                        broker_args=("--max-agent-sessions", str(max(256, 2 * cap))),
                        worker_args=("--max-batch", str(cap), *chunk)) as stack:
            for mode in wires:
                if "broker" in stages:
                    stage_broker(stack, fp, prompts, 1, 2, mode, wires[mode])
                    for n in levels:
                        record("broker", mode, n, stage_broker(stack, fp, prompts, n, a.tokens, mode,
                                                               wires[mode]))
                if "agents" in stages:
                    for n in levels:
                        r = stage_agents(stack, bundle, n, a.tokens, mode, a.agent_procs, tmp, a.prompts,
                                         a.profile if n == cap else 0.0, a.prompt_tokens)
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
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "profiles": profiles}, indent=1))


if __name__ == "__main__":
    main()
