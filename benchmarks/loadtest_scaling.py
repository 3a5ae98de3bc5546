"""Many edge users against one worker: `spa loadtest` at rising concurrency, side by side in one
run. Per level: tokens/s, TTFT p50, inter-token latency p50/p99, M, errors.

    .venv/bin/python benchmarks/loadtest_scaling.py [--users 1,4,16,64] [--sessions-per-user 4]
        [--modes spa] [--tokens 32] [--processes 1] [--backbone DIR --bundle DIR --device cuda]
    .venv/bin/python benchmarks/loadtest_scaling.py --smoke   # seconds: 2 users, 4 tokens
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


def level(stack: LocalStack, bundle: Path, users: int, a, out: Path) -> dict:
    """`users` spread over up to --processes load-test processes run at once (as compose's
    edge-agent replicas); their summaries merged."""
    procs = min(a.processes, users)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.agent_threads)}
    runs = []
    for k in range(procs):
        n = users // procs + (k < users % procs)
        cmd = [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle",
               str(bundle), "--modes", a.modes, "--concurrency", str(n), "--num-prompts",
               str(n * a.sessions_per_user), "--max-new-tokens", str(a.tokens), "--report", "0",
               "--seed", str(1000 * k), "--json", f"{out}.{k}", *stack.client_args]
        if a.prompts:
            cmd += ["--prompts", a.prompts]
        runs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT, env=env))
    parts = []
    for k, p in enumerate(runs):
        err = p.communicate()[1]
        if p.returncode != 0:
            raise SystemExit(f"loadtest at {users} users failed: {err[-2000:]}")
        parts.append(json.loads(Path(f"{out}.{k}").read_text()))
    tokens = sum(d["tokens"] for d in parts)
    secs = max(d["duration"] for d in parts)

    def worst(key: str) -> float:
        return max((m[key] for d in parts for m in d["modes"].values() if m[key] is not None),
                   default=float("nan")) / 1000

    return {"tokens_per_s": tokens / secs, "m": sum(d["blocking"] for d in parts) / tokens,
            "errors": sum(sum(d["errors"].values()) for d in parts),
            "ttft_p50_s": worst("median_ttft_ms"), "itl_p50_s": worst("median_itl_ms"),
            "itl_p99_s": worst("p99_itl_ms")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", default="1,4,16,64")
    ap.add_argument("--sessions-per-user", type=int, default=4)
    ap.add_argument("--modes", default="spa")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompts")
    ap.add_argument("--backbone")
    ap.add_argument("--bundle")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--processes", type=int, default=1, help="load-test processes per level")
    ap.add_argument("--agent-threads", type=int, default=1, help="torch threads per load test")
    ap.add_argument("--smoke", action="store_true", help="seconds: 2 users, 4 tokens")
    a = ap.parse_args()
    if a.smoke:
        a.users, a.sessions_per_user, a.tokens = "2", 1, 4
    backbone, bundle = (Path(a.backbone), Path(a.bundle)) if a.backbone else models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(backbone, workers=1, max_sessions=256,
                                                          device=a.device) as stack:
        level(stack, bundle, 1, argparse.Namespace(**{**vars(a), "sessions_per_user": 1}),
              Path(tmp) / "warm.json")  # warm-up
        for users in map(int, a.users.split(",")):
            d = level(stack, bundle, users, a, Path(tmp) / f"{users}.json")
            rows.append((users, d["tokens_per_s"], d["ttft_p50_s"], d["itl_p50_s"], d["itl_p99_s"],
                         d["m"], d["errors"]))
    base = rows[0][1]
    print(f"modes {a.modes}, {a.tokens} tokens/session, {a.sessions_per_user} sessions/user, "
          f"worker on {a.device}, up to {a.processes} load-test processes (TTFT/ITL: the worst "
          f"process's percentile)")
    print(f"{'users':>6} {'tok/s':>8} {'× 1 user':>9} {'TTFT p50':>9} {'ITL p50':>8} {'ITL p99':>8} "
          f"{'M':>6} {'errors':>6}")
    for users, tps, ttft, i50, i99, m, errs in rows:
        print(f"{users:>6} {tps:>8.0f} {tps / base:>8.2f}× {ttft * 1000:>7.1f}ms {i50 * 1000:>6.1f}ms "
              f"{i99 * 1000:>6.1f}ms {m:>6.3f} {errs:>6}")


if __name__ == "__main__":
    main()
