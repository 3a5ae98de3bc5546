"""Model selection on the dev split (issue 11, "training that generalises").

One backbone pass collects every layer's states for the training records (the last
`dev_fraction` of them are the dev split). Then:

1. side network, per combine: coordinate descent over dropout, weight decay, which layers
   travel (every k-th), width, learning rate, schedule and epochs, each judged by the dev NLL
   of the kept (early-stopped) epoch;
2. classifier, on the chosen 'add' side network: features (z, z + the backbone distribution's
   confidence), linear or MLP, objective (on-policy labels, mixture likelihood, both) and λ,
   each calibrated to the target M on the dev prompts and judged by the dev Rouge-L of spa at
   that τ (same M budget for all).

Prints both tables and returns (and writes) the `spa train` flags it chose.

    python benchmarks/spa_select.py --backbone DIR --data xsum_1000.jsonl --split :800 --device cuda
    python benchmarks/spa_select.py --smoke   # the quick grid on the tiny backbone, 32 built-in records
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

AXES = [  # (TrainConfig field, values), tried in this order, each from the best so far
    ("dropout", [0.0, 0.1, 0.3]),
    ("weight_decay", [0.05, 0.3]),
    ("every", [1, 3, 6]),
    ("width", [36, 72, 144, 288]),
    ("lr", [1e-3, 2e-3, 4e-3]),
    ("schedule", ["onecycle", "cosine"]),
    ("epochs", [10, 20]),
]
QUICK_AXES = [("dropout", [0.0, 0.2]), ("every", [1, 2])]
CLASSIFIERS = [  # (features, hidden, objective, lam, warm start)
    ("z", 0, "both", 0.05, True),  # the starting point
    ("z", 0, "onpolicy", 0.05, False),
    ("z+stats", 0, "onpolicy", 0.05, False),
    ("z+stats", 0, "both", 0.05, True),
    ("z+stats", 64, "onpolicy", 0.05, False),
    ("z+stats", 64, "both", 0.05, True),
    ("z+stats", 0, "mixture", 0.02, True),
    ("z+stats", 0, "mixture", 0.2, True),
]
FLAG = {"dropout": "--dropout", "weight_decay": "--weight-decay", "every": "--every",
        "width": "--width", "lr": "--lr", "schedule": "--schedule", "epochs": "--epochs"}


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone")
    p.add_argument("--data")
    p.add_argument("--split", default=":800")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/spa_select.json")
    p.add_argument("--target-m", type=float, default=0.47)
    p.add_argument("--max-prompt-tokens", type=int, default=384)
    p.add_argument("--gen-batch", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="a tiny grid (CPU smoke test)")
    p.add_argument("--rollout-prompts", type=int, default=0)
    p.add_argument("--rollout-tokens", type=int, default=48)
    p.add_argument("--smoke", action="store_true", help="--quick on the benchmarks' tiny backbone and "
                   "32 built-in records, 4 tokens per generation (seconds)")
    args = p.parse_args(argv)
    if args.smoke:
        import tempfile

        from common import models

        from lab.synthetic import make_personal_tasks, write_jsonl

        tmp = Path(tempfile.mkdtemp(prefix="spa-select-"))
        args.backbone, args.data = str(models()[0]), str(write_jsonl(make_personal_tasks(32, seed=3),
                                                                      tmp / "tasks.jsonl"))
        args.split, args.quick, args.out = "", True, str(tmp / "spa_select.json")
        args.gen_batch, args.rollout_tokens, args.max_prompt_tokens = 16, 4, 64
    elif not (args.backbone and args.data):
        p.error("give --backbone and --data (or --smoke)")

    import torch
    from rouge_score import rouge_scorer

    from cloud_worker.backbone import Backbone
    from edge_agent.edge_model import EdgeModel
    from lab.batched import BatchConfig, BatchedGenerator
    from lab.data import load_examples, split
    from lab.training import (
        TrainConfig,
        auc,
        calibrate,
        extract_features,
        rollouts,
        split_dev,
        train_classifier,
        train_side,
    )
    from routing.modes import Mode

    t0 = time.time()
    backbone = Backbone.load(args.backbone, args.device)
    base = TrainConfig(target_m=args.target_m, max_prompt_tokens=args.max_prompt_tokens,
                       gen_batch=args.gen_batch, rollout_prompts=args.rollout_prompts,
                       rollout_tokens=args.rollout_tokens, width=backbone.d_model // 8,
                       dropout=0.0, weight_decay=0.05, lr=2e-3, overrides={})  # issue 11's start
    train_ex, dev_ex = split_dev(split(load_examples(args.data), args.split), base)
    f_train = extract_features(backbone, train_ex, None, base, progress=False)
    f_dev = extract_features(backbone, dev_ex, None, base, progress=False)
    edge = EdgeModel.for_backbone(backbone).to(backbone.device)
    print(f"features: {len(f_train)} train / {len(f_dev)} dev positions, {time.time() - t0:.1f}s",
          flush=True)

    def side_run(combine: str, cfg: TrainConfig):
        sc = cfg.side_config(backbone.d_model, backbone.n_layers)
        head = edge.new_head(combine, sc)
        t = time.time()
        hist = train_side(edge, head, f_train.select(sc.layers), f_dev.select(sc.layers), cfg, False)
        best = min(hist, key=lambda h: h["dev_loss"])
        return best["dev_loss"], best["epoch"], len(hist), time.time() - t, head

    report: dict = {"side": {}, "classifier": [], "chosen": {}}
    chosen_cfg: dict[str, TrainConfig] = {}
    heads = {}
    for combine in ("add", "replace"):
        cur, rows, seen = base, [], {}

        def run(cfg, combine=combine, rows=rows, seen=seen):
            key = json.dumps({k: getattr(cfg, k) for k, _ in AXES})
            if key not in seen:
                nll, ep, ran, secs, head = side_run(combine, cfg)
                seen[key] = (nll, head)
                rows.append({**{k: getattr(cfg, k) for k, _ in AXES}, "dev_nll": round(nll, 4),
                             "kept_epoch": ep, "epochs_run": ran, "seconds": round(secs, 1)})
                print(f"  side[{combine}] {key} -> dev NLL {nll:.4f} (epoch {ep}/{ran}, {secs:.1f}s)",
                      flush=True)
            return seen[key]

        best_nll, best_head = run(cur)
        for axis, values in (QUICK_AXES if args.quick else AXES):
            for v in values:
                cand = dataclasses.replace(cur, **{axis: v})
                nll, head = run(cand)
                if nll < best_nll - 1e-4:
                    best_nll, best_head, cur = nll, head, cand
        chosen_cfg[combine], heads[combine] = cur, best_head
        report["side"][combine] = {"rows": rows, "best": {k: getattr(cur, k) for k, _ in AXES},
                                   "best_dev_nll": best_nll, "first_dev_nll": rows[0]["dev_nll"]}
        edge.set_head(best_head)
    lpb = -torch.cat([edge.lm_head(z).log_softmax(-1).gather(1, y[:, None])[:, 0]
                      for _, z, y in f_dev.batches(1024)]).mean().item()
    report["dev_nll_base"] = lpb
    print(f"dev NLL: base {lpb:.4f}, add {report['side']['add']['best_dev_nll']:.4f}, "
          f"replace {report['side']['replace']['best_dev_nll']:.4f}", flush=True)

    # ---------------------------------------------------------------- classifier
    head, cfg = heads["add"], chosen_cfg["add"]
    sc = head.side.cfg
    ftr, fdv = f_train.select(sc.layers), f_dev.select(sc.layers)
    pz, py = rollouts(backbone, edge, head, train_ex[: cfg.rollout_prompts or None], cfg)
    dz, dy = rollouts(backbone, edge, head, dev_ex, cfg)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    gen = BatchedGenerator(backbone, edge, BatchConfig(args.gen_batch, progress=False))
    prompts = [ex.prompt_ids(backbone.tokenizer, cfg.max_prompt_tokens) for ex in dev_ex]

    def dev_rouge(mode: Mode) -> tuple[float, float]:
        gens = gen.generate(prompts, cfg.rollout_tokens, mode)
        s = [scorer.score(ex.answer.strip(), backbone.tokenizer.decode(g.tokens, skip_special_tokens=True)
                          .strip())["rougeL"].fmeasure for ex, g in zip(dev_ex, gens, strict=True)]
        toks = sum(g.stats.tokens for g in gens)
        return 100 * sum(s) / len(s), sum(g.stats.blocking for g in gens) / max(1, toks)

    full_rouge, _ = dev_rouge(Mode.FULL)
    base_rouge, _ = dev_rouge(Mode.BASE)
    print(f"dev Rouge-L: base {base_rouge:.2f}, full {full_rouge:.2f}; on-policy side≠base "
          f"train {py.mean().item():.3f} dev {dy.mean().item():.3f}", flush=True)
    best = None
    for feats, hidden, objective, lam, warm in CLASSIFIERS[: 3 if args.quick else None]:
        c = dataclasses.replace(cfg, clf_features=feats, clf_hidden=hidden, clf_objective=objective,
                                lam=lam, warm_start=warm)
        t = time.time()
        torch.manual_seed(c.seed)
        train_classifier(edge, head, ftr, c, pz, py)
        cal = calibrate(backbone, edge, head, dev_ex, fdv, dz, c)
        head.threshold = cal["threshold"]
        r, m = dev_rouge(Mode.SPA)
        a = auc(head.classifier.logit(dz.to(fdv.y.device), edge.lm_head), dy)
        row = {"features": feats, "hidden": hidden, "objective": objective, "lam": lam,
               "warm_start": warm, "auc_dev": round(a, 4), "m_dev": round(m, 4),
               "side_rate_dev": round(cal["side_rate_dev"], 4), "rouge_dev": round(r, 2),
               "ratio_to_full": round(r / full_rouge, 4), "seconds": round(time.time() - t, 1)}
        report["classifier"].append(row)
        print(f"  classifier {row}", flush=True)
        if best is None or r > best["rouge_dev"] + 1e-9:
            best = row
    report["dev_rouge"] = {"base": base_rouge, "full": full_rouge}
    flags: list[str] = []
    for k, _ in AXES:
        flags += [FLAG[k], str(getattr(chosen_cfg["add"], k))]
    over = {k: getattr(chosen_cfg["replace"], k) for k, _ in AXES
            if getattr(chosen_cfg["replace"], k) != getattr(chosen_cfg["add"], k)}
    if over:
        flags += ["--side-overrides", "replace:" + ",".join(f"{k}={v}" for k, v in over.items())]
    flags += ["--clf-features", best["features"], "--clf-hidden", str(best["hidden"]),
              "--clf-objective", best["objective"], "--lambda", str(best["lam"])]
    if not best["warm_start"]:
        flags.append("--no-warm-start")
    report["chosen"] = {"flags": flags, "classifier": best}
    report["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("chosen: " + " ".join(flags), flush=True)
    return flags


if __name__ == "__main__":
    main()
