"""Issue 19's figures: blending time, blended vs trained quality on held-out users, routing by need.

For each held-out user (lab/pool.py HELD_OUT, none in the pool): `--train-records` records of
their style, the first `--examples` of them blended from the pool (lab/blend.py), all of them
for a side network trained from scratch as `spa train` trains one (train_side, early stopping
on a dev tenth), the same classifier and τ recipe on both (lab/blend.py finish_head); then
`--eval` held-out records generated greedily in base, full and spa with each. Rouge-L with
95% bootstrap intervals; 'gap closed' = (blended − base) / (trained − base), with a paired
bootstrap interval over records.

Routing: a mixed stream per user — its held-out prompts and as many generic questions (seeds
never seen by the router) — spa-for-all against routed (the need router's 'not customised'
prompts as base). M of the stream, and Rouge-L of the customised half, paired.

Devices: the pool, the trained comparators and every evaluation run on `--device`; the blend
always runs on the CPU (its own float32 copy of the backbone for the examples' features, where a
device would receive them as HIDDEN frames) with `--threads` torch threads, timed in wall and
CPU seconds. `--cores 2` pins the whole process (every thread it starts later) to the first two
of its CPUs before any work, as `taskset -c 0,1` does, so the blend's figure is a 2-core one on
any host; its record says how many cores the process could use. Results go to `--json` after
the pool and after every user (a run cut by a time limit still brings the users it finished),
the tables to the .md beside it at the end; `--deadline` starts no user that would end later.

    python benchmarks/blend_quality.py --smoke            # tiny backbone, seconds
    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/blend_quality.py --pool runs/pool-smollm2
The H200 call (one process per user, each on its own 2 cores, ≤ 3 min; repo at /root/repo,
SmolLM2 at /root/smollm2, XSum and the English corpus at /root/spa/data; results under $RES):
the default recipe (≤ 60 coefficient steps on the copied positions, kept at the step best at the
turn into the message, §10.11; 20 tuning steps on all weights: the user's own words fitted, the
blend's distribution kept where the answer copies the prompt; gate on mixture + gain labels at
a 0.4 fire rate, the side network kept on the token after each correction and where the backbone
would leave a copy of the prompt, §10.12; need threshold in the gap) with 3 seeds, beside
variants (`all`: §10.3's coefficients everywhere; `mix`: §10.4's mixture-only gate; later: see
results/h*_2026-12-05/rN_command.sh; before §10.11 `last:steps=15,l2=0.001,coef_keep=last`):

    cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    for u in ada bo cy; do c=$((2 * ${i:=0}))-$((2 * i + 1)); i=$((i + 1)); mkdir -p $RES/$u
      timeout 500 taskset -c $c python3 benchmarks/blend_quality.py --device cuda \
        --backbone /root/smollm2 --xsum /root/spa/data/xsum_1000.jsonl \
        --corpus /root/spa/data/corpus_en.txt --cores 2 --pool /root/spa/pool-$u \
        --pool-records 400 --train-records 300 --eval 128 --max-new 48 --epochs 8 --seeds 3 \
        --users $u --variant all:coef_on=all --variant mix:gate_labels=mixture \
        --json $RES/$u/blend_quality.json > $RES/$u/blend_quality.log 2>&1 &
    done; wait
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lab.blend_report import gap_interval, markdown, routing_row  # noqa: E402


def trained_bundle(backbone, records, cfg_blend, epochs: int):
    """The comparator: a side network trained from scratch on the user's records as `spa train`
    does, gate as the blended one's -> (edge, (features, answer ids in their order), record)."""
    from edge_agent.edge_model import EdgeModel, Head
    from edge_agent.side_network import Classifier, SideNetwork
    from lab.blend import finish_head, layout, train_config
    from lab.training import extract_features, split_dev, train_side

    started, cpu = time.perf_counter(), time.process_time()
    tcfg = dataclasses.replace(train_config(cfg_blend), epochs=epochs, patience=2)
    side_cfg = tcfg.for_combine("add").side_config(backbone.d_model, backbone.n_layers)
    tr, dev = split_dev(records, tcfg)
    ft = extract_features(backbone, tr, side_cfg, tcfg, progress=False)
    fd = extract_features(backbone, dev, side_cfg, tcfg, progress=False)
    edge = EdgeModel.for_backbone(backbone).to(backbone.device)
    head = Head("add", SideNetwork(side_cfg), Classifier(backbone.d_model))
    hist = train_side(edge, head, ft, fd, tcfg, progress=False)
    answers = [a for _, a in layout(tr, backbone.tokenizer, tcfg)]  # the features' order
    finish_head(edge, head, ft, tcfg, cfg_blend, answers)
    rec = {"seconds": round(time.perf_counter() - started, 1),
           "cpu_seconds": round(time.process_time() - cpu, 1), "records": len(records),
           "positions": len(ft), "dev_nll": min(h["dev_loss"] for h in hist), "epochs_run": len(hist)}
    return edge.eval(), (ft, answers), rec


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny backbone, small budgets: seconds")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--device", default="cpu", help="pool, comparators, evaluation (the blend: CPU)")
    ap.add_argument("--dtype", default="float32", help="of the --device backbone (the blend's: float32)")
    ap.add_argument("--pool", default=str(ROOT / "runs" / "pool-smollm2"),
                    help="pool directory (built with --pool-records when missing)")
    ap.add_argument("--pool-records", type=int, default=40)
    ap.add_argument("--xsum", help="XSum jsonl for the pool's news member (default: $SPA_XSUM, ../shared)")
    ap.add_argument("--corpus", help="English text for the personas' sentences (default: $SPA_CORPUS, "
                    "../shared/data/corpus_en.txt; generated sentences when none)")
    ap.add_argument("--pool-styles", default="", help="the pool's members when it is built "
                    "(lab/pool.py pool_styles; default: POOL_STYLES; opt-in: frames)")
    ap.add_argument("--users", default="ada,bo,cy")
    ap.add_argument("--train-records", type=int, default=40, help="records of the trained comparator")
    ap.add_argument("--examples", type=int, default=16, help="records the blend sees (the first)")
    ap.add_argument("--eval", type=int, default=12, help="held-out records per user (and generic prompts)")
    ap.add_argument("--max-new", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=0, help="generation batch (0: 256 on cuda, 12 on cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the blend")
    ap.add_argument("--cores", type=int, default=0,
                    help="pin the process to this many of its CPU cores first (0: no pinning)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,…",
                    help="also blend with these BlendConfig changes (A/B rows beside the default "
                    "recipe), e.g. old:tune_steps=0,gate_labels=mixture,tau_rule=rate")
    ap.add_argument("--seeds", type=int, default=1, help="blend the default and every variant with "
                    "this many seeds (NAME@sK rows; the report averages each record over them)")
    ap.add_argument("--deadline", type=float, default=0, help="s: start no user that would end later")
    ap.add_argument("--json", default=str(ROOT / "results" / "blend_quality.json"))
    return ap.parse_args(argv)


