"""Many edge users against one worker: `spa loadtest` at rising concurrency, side by side in one
run. Per level: tokens/s, TTFT p50, inter-token latency p50/p99, M, errors.

    .venv/bin/python benchmarks/loadtest_scaling.py [--users 1,4,16,64] [--sessions-per-user 4]
        [--modes spa] [--tokens 32] [--backbone DIR --bundle DIR --device cuda]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, models

from spa.stack import LocalStack


def level(stack: LocalStack, bundle: Path, users: int, a, out: Path) -> dict:
    cmd = [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--bundle",
           str(bundle), "--modes", a.modes, "--concurrency", str(users), "--sessions",
           str(users * a.sessions_per_user), "--max-new-tokens", str(a.tokens), "--report", "0",
           "--json", str(out)]
    if a.prompts:
        cmd += ["--prompts", a.prompts]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"loadtest at {users} users failed: {res.stderr[-2000:]}")
    return json.loads(out.read_text())


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
    a = ap.parse_args()
    backbone, bundle = (Path(a.backbone), Path(a.bundle)) if a.backbone else models()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalStack(backbone, workers=1, max_sessions=256,
                                                          device=a.device) as stack:
        level(stack, bundle, 1, argparse.Namespace(**{**vars(a), "sessions_per_user": 1}),
              Path(tmp) / "warm.json")  # warm-up
        for users in map(int, a.users.split(",")):
            d = level(stack, bundle, users, a, Path(tmp) / f"{users}.json")
            ttft = [m["ttft_p50_s"] for m in d["modes"].values()]
            itl50 = [m["itl_p50_s"] for m in d["modes"].values()]
            itl99 = [m["itl_p99_s"] for m in d["modes"].values()]
            rows.append((users, d["tokens_per_s"], max(ttft), max(itl50), max(itl99), d["m"],
                         sum(d["errors"].values())))
    base = rows[0][1]
    print(f"modes {a.modes}, {a.tokens} tokens/session, {a.sessions_per_user} sessions/user, "
          f"device {a.device}")
    print(f"{'users':>6} {'tok/s':>8} {'× 1 user':>9} {'TTFT p50':>9} {'ITL p50':>8} {'ITL p99':>8} "
          f"{'M':>6} {'errors':>6}")
    for users, tps, ttft, i50, i99, m, errs in rows:
        print(f"{users:>6} {tps:>8.0f} {tps / base:>8.2f}× {ttft * 1000:>7.1f}ms {i50 * 1000:>6.1f}ms "
              f"{i99 * 1000:>6.1f}ms {m:>6.3f} {errs:>6}")


if __name__ == "__main__":
    main()
