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

    python benchmarks/blend_quality.py --smoke            # tiny backbone, seconds
    HF_HUB_OFFLINE=1 nice -n 10 python benchmarks/blend_quality.py --pool runs/pool-smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def gap_interval(base: list[float], blended: list[float], trained: list[float], n: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(blended − base)/(trained − base) of the means, and its paired-bootstrap 95% interval."""
    b, x, t = (torch.tensor(v, dtype=torch.float64) for v in (base, blended, trained))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(b), (n, len(b)), generator=g)
    num, den = (x[idx] - b[idx]).mean(1), (t[idx] - b[idx]).mean(1)
    ratio = num / den.where(den.abs() > 1e-9, torch.full_like(den, float("nan")))
    ratio = ratio[torch.isfinite(ratio)]
    point = float((x - b).mean() / (t - b).mean()) if float((t - b).mean()) else float("nan")
    if len(ratio) == 0:
        return point, float("nan"), float("nan")
    return point, float(torch.quantile(ratio, 0.025)), float(torch.quantile(ratio, 0.975))


def trained_bundle(backbone, records, cfg_blend, epochs: int, known=None):
    """The comparator: a side network trained from scratch on all of the user's records (as
    `spa train` trains one), classifier and τ as the blended one's. `known`: the features of
    the first records (the blend's examples), not extracted twice on a starved machine."""
    from edge_agent.edge_model import EdgeModel, Head
    from edge_agent.side_network import Classifier, SideNetwork
    from lab.blend import finish_head, train_config
    from lab.training import extract_features, split_dev, train_side

    started, cpu = time.perf_counter(), time.process_time()
    tcfg = train_config(cfg_blend)
    import dataclasses

    tcfg = dataclasses.replace(tcfg, epochs=epochs, patience=2)
    side_cfg = tcfg.for_combine("add").side_config(backbone.d_model, backbone.n_layers)
    tr, dev = split_dev(records, tcfg)
    if known is not None:
        from lab.training import Features

        n_known = min(len(tr), cfg_blend.max_examples)
        rest = extract_features(backbone, tr[n_known:], side_cfg, tcfg, progress=False)
        ft = Features(torch.cat([known.states, rest.states]), torch.cat([known.z, rest.z]),
                      torch.cat([known.y, rest.y]), known.layers)
    else:
        ft = extract_features(backbone, tr, side_cfg, tcfg, progress=False)
    fd = extract_features(backbone, dev, side_cfg, tcfg, progress=False)
    edge = EdgeModel.for_backbone(backbone)
    head = Head("add", SideNetwork(side_cfg), Classifier(backbone.d_model))
    hist = train_side(edge, head, ft, fd, tcfg, progress=False)
    finish_head(edge, head, ft, tcfg, cfg_blend.fire_rate)
    return edge.eval(), {"seconds": round(time.perf_counter() - started, 1),
                         "cpu_seconds": round(time.process_time() - cpu, 1),
                         "dev_nll": min(h["dev_loss"] for h in hist), "epochs_run": len(hist)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny backbone, small budgets: seconds")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--pool", default=str(ROOT / "runs" / "pool-smollm2"),
                    help="pool directory (built with small budgets when missing)")
    ap.add_argument("--pool-records", type=int, default=40)
    ap.add_argument("--users", default="ada,bo,cy")
    ap.add_argument("--train-records", type=int, default=40, help="records of the trained comparator")
    ap.add_argument("--examples", type=int, default=16, help="records the blend sees (the first)")
    ap.add_argument("--eval", type=int, default=12, help="held-out records per user")
    ap.add_argument("--max-new", type=int, default=36)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=str(ROOT / "results" / "blend_quality.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from cloud_worker.backbone import Backbone
    from lab.blend import BlendConfig, blend
    from lab.data import Example
    from lab.evaluate import Evaluator, bootstrap_ci, paired_bootstrap
    from lab.pool import (
        STYLES,
        PoolConfig,
        build_pool,
        generic_prompts,
        load_pool,
        style_records,
        xsum_file,
    )
    from routing.modes import Mode

    t_start = time.perf_counter()
    if args.smoke:
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
        args.pool_records, args.train_records, args.eval, args.max_new = 16, 16, 4, 12
        args.users, args.examples, args.epochs = "ada", 8, 2
    bb = Backbone.load(args.backbone)
    xsum = xsum_file() if not args.smoke else None
    try:
        pool = load_pool(args.pool, bb.fingerprint)
    except Exception:
        pool = build_pool(bb, args.pool, PoolConfig(records=args.pool_records,
                                                    base_epochs=2 if args.smoke else 3,
                                                    epochs=2 if args.smoke else 4), xsum=xsum)
    tok = bb.tokenizer
    cfg = BlendConfig(max_examples=args.examples, threads=args.threads)
    generic = [Example("", p, " ", i) for i, p in enumerate(generic_prompts(args.eval, tok, seed=4242))]
    base_ev = Evaluator(bb, None, cfg.max_prompt_tokens, args.max_new, args.batch, progress=False)
    base_generic = base_ev.run_mode(Mode.BASE, generic, ci=False)
    report: dict = {"backbone": args.backbone, "pool": str(args.pool), "members": pool.names,
                    "pool_info": {k: pool.info.get(k) for k in ("seconds", "cpu_seconds", "config")},
                    "args": vars(args), "users": {}}
    out = Path(args.json if not args.smoke else ROOT / "runs" / "blend_quality_smoke.json")
    for name in args.users.split(","):
        style = STYLES[name]
        recs = style_records(style, args.train_records + args.eval, tok, 0, 0, xsum, cfg.max_prompt_tokens)
        train, test = recs[: args.train_records], recs[args.train_records:]
        got: list = []
        edge_b, rec_b = blend(bb, pool, train, cfg, features_out=got)
        print(f"{name}: blended in {rec_b['blend']['seconds']['total']:.1f} s", flush=True)
        edge_t, rec_t = trained_bundle(bb, train, cfg, args.epochs, got[0])
        print(f"{name}: trained in {rec_t['seconds']:.1f} s", flush=True)
        rows = {"base": base_ev.run_mode(Mode.BASE, test)}
        for label, edge in (("blended", edge_b), ("trained", edge_t)):
            ev = Evaluator(bb, edge, cfg.max_prompt_tokens, args.max_new, args.batch, progress=False)
            for mode in (Mode.FULL, Mode.SPA):
                rows[f"{label} {mode.value}"] = ev.run_mode(mode, test)
            if label == "blended":
                spa_generic = ev.run_mode(Mode.SPA, generic, ci=False)
        u = {"style": style.about, "blend": rec_b["blend"], "trained": rec_t,
             "rows": {k: {**r.row(), "scores": [round(s, 3) for s in r.scores]} for k, r in rows.items()}}
        for mode in ("full", "spa"):
            p, lo, hi = gap_interval(rows["base"].scores, rows[f"blended {mode}"].scores,
                                     rows[f"trained {mode}"].scores)
            u[f"gap_closed_{mode}"] = {"point": p, "lo": lo, "hi": hi}
        # routing by need: the mixed stream
        need, lm = edge_b.need, edge_b.lm_head
        cust = [need.customised(ex.prompt_ids(tok, cfg.max_prompt_tokens), lm) for ex in test]
        gen_c = [need.customised(ex.prompt_ids(tok, cfg.max_prompt_tokens), lm) for ex in generic]
        spa_c, base_c = rows["blended spa"], rows["base"]

        def stream(route_c, route_g, spa_c=spa_c, base_c=base_c, spa_g=spa_generic):
            blocking, tokens, scores = 0.0, 0, []
            for i, keep in enumerate(route_c):
                r = spa_c if keep else base_c
                t, m = r.sessions[i]
                blocking, tokens = blocking + t * m, tokens + t
                scores.append(r.scores[i])
            for i, keep in enumerate(route_g):
                t, m = (spa_g if keep else base_generic).sessions[i]
                blocking, tokens = blocking + t * m, tokens + t
            return blocking / max(1, tokens), scores

        m_all, s_all = stream([True] * len(test), [True] * len(generic))
        m_routed, s_routed = stream(cust, gen_c)
        u["routing"] = {"customised_kept": sum(cust) / len(cust),
                        "generic_sent_as_spa": sum(gen_c) / len(gen_c),
                        "m_spa_for_all": m_all, "m_routed": m_routed,
                        "m_fall": 1 - m_routed / m_all if m_all else float("nan"),
                        "rouge_customised_spa_for_all": statistics.fmean(s_all),
                        "rouge_customised_routed": statistics.fmean(s_routed),
                        "paired_routed_minus_all": paired_bootstrap(s_routed, s_all),
                        "need": rec_b["blend"]["need"]}
        report["users"][name] = u
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))  # after every user
        print(f"\n## {name}: {style.about}")
        print(f"blend: {rec_b['blend']['seconds']['total']:.2f} s wall, "
              f"{rec_b['blend']['cpu_seconds']['total']:.2f} CPU s "
              f"(features {rec_b['blend']['cpu_seconds']['features']:.2f}, blend "
              f"{rec_b['blend']['cpu_seconds']['blend']:.2f}); w = {rec_b['blend']['coefficients']}")
        print("| row | Rouge-L [95% CI] | M | side |\n|---|---:|---:|---:|")
        for k, r in rows.items():
            print(f"| {k} | {r.rouge_l:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}] | {r.stats.m:.3f} | "
                  f"{r.stats.side_rate:.3f} |")
        for mode in ("full", "spa"):
            g = u[f"gap_closed_{mode}"]
            print(f"gap closed ({mode}): {g['point']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}]")
        rr = u["routing"]
        pr = rr["paired_routed_minus_all"]
        print(f"routing: customised kept {rr['customised_kept']:.2f}, generic as spa "
              f"{rr['generic_sent_as_spa']:.2f}; M {rr['m_spa_for_all']:.3f} -> {rr['m_routed']:.3f} "
              f"({rr['m_fall']:+.1%} fall); customised Rouge-L Δ {pr['diff']:+.2f} "
              f"[{pr['lo']:+.2f}, {pr['hi']:+.2f}]", flush=True)
        _ = bootstrap_ci
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n{report['seconds']:.0f} s; {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
