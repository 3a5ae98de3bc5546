"""`spa loadtest`'s flags: LoadConfig's, generated from its fields, plus what is not a tunable
(where bundles, prompts and outputs are). spa/serve_commands.py adds the security flags (--keys/--plaintext)."""

from __future__ import annotations

import argparse

from edge_agent.budget import BudgetConfig
from loadgen.config import LoadConfig


def add_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--bundle", help="one user's bundle (or --models)")
    q.add_argument("--prompts", help="JSONL tasks or a text file, one prompt a line "
                   "(default: built-in personal-style tasks)")
    q.add_argument("--models", help="a `spa build-models` directory: every user's bundle with "
                   "its held-out prompts, simulated users spread over them")
    LoadConfig.add_arguments(q)
    BudgetConfig.add_arguments(q)  # --m-budget B: every gated session's M budget (issue 17)
    q.add_argument("--sessions", dest="num_prompts", type=int, default=argparse.SUPPRESS,
                   help="the same as --num-prompts")
    q.add_argument("--goodput", dest="goodput_slos", nargs="+", default=[], metavar="NAME:MS",
                   help="SLOs a good request meets, e.g. --goodput ttft:200 tpot:50 e2e:3000 "
                   "(request_goodput: completed requests meeting all of them, per second)")
    q.add_argument("--delay", type=float, default=0.0,
                   help="seconds between serving /metrics and the first session (a first scrape "
                   "at zero makes Prometheus' rates exact)")
    q.add_argument("--start-file", default="",
                   help="after loading, wait until this file exists before the first session (one "
                   "common start for several load-test processes)")
    q.add_argument("--linger", type=float, default=0.0,
                   help="keep serving /metrics this long after the run (a last scrape)")
    q.add_argument("--json", help="write the figures here as JSON ('-' = stdout): vLLM's "
                   "benchmark fields where the meaning is the same, per mode under `modes`, one "
                   "report per rate under `sweep` for a sweep")
    q.add_argument("--plot", help="write PNGs into this directory (latency CDFs per mode, tok/s "
                   "and M over time, throughput and goodput against the offered rate)")
    q.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here (0 = off)")


def config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig.from_args(args, goodput=" ".join(args.goodput_slos))


def budget(args: argparse.Namespace) -> BudgetConfig | None:
    """Every gated session's M budget, or None (the bundles' fixed τ)."""
    return BudgetConfig.from_args(args) if getattr(args, "m_budget", 0.0) > 0 else None
