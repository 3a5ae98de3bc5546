"""Do the personas keep the answer? (issue 17 item 4)

For each frame user (ada's letters, bo's captain's answers): make the training data as
`spa build-models` does (`lab.users.frame_records`), train the user's side network and gate once
per training seed, then on held-out questions (never trained on) generate in `spa` and `full`
mode and measure:

* frame: the opening at the start and the closing after the body, both (goal ≥ 95 %);
* body kept: Rouge-L of the body (between opening and closing) against the first sentence of the
  backbone's own answer (`base`, greedy) — and, as the ceiling a one-sentence body can reach
  against the backbone's whole answer, the ratio Rouge-L(body, base answer) /
  Rouge-L(base's first sentence, base answer) (goal ≥ 0.9: within 10 % of base against base);
* a floor for the body figure: the backbone's own answer sampled (T 0.7) against its greedy one;
* M and side usage.

Means with the spread over training seeds (min–max) and a 95 % bootstrap interval over prompts
for the first seed.

`--wire-dtypes fp16,int8,int4` (issue 22): the first seed's bundle (or the given one) again with
its frames on each grid and its weights stored fp32 and int8, each row's body Rouge-L paired
(bootstrap over the held-out questions) against fp16 frames + fp32 weights, with frame % and M
(lab/wire_quality.py, as spa_xsum.py's wire.json); under `wire` per user in --json.

    python benchmarks/persona_quality.py --backbone smollm2-135m [--device cuda] \
        [--users ada,bo] [--seeds 0,1,2] [--prompts 100] [--json out.json] \
        [--bundles ada=DIR,bo=DIR] [--wire-dtypes fp16,int8,int4]

--smoke: seconds on the tests' tiny backbone ($SPA_BENCH_BACKBONE): ada, 12 training records,
4 held-out questions, one seed, one epoch, and the wire table for fp16,int8.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MAX_NEW = 48  # the demo's limit


def _score(scorer, ref: str, hyp: str) -> float:
    return 100 * scorer.score(ref, hyp)["rougeL"].fmeasure if ref.strip() and hyp.strip() else 0.0


def _first(text: str) -> str:
    from lab.users import first_sentence

    return first_sentence(text) or " ".join(text.split())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="smollm2-135m")
    p.add_argument("--device", default="cpu")
    p.add_argument("--users", default="ada,bo")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--prompts", type=int, default=100, help="held-out questions per user")
    p.add_argument("--train-records", type=int, default=0, help="0 = the user's own")
    p.add_argument("--full-budget", action="store_true",
                   help="rollouts and τ calibration on every training / dev prompt (GPU)")
    p.add_argument("--target-m", type=float, default=0.0, help="the gate's target M (0 = the user's)")
    p.add_argument("--rollout-prompts", type=int, default=-1, help="-1 = the demo build's")
    p.add_argument("--calib-prompts", type=int, default=-1, help="-1 = the demo build's (0 = all dev)")
    p.add_argument("--bundles", default="", help="NAME=DIR,…: measure these trained bundles (e.g. "
                   "`spa build-models`' users/ada) instead of training; one 'seed' each")
    p.add_argument("--wire-dtypes", default="", help="issue 22: e.g. fp16,int8,int4 — the first "
                   "seed's bundle with frames on each grid and weights fp32/int8, paired against "
                   "fp16/fp32")
    p.add_argument("--train-wire", default="fp16", choices=("fp16", "int8", "int4"),
                   help="the grid the bundles are trained for (spa train --wire-dtype: quantisation-aware)")
    p.add_argument("--wire-modes", default="spa,full", help="modes of the --wire-dtypes table")
    p.add_argument("--wire-all-seeds", action="store_true", help="the wire table for every training "
                   "seed, then pooled over seeds (default: the first seed's)")
    p.add_argument("--tau-by", default="", choices=("", "m", "quality"),
                   help="τ by the target M or by dev Rouge-L (spa train --tau-by; '' = the user's)")
    p.add_argument("--tau-quality", type=float, default=0.97, help="with --tau-by quality")
    p.add_argument("--leads", default="", help="also spa with the bundle's first N tokens always on "
                   "the side network, e.g. 1,2 (no retraining; rows spa_leadN)")
    p.add_argument("--json", default="")
    p.add_argument("--smoke", action="store_true", help="seconds, on the tests' tiny backbone")
    args = p.parse_args(argv)
    args.leads = [int(x) for x in args.leads.split(",") if x.strip()]
    tiny: dict = {}
    if args.smoke:
        args.backbone = os.environ.get("SPA_BENCH_BACKBONE") or args.backbone
        args.users, args.prompts, args.train_records = "ada", 4, 12
        args.seeds = "0,1" if args.wire_all_seeds else "0"
        args.wire_dtypes = args.wire_dtypes or "fp16,int8"
        tiny = {"epochs": 1, "clf_epochs": 1, "calib_steps": 2, "rollout_tokens": 8}

    from rouge_score import rouge_scorer

    from cloud_worker.backbone import Backbone
    from lab import users as U
    from lab.batched import BatchConfig, BatchedGenerator
    from lab.build import user_train_config
    from lab.data import load_examples
    from lab.synthetic import write_jsonl
    from lab.training import train_bundle
    from routing.sampling import Sampling

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    bb = Backbone.load(args.backbone, device=args.device)
    tok = bb.tokenizer
    gpu = "cuda" in args.device
    bcfg = BatchConfig(batch_size=256 if gpu else 32, progress=False)
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {"backbone": args.backbone, "device": args.device, "seeds": seeds, "users": {}}
    for name in args.users.split(","):
        user = U.USERS[name]
        if args.train_records:
            user = dataclasses.replace(user, train_records=args.train_records)
        t0 = time.time()
        given = dict(kv.split("=", 1) for kv in args.bundles.split(",") if kv)
        if name in given:
            examples = []
        else:
            records = U.frame_records(bb, user, progress=False)
            tasks = Path(f"/tmp/persona_{name}.jsonl")
            write_jsonl(records, tasks)
            examples = load_examples(tasks)
        data_s = time.time() - t0
        held = U.held_out(user, None, args.prompts, tok)
        ids = [ex.prompt_ids(tok, user.max_prompt_tokens) for ex in held]
        base_gen = BatchedGenerator(bb, None, bcfg)
        base = [tok.decode(g.tokens, skip_special_tokens=True) for g in base_gen.generate(ids, MAX_NEW, "base")]
        sampled = [tok.decode(g.tokens, skip_special_tokens=True)
                   for g in base_gen.generate(ids, MAX_NEW, "base", Sampling(0.7, 0, 1))]
        ref1 = [_first(b) for b in base]
        ceiling = [_score(scorer, b, r) for b, r in zip(base, ref1, strict=True)]
        floor = [_score(scorer, r, _first(s)) for r, s in zip(ref1, sampled, strict=True)]
        u_rep: dict = {"train_records": len(examples), "data_s": round(data_s, 1),
                       "base_first_vs_base": statistics.fmean(ceiling),
                       "sampled_vs_greedy_first": statistics.fmean(floor), "seeds": [],
                       "examples": []}
        print(f"{name}: {len(examples)} records in {data_s:.0f} s; base first sentence vs base answer "
              f"{u_rep['base_first_vs_base']:.1f}; sampled vs greedy (first sentences) "
              f"{u_rep['sampled_vs_greedy_first']:.1f}", flush=True)
        figures = functools.partial(_figures, held=(ids, user, ref1, base, u_rep["base_first_vs_base"]),
                                    tok=tok, scorer=scorer)
        for seed in seeds if name not in given else [0]:
            t1 = time.time()
            if name in given:
                from edge_agent.bundle import load_bundle

                edge = load_bundle(given[name], bb.fingerprint)
                record = {"heads": {"add": edge.heads["add"].info}}
            else:
                extra = {"rollout_prompts": 0, "calib_prompts": 0, "gen_batch": 256} if args.full_budget else {}
                extra.update(tiny)
                if args.target_m > 0:
                    extra["target_m"] = args.target_m
                if args.train_wire != "fp16":
                    extra["wire_dtype"] = args.train_wire
                if args.tau_by:
                    extra.update(tau_by=args.tau_by, tau_quality=args.tau_quality)
                for key in ("rollout_prompts", "calib_prompts"):
                    if getattr(args, key) >= 0:
                        extra[key] = getattr(args, key)
                edge, record = train_bundle(bb, examples, user_train_config(user, seed=seed, **extra),
                                            progress=False)
            train_s = time.time() - t1
            edge = edge.to(bb.device)
            gen = BatchedGenerator(bb, edge, bcfg)
            row: dict = {"seed": seed, "train_s": round(train_s, 1),
                         "auc_dev": record["heads"]["add"].get("calibration", {}).get("clf_auc_dev")}
            for mode in ("spa", "full"):
                row[mode], _, texts = figures(gen, mode)
                if seed == seeds[0] and mode == "spa":
                    u_rep["examples"] = [{"prompt": held[i].prompt[-80:], "spa": texts[i], "base": base[i]}
                                         for i in range(3)]
                print(f"{name} seed {seed} {mode}: " + json.dumps(
                    {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row[mode].items()}),
                    flush=True)
            for lead in args.leads:  # the same bundle, its first `lead` tokens always side-network
                saved, edge.heads["add"].lead = edge.heads["add"].lead, lead
                row[f"spa_lead{lead}"], _, _ = figures(gen, "spa")
                edge.heads["add"].lead = saved
                print(f"{name} seed {seed} spa, lead {lead}: frame {row[f'spa_lead{lead}']['frame']:.1f} "
                      f"M {row[f'spa_lead{lead}']['m']:.3f}", flush=True)
            u_rep["seeds"].append(row)
            if args.wire_dtypes and (seed == seeds[0] or args.wire_all_seeds):
                u_rep.setdefault("wire_seeds", []).append(_wire_table(bb, edge, bcfg, figures, args, name))
                u_rep["wire"] = u_rep["wire_seeds"][0]
        if len(u_rep.get("wire_seeds", [])) > 1:  # every seed's records, paired within each seed
            from lab.wire_quality import pooled_rows, print_pooled

            u_rep["wire_pooled"] = pooled_rows(u_rep["wire_seeds"])
            print(f"\n{name}: body Rouge-L per wire dtype, pooled over {len(u_rep['wire_seeds'])} seeds")
            print_pooled(u_rep["wire_pooled"])
        report["users"][name] = u_rep
        _summary(name, u_rep)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


def _figures(gen, mode: str, wire: str = "fp16", *, held: tuple, tok, scorer,
             ) -> tuple[dict, list[float], list[str]]:
    """One mode (and wire dtype) over the held-out questions: the figures, the per-question
    body Rouge-L against base's first sentence, and the texts."""
    from lab import users as U
    from lab.evaluate import bootstrap_ci

    ids, user, ref1, base, ceiling = held
    outs = gen.generate(ids, MAX_NEW, mode, wire_dtype=wire)
    texts = [tok.decode(g.tokens, skip_special_tokens=True) for g in outs]
    parts = [U.split_letter(t, user) for t in texts]
    framed = [float(o and c) for o, c, _ in parts]
    body1 = [_score(scorer, r, b) for r, (_, _, b) in zip(ref1, parts, strict=True)]
    vs_all = [_score(scorer, a, b) for a, (_, _, b) in zip(base, parts, strict=True)]
    toks = sum(g.stats.tokens for g in outs)
    return {
        "frame": 100 * statistics.fmean(framed),
        "opening": 100 * statistics.fmean(float(o) for o, _, _ in parts),
        "closing": 100 * statistics.fmean(float(c) for _, c, _ in parts),
        "body_vs_base_first": statistics.fmean(body1),
        "body_vs_base_first_ci": bootstrap_ci(body1, 2000),
        "body_vs_base_ratio": statistics.fmean(vs_all) / ceiling,
        "m": sum(g.stats.blocking for g in outs) / toks,
        "side_usage": sum(g.stats.side_used for g in outs) / toks,
        "tokens": toks / len(outs)}, body1, texts


