"""`spa demo` (what `make demo` runs): the broker, one worker and every user's edge agents as
separate processes on localhost, over CURVE. On first use `spa build-models` builds the models
into the cache (SmolLM2-135M-Instruct and two users' private bundles; it says how long).

For each user, one held-out prompt runs twice at the same time: in `spa` mode (the user's side
network, asked for only where its gate fires; those tokens are marked) and in `base` mode (the
shared backbone alone), so the difference the private network makes is on screen. All sessions
share the worker's batched steps. Then per session: tokens, M, side rate, TTFT, inter-token p50.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab.build import ModelSet, build_models
from lab.data import read_prompt_file
from routing.errors import InputError
from spa.stack import LocalStack

SIDE_ON, SIDE_OFF = "\033[1;32m", "\033[0m"
DIM_ON = "\033[2m"


def run_demo(args) -> None:
    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    t0 = time.monotonic()
    models = build_models(args.cache, args.backbone, args.xsum)
    modes = [m for m in args.modes.split(",") if m]
    if not modes:
        raise InputError("--modes is empty")
    names = args.users.split(",") if args.users else models.user_names()
    sessions = []  # one per (user, mode): the same prompt in each mode
    for name in names:
        if name not in models.user_names():
            raise InputError(f"no user {name!r} in {models.root}: {', '.join(models.user_names())}")
        prompts = read_prompt_file(models.prompts(name))
        prompt = prompts[args.prompt % len(prompts)]
        about = next(u["about"] for u in models.users if u["name"] == name)
        sessions += [{"user": name, "about": about, "mode": m, "prompt": prompt, "text": "",
                      "stats": None, "error": ""} for m in modes]
    if getattr(args, "new_user", None):
        sessions += _new_user(args, models, modes)
    tty = sys.stdout.isatty()
    log_dir = Path(args.cache) / "logs"
    print(f"starting the broker, a worker ({models.backbone_source}) and {len(sessions)} edge "
          f"agents (logs in {log_dir})", flush=True)
    procs: list[subprocess.Popen] = []
    with LocalStack(models.backbone, workers=1, log_dir=log_dir) as stack:
        try:
            sel = selectors.DefaultSelector()
            for i, s in enumerate(sessions):
                p = subprocess.Popen(
                    [sys.executable, "-m", "spa", "agent", "--broker", stack.agents_addr,
                     "--bundle", str(s.get("bundle") or models.bundle(s["user"])), "--prompt", s["prompt"],
                     "--mode", s["mode"], "--json", "--max-new-tokens", str(args.max_new_tokens),
                     *_budget_flags(args),
                     *stack.client_args],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
                procs.append(p)
                sel.register(p.stdout, selectors.EVENT_READ, i)
            print(f"ready in {time.monotonic() - t0:.1f} s; streaming "
                  f"(side-network tokens {'in green' if tty else '[in brackets]'}):\n", flush=True)
            first = _stream(sel, sessions, tty)
            for s, p in zip(sessions, procs, strict=True):
                if p.wait() != 0:
                    s["error"] = p.stderr.read().strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
                    p.wait()
    if not tty:
        print(_render(sessions, tty))
    _summary(sessions)
    if first is not None:
        print(f"first token {first - t0:.1f} s after the demo started; all done in "
              f"{time.monotonic() - t0:.1f} s")


def _budget_flags(args) -> list[str]:
    """The agents' M-budget flags (none without a budget)."""
    if not getattr(args, "m_budget", 0.0):
        return []
    return ["--m-budget", str(args.m_budget), "--budget-rate", str(args.budget_rate),
            "--budget-slack", str(args.budget_slack)]