def parse_variants(specs: list[str], cfg) -> dict:
    """'NAME:k=v,k=v' -> {NAME: cfg with those changes (validated)}."""
    from routing.errors import InputError

    out = {}
    for spec in specs:
        name, _, kvs = spec.partition(":")
        changes = {}
        for kv in filter(None, kvs.split(",")):
            k, _, v = kv.partition("=")
            if k not in cfg.__dataclass_fields__ or not v:
                raise InputError(f"bad --variant {spec!r}: {kv!r} is no BlendConfig KEY=VALUE")
            try:
                changes[k] = json.loads(v)
            except json.JSONDecodeError:
                changes[k] = v
        if not name or name in out or name in ("blended", "trained", "base") or "@" in name:
            raise InputError(f"bad --variant {spec!r}: give it a new NAME")
        out[name] = cfg.replace(**changes)
    return out


def with_seeds(variants: dict, cfg, seeds: int) -> dict:
    """The default ('blended') and every variant again with seeds +1 … +seeds−1: 'NAME@sK'."""
    from lab.blend_report import SEED

    out = dict(variants)
    for name, c in [("blended", cfg), *variants.items()]:
        for k in range(1, seeds):
            out[f"{name}{SEED}{k}"] = c.replace(seed=c.seed + k)
    return out


