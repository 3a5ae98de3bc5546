"""The serving commands of `spa` (`spa/cli.py` assembles them): broker, worker, agent, loadtest,
keys, health, demo — each command's flags (generated from the process's config, declared once:
`BrokerConfig`, `WorkerConfig`, `AgentConfig`, …) and its body.
"""

from __future__ import annotations

import argparse
import json
import sys

from routing.errors import SpaError


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


def cmd_health(args) -> None:
    from monitoring.health import wait

    if args.wait < 0:
        from routing.errors import InputError

        raise InputError(f"--wait must be >= 0, got {args.wait}")
    print(wait(args.url, args.require, args.timeout, args.wait))


def cmd_demo(args) -> None:
    from spa.demo import run_demo

    run_demo(args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The serving subcommands on `sub`."""
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
