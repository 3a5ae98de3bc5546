"""Where a blended side network wins or loses, per answer segment (issue 19; CPU-sized).

For each held-out user (lab/pool.py HELD_OUT) and each blend recipe (the default and every
`--variant`, each over `--seeds`), blend from the first `--examples` records as
benchmarks/blend_quality.py does, then on `--eval` held-out records of the same split:

  * teacher-forced NLL and top-1 right per answer segment, read off the copy flags
    (lab.blend_tune.copied_positions): `opening` (the user's words before the first copied
    token), `turn` (the first copied token: where the answer turns to the message), `message`
    (the other copied tokens), `closing` (the user's words after, and the end token);
  * with `--rouge N`, full-mode Rouge-L of greedy answers to the first N held-out prompts,
    against the base backbone's on the same prompts (paired);
  * with `--trained`, the comparator of blend_quality.py (a side network trained from scratch
    on all `--train-records`) in both, and each recipe's full-mode gap closed over the seeds'
    mean per record: (blend − base)/(trained − base), paired bootstrap.

Everything runs on the CPU (a device's figures; the pool as `spa pool build` wrote it):

    HF_HUB_OFFLINE=1 python benchmarks/blend_segments.py --pool .spa-cache/pool --users bo \\
        --seeds 2 --rouge 32 --variant copies:coef_on=copies --json /tmp/segments.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from blend_quality import cpu_setup, parse_variants, smoke_setup, trained_bundle, with_seeds  # noqa: E402

SEGMENTS = ("opening", "turn", "message", "closing")


def segment_labels(flags: list[bool]) -> list[str]:
    """One answer's positions (answer tokens + end) named by segment from its copy flags."""
    first = next((i for i, f in enumerate(flags) if f), None)
    last = max((i for i, f in enumerate(flags) if f), default=None)
    out = []
    for i, f in enumerate(flags):
        if first is None or i < first:
            out.append("opening")
        elif i == first:
            out.append("turn")
        elif i <= last:
            out.append("message" if f else "closing")
        else:
            out.append("closing")
    return out