GATE_KEYS = ("gate_labels", "tau_rule", "fire_rate", "gain_recall", "clf_epochs", "lead", "follow", "copy")


def pin(cores: int) -> None:
    """The process (and every thread it starts later) on the first `cores` of its CPUs."""
    if cores > 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])


def cpu_setup(args: argparse.Namespace):
    """The CPU scripts' start (blend_segments.py, blend_time.py): the backbone on the CPU in
    fp32 with `args.threads` threads, the pool (the smoke's tiny one built when missing) and the
    default BlendConfig -> (backbone, pool, cfg)."""
    from cloud_worker.backbone import Backbone
    from lab.blend_config import BlendConfig, PoolConfig
    from lab.pool import build_pool, corpus_file, load_pool, pool_styles

    if not args.pool:
        raise SystemExit(f"{Path(sys.argv[0]).name}: --pool is required (a `spa pool build` directory)")
    torch.set_num_threads(args.threads)
    bb = Backbone.load(args.backbone, device="cpu", dtype="float32")
    if args.smoke and not (Path(args.pool) / "pool.json").is_file():
        build_pool(bb, args.pool, PoolConfig(records=12, base_epochs=1, epochs=1, every=2),
                   pool_styles("letter,captain,cheer"), corpus=corpus_file())
    cfg = BlendConfig(max_examples=args.examples, threads=args.threads,
                      **({"steps": 12, "clf_epochs": 1} if args.smoke else {}))
    return bb, load_pool(args.pool, bb.fingerprint), cfg


