"""The `spa` command: pretrain, train, eval, generate (and the serving commands).

Bad input ends with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from routing.errors import SpaError
from routing.modes import training_choices


def _progress(args) -> bool:
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def cmd_pretrain(args) -> None:
    from lab.pretrain import pretrain

    pretrain(args.corpus, args.out, args.preset, args.steps, args.seed, args.device, _progress(args))


# TrainConfig fields whose flags default to None (= TrainConfig's own default, one place)
_TRAIN_TUNABLES = ("dropout", "weight_decay", "patience", "schedule", "clf_features", "clf_hidden",
                   "clf_objective", "rollout_prompts", "gen_batch", "dev_fraction", "rollout_tokens",
                   "calib_steps", "calib_prompts", "batch", "wire_dtype")


def cmd_train(args) -> None:
    from cloud_worker.backbone import Backbone
    from edge_agent.bundle import save_bundle
    from lab.data import load_examples, split
    from lab.training import TrainConfig, parse_overrides, train_bundle

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


def _security(q, server: bool = False) -> None:
    """--keys DIR (from `spa keys DIR`) or an explicit --plaintext: there is no silent default."""
    g = q.add_mutually_exclusive_group()
    g.add_argument("--keys", help="CURVE key directory made by `spa keys DIR`" + (
        " (the broker's pair and the agents/ and workers/ allow-lists)" if server else ""))
    if not server:
        q.add_argument("--key-name", help="which key of the role's folder in --keys (default: the first)")
    g.add_argument("--plaintext", action="store_true",
                   help="INSECURE: no authentication, no encryption (local demos and tests only)")
    q.add_argument("--metrics-addr", default="127.0.0.1",
                   help="interface /metrics listens on (default loopback; 0.0.0.0 in containers)")


def _server_keys(args):
    from routing.errors import InputError
    from routing.security import ServerKeys

    if args.plaintext:
        print("spa broker: WARNING: --plaintext: anyone who reaches the ports gets in", file=sys.stderr)
        return None
    if not args.keys:
        raise InputError("give --keys DIR (create it with `spa keys DIR`) or, for a local test, --plaintext")
    return ServerKeys.from_dir(args.keys)


def cmd_keys(args) -> None:
    from routing.security import create_keys

    made = create_keys(args.dir, args.agent or ["agent"], args.worker or ["worker"])
    for path in made:
        print(f"created {path}")
    print(f"keys in {args.dir}: broker.key (public, give it to every worker and agent), "
          f"agents/ and workers/ (the broker allows the public *.key files there)")


def cmd_broker(args) -> None:
    from broker.broker import main as broker_main
    from broker.config import BrokerConfig

    cfg = BrokerConfig.from_args(args)
    broker_main(args.agents, args.workers, args.metrics_port, _server_keys(args), cfg, args.metrics_addr)


def cmd_worker(args) -> None:
    from cloud_worker.config import WorkerConfig
    from cloud_worker.worker import main as worker_main
    from routing.security import client_keys

    worker_main(args.backbone, args.broker, args.device, args.dtype, args.threads, args.metrics_port,
                client_keys(args, "worker"), args.metrics_addr, config=WorkerConfig.from_args(args))


def cmd_agent(args) -> None:
    import asyncio

    from edge_agent.agent import EdgeAgent
    from edge_agent.budget import BudgetConfig
    from edge_agent.bundle import load_bundle
    from edge_agent.config import AgentConfig
    from edge_agent.replay import RetryPolicy
    from monitoring import metrics
    from routing.errors import InputError
    from routing.security import client_keys

    if not args.prompt.strip():
        raise InputError("empty prompt")
    keys = client_keys(args, "agent")
    edge = load_bundle(args.bundle)
    metrics.init_agent_series([args.mode])
    metrics.serve(args.metrics_port, args.metrics_addr)

    budget = BudgetConfig.from_args(args) if args.m_budget > 0 else None

    async def run() -> None:
        agent = EdgeAgent(edge, args.broker, keys=keys, cfg=AgentConfig.from_args(args),
                          retry=RetryPolicy.from_args(args))
        try:
            stream = agent.generate(args.prompt, args.max_new_tokens, args.mode, budget=budget)
            async with asyncio.timeout(args.timeout):
                async for piece in stream:
                    if args.json:
                        print(json.dumps({"text": piece.text, "path": piece.path}), flush=True)
                    else:
                        print(piece.text, end="", flush=True)
            s = stream.stats
            if args.json:
                print(json.dumps({"done": True, **s.to_dict(), "ttft_s": s.ttft_s,
                                  "inter_token_s": s.inter_token_s}), flush=True)
                return
            itl = sorted(s.inter_token_s)
            under = "" if s.m_budget is None else f" (budget {s.m_budget:g}, forced {s.budget_forced})"
            print(f"\n[{args.mode}] tokens={s.tokens} M={s.m:.3f}{under} side={s.side_rate:.3f} "
                  f"corrections={s.corrections} TTFT={s.ttft_s * 1000:.1f}ms "
                  f"ITL p50={itl[len(itl) // 2] * 1000 if itl else 0:.1f}ms", file=sys.stderr)
        finally:
            await agent.close()

    from routing import aio

    try:
        aio.run(run())
    except TimeoutError:
        raise SpaError(f"no answer from the broker at {args.broker} within {args.timeout}s") from None


def cmd_loadtest(args) -> None:
    from loadgen.loadtest import main as loadtest_main

    loadtest_main(args)


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
    from lab.pool import PoolConfig, build_pool, xsum_file

    pool = build_pool(Backbone.load(args.backbone, args.device), args.out,
                      PoolConfig.from_args(args), xsum=xsum_file(args.xsum), progress=_progress(args))
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


def cmd_health(args) -> None:
    from monitoring.health import wait

    if args.wait < 0:
        from routing.errors import InputError

        raise InputError(f"--wait must be >= 0, got {args.wait}")
    print(wait(args.url, args.require, args.timeout, args.wait))


def cmd_demo(args) -> None:
    from spa.demo import run_demo

    run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spa", description="SPA serving: personalised generation "
                                "split between a cloud backbone and an edge side network")
    sub = p.add_subparsers(dest="command", required=True)

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
    q.add_argument("--mode", default="all", choices=training_choices())
    q.add_argument("--target-m", type=float, default=0.62)
    q.add_argument("--lambda", dest="lam", type=float, default=0.05)
    q.add_argument("--epochs", type=int, default=10)
    q.add_argument("--clf-epochs", type=int, default=6)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--width", type=int, default=0, help="side width r (0 = d/8)")
    q.add_argument("--every", type=int, default=1, help="use every k-th backbone layer")
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
    q.add_argument("--batch", type=int, default=None, help="positions per side-training step")
    q.add_argument("--side-overrides", default="",
                   help="per combine, e.g. 'replace:width=144,dropout=0.1;add:every=2'")
    q.add_argument("--max-prompt-tokens", type=int, default=384)
    q.add_argument("--seed", type=int, default=0)
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

    q = sub.add_parser("broker", help="the broker: admission, placement, routing, liveness")
    q.add_argument("--agents", default="tcp://*:5555")
    q.add_argument("--workers", default="tcp://*:5556")
    q.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0 = off)")
    from broker.config import BrokerConfig

    BrokerConfig.add_arguments(q)  # every tunable, declared once in broker/config.py
    for old_flag, dest in (("--lease", "lease_s"), ("--heartbeat", "heartbeat_s")):  # older names
        q.add_argument(old_flag, dest=dest, type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _security(q, server=True)
    q.set_defaults(func=cmd_broker)

    q = sub.add_parser("worker", help="a cloud worker serving the backbone")
    q.add_argument("--broker", default="tcp://127.0.0.1:5556")
    q.add_argument("--backbone", required=True)
    q.add_argument("--device", default="cpu")
    q.add_argument("--dtype", default=None)
    q.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = half the cores)")
    q.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0 = off)")
    from cloud_worker.config import WorkerConfig

    WorkerConfig.add_arguments(q)  # --max-sessions, --max-batch, --chunk-tokens, --kv-…, --engine …
    _security(q)
    q.set_defaults(func=cmd_worker)

    q = sub.add_parser("agent", help="an edge agent: stream one generation")
    q.add_argument("--broker", default="tcp://127.0.0.1:5555")
    q.add_argument("--bundle", required=True)
    q.add_argument("--prompt", required=True)
    q.add_argument("--mode", default="spa")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--timeout", type=float, default=120.0)
    q.add_argument("--json", action="store_true", help="one JSON line per piece, then the stats")
    q.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0 = off)")
    from edge_agent.config import AgentConfig
    from edge_agent.replay import RetryPolicy

    AgentConfig.add_arguments(q)
    RetryPolicy.add_arguments(q)
    from edge_agent.budget import BudgetConfig

    BudgetConfig.add_arguments(q)  # --m-budget B: the session's gate adapts τ to B (issue 17)
    _security(q)
    q.set_defaults(func=cmd_agent)

    q = sub.add_parser("loadtest", help="many simulated devices in one process: closed or open "
                       "loop, a rate sweep, figures per mode, JSON, plots, /metrics")
    from loadgen.cli_args import add_arguments as add_loadtest_arguments

    add_loadtest_arguments(q)
    _security(q)
    q.set_defaults(func=cmd_loadtest)

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

    q = sub.add_parser("keys", help="create CURVE key pairs: the broker's, agents' and workers'")
    q.add_argument("dir", help="key directory (existing pairs are kept)")
    q.add_argument("--agent", action="append", help="an agent key name (repeat; default: agent)")
    q.add_argument("--worker", action="append", help="a worker key name (repeat; default: worker)")
    q.set_defaults(func=cmd_keys)

    q = sub.add_parser("health", help="exit 0 when a /metrics endpoint answers (and meets --require)")
    q.add_argument("url", help="e.g. http://127.0.0.1:9101/metrics")
    q.add_argument("--require", action="append", default=[],
                   help="NAME>=VALUE on a sample summed over labels, e.g. spa_live_workers>=1")
    q.add_argument("--timeout", type=float, default=3.0)
    q.add_argument("--wait", type=float, default=0.0, help="retry for up to this many seconds "
                   "(e.g. 900 while a first `docker compose up` builds the models); 0 = once")
    q.set_defaults(func=cmd_health)

    q = sub.add_parser("demo", help="broker, worker and two users' agents on localhost: each "
                       "user's prompt with their side network and with the backbone alone")
    q.add_argument("--cache", default=".spa-cache/models", help="the models (built on first use)")
    q.add_argument("--backbone", help="as for build-models (default: smollm2-135m)")
    q.add_argument("--xsum", help="as for build-models")
    q.add_argument("--users", default="", help="comma list (default: every user in --cache)")
    q.add_argument("--modes", default="spa,base", help="each user's prompt runs once per mode")
    q.add_argument("--prompt", type=int, default=0, help="which held-out prompt of each user")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--new-user", help="a third user blended on the spot from this JSONL's first "
                   "≤ 16 records (issue 19; the pool is built into <cache>/pool on first use)")
    q.add_argument("--pool", help="the side-network pool for --new-user (default <cache>/pool)")
    from edge_agent.budget import BudgetConfig

    BudgetConfig.add_arguments(q)  # each agent's --m-budget (spa/choice sessions; issue 17)
    q.set_defaults(func=cmd_demo)
    return p


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (docker stop) unwinds like Ctrl-C: sockets closed, logs flushed


def main(argv: list[str] | None = None) -> int:
    import signal

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        args.func(args)
    except SpaError as exc:
        print(f"spa {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spa {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