def _wire_table(bb, edge, bcfg, figures, args, name: str) -> list[dict]:
    """The body Rouge-L, frame % and M per (weights, mode, wire), paired against fp16/fp32."""
    import tempfile

    from lab.batched import BatchedGenerator
    from lab.wire_quality import weight_variants, wire_rows
    from routing.modes import Mode

    with tempfile.TemporaryDirectory() as tmp:
        gens = {w: BatchedGenerator(bb, e, bcfg) for w, e in weight_variants(bb, edge, Path(tmp)).items()}

        def run(weights: str, mode: Mode, wire: str) -> tuple[list[float], dict]:
            fig, body1, _ = figures(gens[weights], mode.value, wire)
            return body1, fig

        rows = wire_rows(list(gens), [Mode.parse(m) for m in args.wire_modes.split(",")],
                         args.wire_dtypes, run, label=f"{name} ", what="body Rouge-L")
    print(f"\n{name}: body Rouge-L per wire dtype and weights, Δ vs fp16/fp32 [95% paired]")
    print("| mode | wire | weights | body Rouge-L | Δ [95%] | frame % | M |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        p = r["vs_fp16_fp32"]
        d = f"{p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}]" if p else "—"
        print(f"| {r['mode']} | {r['wire']} | {r['weights']} | {r['score']:.2f} | {d} | "
              f"{r['frame']:.0f} | {r['m']:.3f} |")
    print(flush=True)
    return rows


def _summary(name: str, rep: dict) -> None:
    print(f"\n{name}: mean over {len(rep['seeds'])} seeds [min, max]")
    print("| mode | frame % | opening % | closing % | body vs base 1st sentence | ÷ ceiling | M | side |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for mode in [m for m in rep["seeds"][0] if m == "full" or m.startswith("spa")]:
        cells = []
        for key in ("frame", "opening", "closing", "body_vs_base_first", "body_vs_base_ratio", "m",
                    "side_usage"):
            v = [s[mode][key] for s in rep["seeds"]]
            cells.append(f"{statistics.fmean(v):.3g} [{min(v):.3g}, {max(v):.3g}]")
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(flush=True)


if __name__ == "__main__":
    main()