def segment_stats(lm_head, feats, side, labels: list[str]) -> dict:
    """{segment: [mean NLL, share top-1 right]} under lm_head(z + Δ) (Δ = 0 without `side`)."""
    nll, right = [], []
    with torch.no_grad():
        for i in range(0, len(feats), 256):
            z = feats.z[i : i + 256].float()
            h = z + side(feats.states[i : i + 256].float()) if side is not None else z
            logits = lm_head(h)
            y = feats.y[i : i + 256]
            nll += F.cross_entropy(logits, y, reduction="none").tolist()
            right += (logits.argmax(-1) == y).tolist()
    out = {}
    for seg in SEGMENTS:
        idx = [j for j, s in enumerate(labels) if s == seg]
        if idx:
            out[seg] = [round(statistics.fmean(nll[j] for j in idx), 3),
                        round(statistics.fmean(right[j] for j in idx), 3)]
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--pool", default="", help="a `spa pool build` directory (required)")
    ap.add_argument("--users", default="ada,bo,cy")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--train-records", type=int, default=300, help="records of the split before "
                    "the held-out ones (blend_quality.py's); the comparator's with --trained")
    ap.add_argument("--eval", type=int, default=48, help="held-out records, teacher-forced")
    ap.add_argument("--rouge", type=int, default=0, help="held-out prompts generated (full mode)")
    ap.add_argument("--max-new", type=int, default=48)
    ap.add_argument("--trained", action="store_true", help="train blend_quality.py's comparator")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,…")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="")
    ap.add_argument("--smoke", action="store_true", help="tiny backbone and pool, one user: seconds")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # blend_quality.py's tiny backbone and budgets; a pool built beside the run
        smoke_setup(args)
        args.rouge, args.trained, args.seeds = 2, True, 2
        args.variant = args.variant or ["copies:coef_on=all"]
    from edge_agent.edge_model import EdgeModel
    from lab.blend import blend, train_config
    from lab.blend_tune import copied_positions, layout
    from lab.evaluate import Evaluator
    from lab.pool import (
        HELD_OUT,
        STYLES,
        corpus_file,
        style_records,
        xsum_file,
    )
    from lab.training import extract_features
    from routing.modes import Mode

    bb, pool, cfg = cpu_setup(args)
    tok = bb.tokenizer
    recipes = {"blended": cfg, **with_seeds(parse_variants(args.variant, cfg), cfg, args.seeds)}
    lm = EdgeModel.for_backbone(bb).cpu().lm_head
    report: dict = {"args": vars(args), "pool": pool.names, "users": {}}
    for name in args.users.split(","):
        if name not in {s.name for s in HELD_OUT}:
            raise SystemExit(f"unknown held-out user {name!r}")
        t0 = time.perf_counter()
        recs = style_records(STYLES[name], args.train_records + args.eval, tok, 0, 0, xsum_file(),
                             cfg.max_prompt_tokens, corpus_file())
        train, test = recs[: args.train_records], recs[args.train_records:]
        tcfg = train_config(cfg)
        feats: dict = {}  # the held-out records' features per set of wire layers

        def features(side_cfg, feats=feats, test=test, tcfg=tcfg):
            key = tuple(side_cfg.layers)  # the pool's and the comparator's may differ
            if key not in feats:
                feats[key] = extract_features(bb, test, side_cfg, tcfg, progress=False)
            return feats[key]

        labels = [s for f in _per_record(copied_positions(test, tok, tcfg).tolist(),
                                         [len(a) for _, a in layout(test, tok, tcfg)])
                  for s in segment_labels(f)]
        u: dict = {"segments": {"backbone": segment_stats(lm, features(pool.side_cfg), None, labels)}, "rouge": {},
                   "blend_seconds": {}}
        prompts = test[: args.rouge]
        base_scores = (Evaluator(bb, None, cfg.max_prompt_tokens, args.max_new, 12, progress=False)
                       .run_mode(Mode.BASE, prompts, ci=False).scores if prompts else [])
        nets = {}
        if args.trained:
            edge_t, _, rec_t = trained_bundle(bb, train, cfg, args.epochs)
            u["trained_record"] = rec_t
            nets["trained"] = edge_t
        for rname, rcfg in recipes.items():
            edge, rec = blend(bb, pool, train, rcfg)
            u["blend_seconds"][rname] = rec["blend"]["seconds"]["total"]
            nets[rname] = edge
        for rname, edge in nets.items():
            side = edge.heads["add"].side.eval()
            u["segments"][rname] = segment_stats(lm, features(side.cfg), side, labels)
            if prompts:
                ev = Evaluator(bb, edge, cfg.max_prompt_tokens, args.max_new, 12, progress=False)
                u["rouge"][rname] = ev.run_mode(Mode.FULL, prompts, ci=False).scores
            print(f"{name} {rname}: {u['segments'][rname]}"
                  + (f" rouge {statistics.fmean(u['rouge'][rname]):.1f}" if prompts else ""), flush=True)
        if prompts:
            u["rouge"]["base"] = base_scores
            u["summary"] = _summary(u["rouge"], recipes)
            for line in u["summary"]:
                print(f"{name}: {line}", flush=True)
        u["seconds"] = round(time.perf_counter() - t0, 1)
        report["users"][name] = u
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    done = [u for u in report["users"].values() if u["rouge"]]
    if len(done) > 1:  # every user's records together (the same recipes for each)
        pooled = {k: [s for u in done for s in u["rouge"][k]] for k in done[0]["rouge"]}
        report["summary_all"] = _summary(pooled, recipes)
        for line in report["summary_all"]:
            print(f"all: {line}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


def _per_record(flags: list[bool], lengths: list[int]) -> list[list[bool]]:
    out, at = [], 0
    for n in lengths:
        out.append(flags[at : at + n])
        at += n
    return out


def _summary(rouge: dict, recipes: dict) -> list[str]:
    """Each recipe's seed mean per record: Rouge-L, minus base (paired), gap closed (with a
    trained comparator)."""
    from lab.blend_report import gap_interval
    from lab.evaluate import paired_bootstrap

    lines = []
    base = rouge["base"]
    heads = sorted({r.split("@s")[0] for r in recipes}, key=lambda h: h != "blended")
    means = {}
    for h in heads:
        runs = [r for r in recipes if r == h or r.startswith(h + "@s")]
        mean = means[h] = [statistics.fmean(v) for v in zip(*(rouge[r] for r in runs), strict=True)]
        d = paired_bootstrap(mean, base)
        line = (f"{h} ({len(runs)} seeds: {', '.join(f'{statistics.fmean(rouge[r]):.1f}' for r in runs)})"
                f" mean {statistics.fmean(mean):.1f}, − base {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]")
        if h != "blended":
            d = paired_bootstrap(mean, means["blended"])
            line += f", − blended {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
        if "trained" in rouge:
            p, lo, hi = gap_interval(base, mean, rouge["trained"])
            line += f", gap closed {p:.2f} [{lo:.2f}, {hi:.2f}]"
        lines.append(line)
    if "trained" in rouge:
        lines.append(f"base {statistics.fmean(base):.1f}, trained {statistics.fmean(rouge['trained']):.1f}")
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
