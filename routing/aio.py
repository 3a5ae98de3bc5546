"""Run a coroutine on uvloop where it is installed (the asyncio loop otherwise).

SIGTERM (docker stop) cancels the coroutine's task from the loop, so its `finally` blocks run
(sessions closed, sockets shut) and `run` then raises KeyboardInterrupt, as Ctrl-C does. Not a
KeyboardInterrupt raised by a signal handler at whatever bytecode runs: one landing inside a
finaliser is printed as "ignored" and lost (a CI run's broker served on that way, RESULTS §10.11).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


def run(coro):
    try:
        import uvloop
    except ImportError:  # Windows, or a minimal install
        return asyncio.run(_terminable(coro))
    return uvloop.run(_terminable(coro))


async def _terminable(coro):
    """`coro`, cancelled by SIGTERM (then KeyboardInterrupt) where the loop can take signals."""
    loop, task, got = asyncio.get_running_loop(), asyncio.current_task(), []
    before = signal.getsignal(signal.SIGTERM)

    def terminate() -> None:
        got.append(True)
        task.cancel()

    try:
        loop.add_signal_handler(signal.SIGTERM, terminate)
        installed = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or Windows
        installed = False
    try:
        return await coro
    except asyncio.CancelledError:
        if got:
            raise KeyboardInterrupt from None
        raise
    finally:
        if installed:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(signal.SIGTERM)
                signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)