def smoke_setup(args: argparse.Namespace) -> None:
    """The tests' tiny backbone (or a 30-step one), a pool of three personas, one user."""
    from lab.pretrain import pretrain
    from lab.synthetic import make_corpus

    work = ROOT / ".spa-cache" / "blend-smoke"
    backbone = work / "backbone"
    if os.environ.get("SPA_BENCH_BACKBONE"):  # the tests' tiny backbone; the pool beside the run
        backbone, work = Path(os.environ["SPA_BENCH_BACKBONE"]), Path.cwd() / "blend-smoke"
    elif not (backbone / "config.json").is_file():
        work.mkdir(parents=True, exist_ok=True)
        (work / "corpus.txt").write_text(make_corpus(300, seed=0))
        pretrain(work / "corpus.txt", backbone, "tiny", 30, seed=0, progress=False)
    args.backbone, args.pool = str(backbone), str(work / "pool")
    args.pool_records, args.train_records, args.eval, args.max_new = 12, 12, 4, 8
    args.users, args.examples, args.epochs = "ada", 8, 1
    args.threads = int(os.environ.get("OMP_NUM_THREADS", "1"))  # the tests run smokes on 1 thread
    args.json = str(work / "blend_quality_smoke.json")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pin(args.cores)
    if args.smoke:
        smoke_setup(args)
    torch.set_num_threads(args.threads)

    from cloud_worker.backbone import Backbone
    from lab.blend import BlendConfig, blend, finish_head, train_config
    from lab.blend_config import PoolConfig
    from lab.data import Example
    from lab.evaluate import Evaluator
    from lab.pool import (
        HELD_OUT,
        STYLES,
        build_pool,
        corpus_file,
        generic_prompts,
        load_pool,
        pool_styles,
        style_records,
        xsum_file,
    )
    from routing.modes import Mode

    t_start = time.perf_counter()
    gpu = args.device.startswith("cuda")
    batch = args.batch or (256 if gpu else 12)
    bb = Backbone.load(args.backbone, device=args.device, dtype=args.dtype)
    bb_cpu = Backbone.load(args.backbone, device="cpu", dtype="float32")  # the blend's (a device's)
    corpus = corpus_file(args.corpus)
    xsum = None if args.smoke else xsum_file(args.xsum)
    print(f"backbone {args.backbone} on {bb.device} ({bb.dtype}); blend on cpu, {args.threads} threads, "
          f"{len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} cores; "
          f"corpus {corpus or 'none: generated sentences'}; xsum {xsum} "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)
    try:
        pool = load_pool(args.pool, bb.fingerprint)
        print(f"pool {args.pool}: loaded ({', '.join(pool.names)})", flush=True)
    except Exception:
        styles = pool_styles(args.pool_styles or ("letter,captain,cheer" if args.smoke else ""))
        pool = build_pool(bb, args.pool, PoolConfig(records=args.pool_records,
                                                    base_epochs=1 if args.smoke else 3,
                                                    epochs=1 if args.smoke else 4,
                                                    every=2 if args.smoke else 1),
                          styles, xsum=xsum, corpus=corpus)
    tok = bb.tokenizer
    cfg = BlendConfig(max_examples=args.examples, threads=args.threads,
                      **({"steps": 12, "clf_epochs": 1} if args.smoke else {}))
    variants = with_seeds(parse_variants(args.variant, cfg), cfg, args.seeds)
    generic = [Example("", p, " ", i) for i, p in enumerate(generic_prompts(args.eval, tok, seed=4242))]
    base_ev = Evaluator(bb, None, cfg.max_prompt_tokens, args.max_new, batch, progress=False)
    base_generic = base_ev.run_mode(Mode.BASE, generic, ci=False)
    report: dict = {"backbone": args.backbone, "device": str(bb.device), "dtype": str(bb.dtype),
                    "corpus": str(corpus or "generated sentences"), "xsum": str(xsum),
                    "pool": str(args.pool), "members": pool.names,
                    "pool_info": {k: pool.info.get(k) for k in ("seconds", "cpu_seconds", "config",
                                                                "device", "styles")},
                    "blend_config": dataclasses.asdict(cfg),
                    "variants": {k: dataclasses.asdict(v) for k, v in variants.items()},
                    "args": vars(args), "users": {}, "skipped": []}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"pool ready, generic base done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    longest = 0.0
    for name in args.users.split(","):
        elapsed = time.perf_counter() - t_start
        if args.deadline and elapsed + 1.15 * longest > args.deadline:
            print(f"{name}: skipped (at {elapsed:.0f} s a user takes {longest:.0f} s; deadline "
                  f"{args.deadline:.0f} s)", flush=True)
            report["skipped"].append(name)
            continue
        t_user = time.perf_counter()
        if name not in {s.name for s in HELD_OUT}:
            raise SystemExit(f"unknown held-out user {name!r}: {[s.name for s in HELD_OUT]}")
        style = STYLES[name]
        recs = style_records(style, args.train_records + args.eval, tok, 0, 0, xsum,
                             cfg.max_prompt_tokens, corpus)
        train, test = recs[: args.train_records], recs[args.train_records:]
        edge_b, rec_b = blend(bb_cpu, pool, train, cfg)  # on the CPU, --threads threads
        b = rec_b["blend"]
        print(f"{name}: blended from {b['examples']} examples in {b['seconds']['total']:.2f} s wall, "
              f"{b['cpu_seconds']['total']:.2f} CPU s on {b['cores']} cores, {b['threads']} threads "
              f"(features {b['seconds']['features']:.2f} s)", flush=True)
        # routing decisions on the device's CPU, before the first token
        need, lm = edge_b.need, edge_b.lm_head
        t_need = time.perf_counter()
        cust = [need.customised(ex.prompt_ids(tok, cfg.max_prompt_tokens), lm) for ex in test]
        gen_c = [need.customised(ex.prompt_ids(tok, cfg.max_prompt_tokens), lm) for ex in generic]
        need_ms = 1000 * (time.perf_counter() - t_need) / (len(test) + len(generic))
        edge_t, (ft, answers_t), rec_t = trained_bundle(bb, train, cfg, args.epochs)
        print(f"{name}: trained on {len(train)} records in {rec_t['seconds']:.1f} s on {bb.device}",
              flush=True)
        rows = {"base": base_ev.run_mode(Mode.BASE, test)}
        for label, edge in (("blended", edge_b), ("trained", edge_t)):
            ev = Evaluator(bb, edge, cfg.max_prompt_tokens, args.max_new, batch, progress=False)
            for mode in (Mode.FULL, Mode.SPA):
                rows[f"{label} {mode.value}"] = ev.run_mode(mode, test)
            if label == "blended":
                spa_generic = ev.run_mode(Mode.SPA, generic, ci=False)
        u_var = {}
        for vname, vcfg in variants.items():  # A/B: the same records, comparator and prompts
            edge_v, rec_v = blend(bb_cpu, pool, train, vcfg)
            ev = Evaluator(bb, edge_v, cfg.max_prompt_tokens, args.max_new, batch, progress=False)
            for mode in (Mode.FULL, Mode.SPA):
                rows[f"{vname} {mode.value}"] = ev.run_mode(mode, test)
            trained_spa = "trained spa"
            if any(getattr(vcfg, k) != getattr(cfg, k) for k in GATE_KEYS):  # the comparator's gate too
                finish_head(edge_t, edge_t.heads["add"], ft, train_config(vcfg), vcfg, answers_t)
                ev = Evaluator(bb, edge_t, cfg.max_prompt_tokens, args.max_new, batch, progress=False)
                trained_spa = f"trained spa ({vname})"
                rows[trained_spa] = ev.run_mode(Mode.SPA, test)
            u_var[vname] = {"blend": rec_v["blend"], "trained_spa_row": trained_spa}
            for mode, t_row in (("full", "trained full"), ("spa", trained_spa)):
                p, lo, hi = gap_interval(rows["base"].scores, rows[f"{vname} {mode}"].scores,
                                         rows[t_row].scores)
                u_var[vname][f"gap_closed_{mode}"] = {"point": p, "lo": lo, "hi": hi}
            print(f"{name}: variant {vname}: blended in {rec_v['blend']['seconds']['total']:.2f} s",
                  flush=True)
        u = {"style": style.about, "blend": b, "trained": rec_t, "variants": u_var,
             "rows": {k: {**r.row(), "scores": [round(s, 3) for s in r.scores]} for k, r in rows.items()}}
        for mode in ("full", "spa"):
            p, lo, hi = gap_interval(rows["base"].scores, rows[f"blended {mode}"].scores,
                                     rows[f"trained {mode}"].scores)
            u[f"gap_closed_{mode}"] = {"point": p, "lo": lo, "hi": hi}
        u["routing"] = {**routing_row(cust, gen_c, rows["blended spa"], rows["base"], spa_generic,
                                      base_generic),
                        "decision_ms": round(need_ms, 3), "need": b["need"]}
        u["seconds"] = round(time.perf_counter() - t_user, 1)
        longest = max(longest, u["seconds"])
        report["users"][name] = u
        report["seconds"] = round(time.perf_counter() - t_start, 1)
        out.write_text(json.dumps(report, indent=2, default=str))  # after every user
        print(f"\n## {name}: {style.about} ({u['seconds']:.0f} s)\n" + markdown({name: u}), flush=True)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(report, indent=2, default=str))
    table = markdown(report["users"], pooled=True)
    out.with_suffix(".md").write_text(table + "\n")
    print(f"\n# all users\n{table}\n\n{report['seconds']:.0f} s; {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
