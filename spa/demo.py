"""`spa demo` (what `make demo` runs): broker, one worker and several agents as separate
processes on localhost. On first run it builds a tiny backbone and an edge bundle from text it
generates (or --corpus) and caches them. Each generation streams; tokens the side network
produced are marked; per session M, TTFT and inter-token latency. Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import selectors
import statistics
import subprocess
import sys
import time
from pathlib import Path

from routing.errors import InputError
from spa.stack import LocalStack

MODES = ["spa", "choice", "full", "lst", "base"]
SIDE_ON, SIDE_OFF = "\033[1;32m", "\033[0m"


def ensure_models(cache: Path, corpus: str | None, steps: int = 400) -> tuple[Path, Path]:
    """The default backbone and bundle, built once and cached (a bundle is trained for the
    backbone that is there; one trained for another backbone is refused when loaded)."""
    from cloud_worker.backbone import Backbone
    from cloud_worker.pretrain import pretrain
    from edge_agent.bundle import save_bundle
    from edge_agent.data import load_examples
    from edge_agent.synthetic import make_corpus, make_personal_tasks, write_jsonl
    from edge_agent.training import TrainConfig, train_bundle

    backbone_dir, bundle_dir = cache / "backbone", cache / "bundle"
    tasks = cache / "tasks.jsonl"
    if not (backbone_dir / "config.json").is_file():
        print(f"first run: pretraining a tiny backbone into {backbone_dir} (about a minute)")
        if corpus is None:
            cache.mkdir(parents=True, exist_ok=True)
            corpus = str(cache / "corpus.txt")
            Path(corpus).write_text(make_corpus(3000, seed=0))
        pretrain(corpus, backbone_dir, "tiny", steps, progress=sys.stderr.isatty())
    if not (bundle_dir / "bundle.json").is_file():
        print(f"first run: training the edge bundle into {bundle_dir}")
        write_jsonl(make_personal_tasks(400, seed=1), tasks)
        bb = Backbone.load(backbone_dir)
        edge, record = train_bundle(bb, load_examples(tasks)[:360], TrainConfig(
            epochs=8, rollout_prompts=24, rollout_tokens=24), progress=sys.stderr.isatty())
        save_bundle(edge, bundle_dir, record)
    if not tasks.is_file():
        write_jsonl(make_personal_tasks(400, seed=1), tasks)
    return backbone_dir, bundle_dir


def demo_prompts(cache: Path, n: int) -> list[str]:
    from edge_agent.data import load_examples

    tasks = cache / "tasks.jsonl"
    if tasks.is_file():
        return [ex.prompt for ex in load_examples(tasks)[360:360 + n]]
    return [f"Instruction: Describe it briefly.\nInput: the {w}\nResponse:" for w in
            ("cat", "river", "old king", "busy market", "ship", "forest")][:n]


def run_demo(args) -> None:
    if args.agents < 1:
        raise InputError(f"--agents must be >= 1, got {args.agents}")
    cache = Path(args.cache)
    if args.backbone:
        if not args.bundle:
            raise InputError("--backbone needs --bundle (an edge bundle trained for it)")
        backbone_dir, bundle_dir = Path(args.backbone), Path(args.bundle)
    else:
        backbone_dir, bundle_dir = ensure_models(cache, args.corpus)
    prompts = demo_prompts(cache, args.agents)
    while len(prompts) < args.agents:
        prompts += prompts
    tty = sys.stdout.isatty()
    agents: list[subprocess.Popen] = []
    with LocalStack(backbone_dir, workers=1, log_dir=cache / "logs") as stack:
        print(f"broker {stack.agents_addr}, 1 worker, {args.agents} agents (logs in {cache / 'logs'})")
        try:
            sel = selectors.DefaultSelector()
            state = []
            for i in range(args.agents):
                mode = MODES[i % len(MODES)]
                p = subprocess.Popen(
                    [sys.executable, "-m", "spa", "agent", "--broker", stack.agents_addr, "--bundle",
                     str(bundle_dir), "--prompt", prompts[i], "--mode", mode, "--json",
                     "--max-new-tokens", str(args.max_new_tokens), *stack.client_args],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
                agents.append(p)
                state.append({"mode": mode, "prompt": prompts[i], "text": "", "stats": None})
                sel.register(p.stdout, selectors.EVENT_READ, i)
            open_streams, last_paint, painted = args.agents, 0.0, 0
            while open_streams:
                for key, _ in sel.select(timeout=0.2):
                    i, line = key.data, key.fileobj.readline()
                    if not line:
                        sel.unregister(key.fileobj)
                        open_streams -= 1
                        continue
                    ev = json.loads(line)
                    if ev.get("done"):
                        state[i]["stats"] = ev
                    elif ev["path"] == "side":
                        state[i]["text"] += (SIDE_ON + ev["text"] + SIDE_OFF) if tty else f"[{ev['text']}]"
                    else:
                        state[i]["text"] += ev["text"]
                if tty and time.monotonic() - last_paint > 0.1:
                    painted = _paint(state, painted)
                    last_paint = time.monotonic()
            for p in agents:
                if p.wait() != 0:
                    print(f"agent exited {p.returncode}: {p.stderr.read().strip()}", file=sys.stderr)
            if tty:
                _paint(state, painted)
            else:
                for i, s in enumerate(state):
                    print(f"\n--- agent {i} [{s['mode']}] {s['prompt']!r}\n{s['text']}")
            _summary(state)
        finally:
            for p in agents:
                if p.poll() is None:
                    p.terminate()
                    p.wait()


def _paint(state: list[dict], painted: int) -> int:
    if painted:
        sys.stdout.write(f"\033[{painted}F\033[J")
    lines = []
    for i, s in enumerate(state):
        prompt = s["prompt"].replace("\n", " | ")
        lines.append(f"agent {i} [{s['mode']}] {prompt}")
        lines.extend("    " + t for t in (s["text"] or "…").split("\n"))
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return len(lines)


def _summary(state: list[dict]) -> None:
    print("\nside-network tokens are marked" + (" in green" if sys.stdout.isatty() else " [like this]"))
    print(f"{'agent':>5} {'mode':>6} {'tokens':>6} {'M':>6} {'side':>6} {'TTFT ms':>8} {'ITL p50 ms':>10}")
    for i, s in enumerate(state):
        st = s["stats"]
        if st is None:
            print(f"{i:>5} {s['mode']:>6}  (no result)")
            continue
        itl = statistics.median(st["inter_token_s"]) * 1000 if st["inter_token_s"] else 0.0
        print(f"{i:>5} {s['mode']:>6} {st['tokens']:>6} {st['m']:>6.2f} {st['side_rate']:>6.2f} "
              f"{st['ttft_s'] * 1000:>8.1f} {itl:>10.1f}")
