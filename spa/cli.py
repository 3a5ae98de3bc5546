"""The `spa` command: the host tools (pretrain, train, eval, generate, build-models, pool,
blend: `spa/lab_commands.py`) and the serving commands (broker, worker, agent, loadtest, keys,
health, demo: `spa/serve_commands.py`), each with its flags beside its body.

Bad input ends with a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from routing.errors import SpaError
from spa import lab_commands, serve_commands
from spa.lab_commands import (  # noqa: F401  (re-exported: `spa.cli.cmd_…` as before)
    cmd_blend,
    cmd_build_models,
    cmd_eval,
    cmd_generate,
    cmd_pool_build,
    cmd_pretrain,
    cmd_train,
)
from spa.serve_commands import (  # noqa: F401  (re-exported)
    cmd_agent,
    cmd_broker,
    cmd_demo,
    cmd_health,
    cmd_keys,
    cmd_loadtest,
    cmd_worker,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spa", description="SPA serving: personalised generation "
                                "split between a cloud backbone and an edge side network")
    sub = p.add_subparsers(dest="command", required=True)
    lab_commands.add_parsers(sub)
    serve_commands.add_parsers(sub)
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