def _new_user(args, models: ModelSet, modes: list[str]) -> list[dict]:
    """Issue 19: a third user blended on the spot from the first ≤ 16 records of
    `--new-user` (the pool is built into `<cache>/pool` on first use); the prompt shown is the
    file's next record, else its last. The need router's verdict on it is printed."""
    from cloud_worker.backbone import Backbone
    from edge_agent.need import NeedRouter
    from lab.blend import BlendConfig, blend, save_blended
    from lab.data import load_examples
    from lab.pool import PoolConfig, build_pool, load_pool, xsum_file

    bb = Backbone.load(models.backbone)
    pool_dir = Path(args.pool) if getattr(args, "pool", None) else models.root / "pool"
    if not (pool_dir / "pool.json").is_file():
        print(f"building the side-network pool into {pool_dir} (first use only)", flush=True)
        build_pool(bb, pool_dir, PoolConfig(), xsum=xsum_file(args.xsum))
    cfg = BlendConfig()
    records = load_examples(args.new_user)
    examples = records[: cfg.max_examples]
    edge, record = blend(bb, load_pool(pool_dir, bb.fingerprint), examples, cfg)
    out = save_blended(edge, record, models.root / "users" / "new-user", kits=models.root / "kits")
    b = record["blend"]
    print(f"new user: blended from {len(examples)} examples of {args.new_user} in "
          f"{b['seconds']['total']:.1f} s ({b['cpu_seconds']['total']:.1f} CPU s): "
          + ", ".join(f"{k} {v:+.2f}" for k, v in b["coefficients"].items()), flush=True)
    shown = records[len(examples)] if len(records) > len(examples) else records[-1]
    prompt_ids = shown.prompt_ids(bb.tokenizer, cfg.max_prompt_tokens)
    need = NeedRouter.load(out, edge.d_model)
    verdict = "customised (spa)" if need.customised(prompt_ids, edge.lm_head) else "generic (would run as base)"
    print(f"new user: the need router calls the prompt {verdict}", flush=True)
    prompt = bb.tokenizer.decode(prompt_ids)
    return [{"user": "new", "about": f"blended from {args.new_user}", "mode": m, "prompt": prompt,
             "text": "", "stats": None, "error": "", "bundle": str(out)} for m in modes]


def _stream(sel: selectors.BaseSelector, sessions: list[dict], tty: bool) -> float | None:
    """Until every agent's stream ends; returns when the first token arrived (monotonic)."""
    open_streams, last_paint, painted, first = len(sessions), 0.0, 0, None
    while open_streams:
        for key, _ in sel.select(timeout=0.2):
            s, line = sessions[key.data], key.fileobj.readline()
            if not line:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            ev = json.loads(line)
            if first is None and not ev.get("done"):
                first = time.monotonic()
            if ev.get("done"):
                s["stats"] = ev
            elif ev["path"] == "side" and ev["text"]:  # (EOS has no text)
                shown = ev["text"].replace("\n", "⏎")  # the text is shown on one line
                s["text"] += (SIDE_ON + shown + SIDE_OFF) if tty else f"[{shown}]"
            else:
                s["text"] += ev["text"]
        if tty and time.monotonic() - last_paint > 0.1:
            painted = _paint(sessions, painted)
            last_paint = time.monotonic()
    if tty:
        _paint(sessions, painted)
    return first


def _render(sessions: list[dict], tty: bool) -> str:
    lines, user = [], None
    for s in sessions:
        if s["user"] != user:
            user = s["user"]
            chat = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", s["prompt"], re.S)
            prompt = " | ".join((chat[1] if chat else s["prompt"]).strip().split("\n"))
            prompt = prompt if len(prompt) <= 150 else prompt[:110] + " … " + prompt[-36:]
            lines += [f"{user}: {s['about']}", f"  prompt  {prompt}"]
        body = " ".join((s["text"] or "…").split())
        label = f"  {s['mode']:<6}  "
        lines.append(label + (DIM_ON + body + SIDE_OFF if tty and s["mode"] == "base" else body))
    return "\n".join(lines)


def _paint(sessions: list[dict], painted: int) -> int:
    text = _render(sessions, True)
    if painted:
        sys.stdout.write(f"\033[{painted}F\033[J")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    width = max(20, os.get_terminal_size(sys.stdout.fileno()).columns)
    return sum(max(1, -(-len(_visible(ln)) // width)) for ln in text.split("\n"))


def _visible(line: str) -> str:
    for code in (SIDE_ON, SIDE_OFF, DIM_ON):
        line = line.replace(code, "")
    return line


def _summary(sessions: list[dict]) -> None:
    print(f"\n{'user':>6} {'mode':>6} {'tokens':>6} {'M':>6} {'side':>6} {'TTFT ms':>8} {'ITL p50 ms':>10}")
    for s in sessions:
        st = s["stats"]
        if st is None:
            print(f"{s['user']:>6} {s['mode']:>6}  no result: {' '.join(s['error']) or 'no answer'}")
            continue
        itl = statistics.median(st["inter_token_s"]) * 1000 if st["inter_token_s"] else 0.0
        print(f"{s['user']:>6} {s['mode']:>6} {st['tokens']:>6} {st['m']:>6.2f} {st['side_rate']:>6.2f} "
              f"{st['ttft_s'] * 1000:>8.1f} {itl:>10.1f}")
    print("M: blocking edge↔cloud transmissions per token (base needs none; every token of "
          "`full` needs one)")


def demo_prompts(models: ModelSet, n: int) -> list[str]:
    """The first user's held-out prompts, repeated to `n` (for the benchmarks)."""
    ps = read_prompt_file(models.prompts(models.user_names()[0]))
    return (ps * (n // len(ps) + 1))[:n]
