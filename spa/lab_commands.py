"""The host-tool commands of `spa` (`spa/cli.py` assembles them): pretrain, train, eval,
generate, build-models, pool build, blend — each command's flags and its body. Torch and the
models load inside the bodies, never while the parser is built.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from lab.train_config import TrainConfig
from routing.modes import training_choices


def _progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def cmd_pretrain(args) -> None:
    from lab.pretrain import pretrain

    pretrain(args.corpus, args.out, args.preset, args.steps, args.seed, args.device, _progress(args))


# TrainConfig's defaults, declared there once; the other flags default to None (= the same)
_TRAIN = {f.name: f.default for f in fields(TrainConfig)}
# TrainConfig fields whose flags default to None (= TrainConfig's own default, one place)
_TRAIN_TUNABLES = ("dropout", "weight_decay", "patience", "schedule", "clf_features", "clf_hidden",
                   "clf_objective", "rollout_prompts", "gen_batch", "dev_fraction", "rollout_tokens",
                   "calib_steps", "calib_prompts", "batch", "wire_dtype", "tau_by", "tau_quality",
                   "lead_tokens")


def cmd_train(args) -> None:
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import save_bundle
    from lab.data import load_examples, split
    from lab.training import parse_overrides, train_bundle

    layers = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else []
    cfg = TrainConfig(mode=args.mode, target_m=args.target_m, lam=args.lam, epochs=args.epochs,
                      clf_epochs=args.clf_epochs, lr=args.lr, width=args.width, every=args.every,
                      gates=args.gates, seed=args.seed, max_prompt_tokens=args.max_prompt_tokens,
                      layers=layers, warm_start=not args.no_warm_start,
                      **({"overrides": parse_overrides(args.side_overrides)} if args.side_overrides else {}),
                      **{k: getattr(args, k) for k in _TRAIN_TUNABLES if getattr(args, k) is not None})
    examples = split(load_examples(args.data), args.split)
    backbone = Backbone.load(args.backbone, args.device)
    edge, record = train_bundle(backbone, examples, cfg, _progress(args))
    record.update(command=" ".join(sys.argv), data=str(args.data), split=args.split,
                  backbone=str(args.backbone))
    out = save_bundle(edge, args.out, record)
    from edge_agent.bundle import describe

    print(describe(out))


def cmd_eval(args) -> None:
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from lab.data import load_examples, split
    from lab.evaluate import run_eval
    from routing.modes import parse_modes

    modes = parse_modes(args.modes)
    examples = split(load_examples(args.data), args.split)[: args.limit or None]
    backbone = Backbone.load(args.backbone, args.device)
    edge = load_bundle(args.bundle, backbone.fingerprint) if args.bundle else None
    json_out = Path(args.json) if args.json else None
    plot_out = Path(args.plot) if args.plot else (json_out.with_suffix(".png") if json_out else None)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    run_eval(backbone, edge, examples, modes, json_out, plot_out, args.sweep_limit,
             args.max_new_tokens, args.max_prompt_tokens, _progress(args), args.batch_size,
             budgets, args.budget_tokens)


def cmd_generate(args) -> None:
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import load_bundle
    from lab.reference import ReferenceGenerator
    from routing.errors import InputError
    from routing.sampling import Sampling

    if not args.prompt.strip():
        raise InputError("empty prompt")
    backbone = Backbone.load(args.backbone, args.device)
    edge = load_bundle(args.bundle, backbone.fingerprint) if args.bundle else None
    ref = ReferenceGenerator(backbone, edge)
    from edge_agent.budget import BudgetConfig

    budget = BudgetConfig.from_args(args) if args.m_budget > 0 else None
    gen = ref.generate(backbone.encode(args.prompt), args.max_new_tokens, args.mode,
                       Sampling(args.temperature, args.top_k, args.seed), budget=budget)
    print(backbone.tokenizer.decode(gen.tokens, skip_special_tokens=True))
    s = gen.stats
    print(f"[{args.mode}] tokens={s.tokens} M={s.m:.3f} side={s.side_rate:.3f} "
          f"corrections={s.corrections} ({s.tokens / max(gen.seconds, 1e-9):.0f} tok/s)",
          file=sys.stderr)


def cmd_build_models(args) -> None:
    from edge_agent.bundle import describe
    from lab.build import build_models

    models = build_models(args.out, args.backbone, args.xsum, None if not args.quiet else False,
                          args.corpus, args.steps)
    print(f"backbone {models.backbone_source} -> {models.backbone}")
    for name in models.user_names():
        print(f"user {name}: {describe(models.bundle(name))}")


def cmd_pool_build(args) -> None:
    from cloud_worker.backbone import Backbone
    from lab.pool import PoolConfig, build_pool, pool_styles, xsum_file

    styles = pool_styles(args.styles)  # a bad name fails before the backbone loads
    pool = build_pool(Backbone.load(args.backbone, args.device), args.out, PoolConfig.from_args(args),
                      styles, xsum=xsum_file(args.xsum), progress=_progress(args))
    print(f"pool {pool.path}: {len(pool.names)} members ({', '.join(pool.names)})")


def cmd_blend(args) -> None:
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import describe
    from lab.blend import BlendConfig, blend, save_blended
    from lab.data import load_examples
    from lab.pool import load_pool

    pool = load_pool(args.pool)
    backbone = Backbone.load(args.backbone or pool.info.get("backbone") or "smollm2-135m", args.device)
    cfg = BlendConfig.from_args(args)
    edge, record = blend(backbone, pool, load_examples(args.examples, limit=cfg.max_examples), cfg)
    record.update(command=" ".join(sys.argv), data=str(args.examples))
    out = save_blended(edge, record, args.out)
    b = record["blend"]
    print(f"blended from {b['examples']} examples in {b['seconds']['total']:.2f} s "
          f"({b['cpu_seconds']['total']:.2f} CPU s, {b['threads']} threads): "
          + ", ".join(f"{k} {v:+.2f}" for k, v in b["coefficients"].items()))
    print(describe(out))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The host-tool subcommands on `sub`."""
    q = sub.add_parser("pretrain", help="train a BPE tokenizer and a small Llama from scratch")
    q.add_argument("--corpus", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    q.add_argument("--steps", type=int)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_pretrain)

    q = sub.add_parser("train", help="train the side network and classifier into an edge bundle")
    q.add_argument("--backbone", required=True)
    q.add_argument("--data", required=True, help="JSONL: instruction/input/output or document/summary")
    q.add_argument("--out", required=True)
    q.add_argument("--split", default="", help="records to use, 'start:stop' (e.g. ':800')")
    q.add_argument("--mode", default=_TRAIN["mode"], choices=training_choices())
    q.add_argument("--target-m", type=float, default=_TRAIN["target_m"])
    q.add_argument("--lambda", dest="lam", type=float, default=_TRAIN["lam"])
    q.add_argument("--epochs", type=int, default=_TRAIN["epochs"])
    q.add_argument("--clf-epochs", type=int, default=_TRAIN["clf_epochs"])
    q.add_argument("--lr", type=float, default=_TRAIN["lr"])
    q.add_argument("--width", type=int, default=_TRAIN["width"], help="side width r (0 = d/8)")
    q.add_argument("--every", type=int, default=_TRAIN["every"], help="use every k-th backbone layer")
    q.add_argument("--gates", action="store_true", help="LST-style learned gates")
    q.add_argument("--layers", default="", help="backbone layers the side reads, e.g. 6,12,18,24,30")
    q.add_argument("--dropout", type=float, default=None)
    q.add_argument("--weight-decay", type=float, default=None)
    q.add_argument("--patience", type=int, default=None,
                   help="epochs without a better dev NLL before stopping")
    q.add_argument("--schedule", default=None, choices=["onecycle", "cosine", "constant"])
    q.add_argument("--clf-features", default=None, choices=["z", "z+stats"])
    q.add_argument("--wire-dtype", default=None, choices=["fp16", "int8", "int4"],
                   help="train for frames on this grid (quantisation-aware for the wire; issue 22)")
    q.add_argument("--clf-hidden", type=int, default=None, help="0 = linear")
    q.add_argument("--clf-objective", default=None,
                   choices=["onpolicy", "mixture", "both"])
    q.add_argument("--no-warm-start", action="store_true", help="no BCE warm start of the classifier")
    q.add_argument("--rollout-prompts", type=int, default=None,
                   help="training prompts for on-policy classifier data (0 = all)")
    q.add_argument("--gen-batch", type=int, default=None,
                   help="sequences per backbone forward in rollouts and calibration")
    q.add_argument("--dev-fraction", type=float, default=None)
    q.add_argument("--rollout-tokens", type=int, default=None,
                   help="tokens per rollout and per calibration generation")
    q.add_argument("--calib-steps", type=int, default=None, help="bisection steps for τ")
    q.add_argument("--calib-prompts", type=int, default=None, help="dev prompts for τ (0 = all)")
    q.add_argument("--tau-by", default=None, choices=["m", "quality"],
                   help="τ for the target M (m), or the lowest firing rate whose dev Rouge-L reaches "
                   "--tau-quality × the side-always run's (quality)")
    q.add_argument("--lead-tokens", type=int, default=None,
                   help="the answer's first N tokens always consult the side network (0–16)")
    q.add_argument("--tau-quality", type=float, default=None,
                   help="with --tau-by quality: the share of the side-always dev Rouge-L (0.5–1)")
    q.add_argument("--batch", type=int, default=None, help="positions per side-training step")
    q.add_argument("--side-overrides", default="",
                   help="per combine, e.g. 'replace:width=144,dropout=0.1;add:every=2'")
    q.add_argument("--max-prompt-tokens", type=int, default=_TRAIN["max_prompt_tokens"])
    q.add_argument("--seed", type=int, default=_TRAIN["seed"])
    q.add_argument("--device", default="cpu")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("eval", help="Rouge-L, M, side usage per mode; Rouge-L vs M plot")
    q.add_argument("--backbone", required=True)
    q.add_argument("--bundle")
    q.add_argument("--data", required=True)
    q.add_argument("--split", default="")
    q.add_argument("--modes", default="base,lst,full,choice,spa")
    q.add_argument("--limit", type=int, default=0)
    q.add_argument("--sweep-limit", type=int, default=0, help="examples per τ in the sweep (0 = all)")
    q.add_argument("--batch-size", type=int, default=64, help="sequences per backbone forward")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--max-prompt-tokens", type=int, default=384)
    q.add_argument("--json")
    q.add_argument("--plot", help="PNG path (default: next to --json)")
    q.add_argument("--budgets", default="", help="per-session M budgets for spa, e.g. 0.2,0.35,0.5: "
                   "Rouge-L and per-session |M − b| under each (issue 17)")
    q.add_argument("--budget-tokens", type=int, default=64, help="new tokens per budget session")
    q.add_argument("--device", default="cpu")
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(func=cmd_eval)

    q = sub.add_parser("generate", help="one generation with the single-process reference")
    q.add_argument("--backbone", required=True)
    q.add_argument("--bundle")
    q.add_argument("--prompt", required=True)
    q.add_argument("--mode", default="spa")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--temperature", type=float, default=0.0)
    q.add_argument("--top-k", type=int, default=0)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="cpu")
    from edge_agent.budget import BudgetConfig

    BudgetConfig.add_arguments(q)  # --m-budget B: the gate adapts τ to B per token (issue 17)
    q.set_defaults(func=cmd_generate)

    q = sub.add_parser("build-models", help="the backbone, its edge kit and two users' private "
                       "bundles in one directory, unless they are there already")
    q.add_argument("--out", default=".spa-cache/models")
    q.add_argument("--backbone", help="smollm2-135m (the default; a packaged model's name) or "
                   "`tiny` (pretrained here, for fast tests); default: what --out was built for")
    q.add_argument("--xsum", help="XSum JSONL for the `news` user (default: $SPA_XSUM or "
                   "../shared/data/xsum_1000.jsonl; without one the second user is `bo`)")
    q.add_argument("--corpus", help="text to pretrain the tiny backbone on (default: generated)")
    q.add_argument("--steps", type=int, default=400, help="pretraining steps of the tiny backbone")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_build_models)

    q = sub.add_parser("pool", help="a pool of base side networks for one backbone (issue 19)")
    pool_sub = q.add_subparsers(dest="pool_command", required=True)
    q = pool_sub.add_parser("build", help="train K side networks of one shape on the built-in styles")
    q.add_argument("--out", default=".spa-cache/pool")
    q.add_argument("--backbone", default="smollm2-135m")
    q.add_argument("--device", default="cpu")
    q.add_argument("--xsum", help="XSum JSONL for the news member (default: $SPA_XSUM or ../shared/data)")
    q.add_argument("--styles", default="", help="members, comma-separated (default: news, letter, "
                   "captain, brief, cheer, radio; opt-in: frames)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    from lab.blend_config import PoolConfig

    PoolConfig.add_arguments(q)
    q.set_defaults(func=cmd_pool_build)

    q = sub.add_parser("blend", help="a new user's bundle blended from a pool and a few examples")
    q.add_argument("--pool", required=True, help="a `spa pool build` directory")
    q.add_argument("--examples", required=True, help="the user's records (JSONL, as for train)")
    q.add_argument("--out", required=True, help="the bundle directory to write")
    q.add_argument("--backbone", help="default: the backbone the pool was built with")
    q.add_argument("--device", default="cpu")
    from lab.blend_config import BlendConfig

    BlendConfig.add_arguments(q)
    q.set_defaults(func=cmd_blend)
