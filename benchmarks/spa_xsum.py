"""The SPA result on XSum, end to end, in one process: (1) optionally a model-selection sweep on
the dev split, (2) `spa train` on :800, (3) `spa eval` on 800: in all five modes plus the τ sweep,
with bootstrap intervals and paired bootstraps. Prints the tables and the wall-clock times.

    python benchmarks/spa_xsum.py --backbone DIR --data xsum_1000.jsonl --out runs/spa \
        --device cuda [--select] [--train-args "--dropout 0.2 …"]

--select runs `benchmarks/spa_select.py`'s sweep first and trains with what it chose.
--smoke: seconds on the tests' tiny backbone ($SPA_BENCH_BACKBONE) and 60 generated `sums`
records (lab/tasks.py): train, eval in five modes with the sweep, and one budget.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone")
    p.add_argument("--data")
    p.add_argument("--out", default="runs/spa_xsum")
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-split", default=":800")
    p.add_argument("--eval-split", default="800:")
    p.add_argument("--limit", type=int, default=0, help="evaluation records (0 = all)")
    p.add_argument("--target-m", type=float, default=0.47)
    p.add_argument("--train-args", default="", help="more `spa train` flags")
    p.add_argument("--eval-args", default="", help="more `spa eval` flags")
    p.add_argument("--select", action="store_true", help="run the dev-split model selection first")
    p.add_argument("--select-args", default="", help="flags for spa_select.py")
    p.add_argument("--budgets", default="", help="per-session M budgets for spa, e.g. 0.2,0.35,0.5: "
                   "Rouge-L and M under each (budget.json)")
    p.add_argument("--budget-tokens", type=int, default=64, help="new tokens per budget session")
    p.add_argument("--wire-dtypes", default="", help="issue 22: e.g. fp16,int8,int4 — the trained "
                   "bundle evaluated with frames on each grid, side network stored fp32 and int8, "
                   "paired bootstraps against fp16/fp32 (wire.json)")
    p.add_argument("--wire-modes", default="spa,full", help="modes of the --wire-dtypes table")
    p.add_argument("--smoke", action="store_true", help="seconds, on the tests' tiny backbone")
    args = p.parse_args()
    if args.smoke:
        _smoke(args)
    if not args.backbone or not args.data:
        p.error("--backbone and --data are required (or --smoke)")

    import torch

    from spa.cli import main as spa

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    extra = shlex.split(args.train_args)
    eval_extra = shlex.split(args.eval_args)
    select_extra = shlex.split(args.select_args)
    if "cuda" in args.device:  # many sequences per backbone forward, all training prompts
        extra = ["--gen-batch", "256", "--rollout-prompts", "0"] + extra
        eval_extra = ["--batch-size", "256"] + eval_extra
        select_extra = ["--gen-batch", "256"] + select_extra
    if args.select:
        from benchmarks.spa_select import main as select

        t = time.time()
        chosen = select(["--backbone", args.backbone, "--data", args.data, "--split", args.train_split,
                         "--device", args.device, "--out", str(out / "select.json"),
                         "--target-m", str(args.target_m)] + select_extra)
        times["select_s"] = round(time.time() - t, 1)
        extra = chosen + extra
    common = ["--backbone", args.backbone, "--data", args.data, "--device", args.device]
    train_cmd = (["train"] + common + ["--split", args.train_split, "--out", str(out / "bundle"),
                                       "--target-m", str(args.target_m), "--quiet"] + extra)
    eval_cmd = (["eval"] + common + ["--bundle", str(out / "bundle"), "--split", args.eval_split,
                                     "--limit", str(args.limit), "--json", str(out / "eval.json"),
                                     "--plot", str(out / "rouge_vs_m.png"), "--quiet"]
                + eval_extra)
    for name, cmd in (("train", train_cmd), ("eval", eval_cmd)):
        print("$ spa " + shlex.join(cmd), flush=True)
        t = time.time()
        if spa(cmd) != 0:
            raise SystemExit(f"spa {name} failed")
        times[f"{name}_s"] = round(time.time() - t, 1)
        print(f"[{name}] {times[f'{name}_s']} s", flush=True)
    times["train_plus_eval_s"] = round(times["train_s"] + times["eval_s"], 1)
    if args.budgets:
        t = time.time()
        budget_run(args, out)
        times["budget_s"] = round(time.time() - t, 1)
    if args.wire_dtypes:
        t = time.time()
        wire_run(args, out)
        times["wire_s"] = round(time.time() - t, 1)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() and "cuda" in args.device else "cpu"
    summary = {"times": times, "device": dev, "torch": torch.__version__,
               "train": shlex.join(train_cmd), "eval": shlex.join(eval_cmd)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2), flush=True)


def _smoke(args) -> None:
    """The whole pipeline at toy scale: the tiny backbone, 60 `sums` records (48 train with a
    dev tenth, 12 evaluated), one epoch, 8 new tokens, one budget."""
    from lab.tasks import main as make_task

    out = Path(args.out if args.out != "runs/spa_xsum" else "smoke_spa_xsum")
    out.mkdir(parents=True, exist_ok=True)
    data = out / "sums.jsonl"
    make_task(["sums", "--n", "60", "--out", str(data)])
    args.backbone = os.environ.get("SPA_BENCH_BACKBONE") or args.backbone
    args.data, args.out, args.train_split, args.eval_split = str(data), str(out), ":48", "48:"
    args.train_args = ("--epochs 1 --clf-epochs 1 --calib-steps 2 --rollout-tokens 8 "
                       "--max-prompt-tokens 96 " + args.train_args)
    args.eval_args = "--max-new-tokens 8 --sweep-limit 4 --max-prompt-tokens 96 " + args.eval_args
    args.budgets, args.budget_tokens = args.budgets or "0.5", 8
    if not args.backbone:
        raise SystemExit("--smoke needs SPA_BENCH_BACKBONE (a tiny backbone) or --backbone")


def budget_run(args, out: Path) -> None:
    """spa under each per-session M budget, beside base and full at the same length."""
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from lab.data import load_examples, split
    from lab.evaluate import Evaluator, budget_curve
    from routing.modes import Mode

    bb = Backbone.load(args.backbone, args.device)
    edge = load_bundle(out / "bundle", bb.fingerprint)
    examples = split(load_examples(args.data), args.eval_split)[: args.limit or None]
    ev = Evaluator(bb, edge, 384, args.budget_tokens, 256 if "cuda" in args.device else 32, False)
    rows = []
    for m in (Mode.BASE, Mode.FULL, Mode.SPA):
        r = ev.run_mode(m, examples)
        rows.append({**r.row(), "budget": None, "scores": [round(x, 3) for x in r.scores]})
        print(f"{m.value} at {args.budget_tokens} tokens: Rouge-L {r.rouge_l:.2f} M {r.stats.m:.3f}", flush=True)
    rows += budget_curve(ev, examples, [float(b) for b in args.budgets.split(",")])
    (out / "budget.json").write_text(json.dumps({"budget_tokens": args.budget_tokens, "rows": rows}, indent=2))


def wire_run(args, out: Path) -> None:
    """The same bundle under each wire grid and with its weights stored int8 (issue 22): Rouge-L
    and M per (mode, wire, weights), paired bootstrap of each against fp16 frames + fp32 weights
    (lab/wire_quality.py, shared with persona_quality.py)."""
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from lab.data import load_examples, split
    from lab.evaluate import Evaluator
    from lab.wire_quality import weight_variants, wire_rows
    from routing.modes import Mode

    bb = Backbone.load(args.backbone, args.device)
    edges = weight_variants(bb, load_bundle(out / "bundle", bb.fingerprint), out)
    examples = split(load_examples(args.data), args.eval_split)[: args.limit or None]
    evs = {w: Evaluator(bb, e, 384, 48, 256 if "cuda" in args.device else 32, False)
           for w, e in edges.items()}

    def run(weights: str, mode: Mode, wire: str) -> tuple[list[float], dict]:
        r = evs[weights].run_mode(mode, examples, wire_dtype=wire)
        return r.scores, r.row()

    rows = wire_rows(list(edges), [Mode.parse(m) for m in args.wire_modes.split(",")],
                     args.wire_dtypes, run)
    (out / "wire.json").write_text(json.dumps({"examples": len(examples), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
