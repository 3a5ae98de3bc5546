"""The measuring instruments of `stack_efficiency.py` (a library, not a script): CPU seconds of
named processes (psutil), a protocol-level client (`Pump`: OPENs, cumulative ACKs, CLOSEs,
messages and bytes counted), a stand-in broker a `spa worker` connects to (`StandIn`), the
broker's /metrics message counts (`scrape`), and profiles (py-spy per process, cProfile here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
from common import ROOT

from routing.batch import coalesce, split_batch
from routing.protocol import MsgType, decode, encode, msg

PER_SOCKET = 256  # sessions per client connection in the protocol-level client


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
        groups = [frames for frames, _, _ in coalesce(enc)] if self.batch else enc
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
             *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)
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


def latencies(parts: list[dict]) -> dict:
    """ITL and TTFT over the load-test processes: each figure's median over the processes'
    medians weighted by their output tokens (the processes run the same load, so their
    distributions are alike), with the processes' range beside it; p99 is the worst process's."""
    out: dict = {}
    for name in ("itl", "ttft"):
        pts = sorted((d[f"median_{name}_ms"], d["total_output_tokens"]) for d in parts
                     if d.get(f"median_{name}_ms") is not None)
        if not pts:
            continue
        half, acc = sum(w for _, w in pts) / 2, 0
        for v, w in pts:
            acc += w
            if acc >= half:
                out[f"{name}_p50_ms"] = v
                break
        out[f"{name}_p50_range_ms"] = [pts[0][0], pts[-1][0]]
        out[f"{name}_p99_ms"] = max(d.get(f"p99_{name}_ms") or 0.0 for d in parts)
    return out
