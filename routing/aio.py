"""Run a coroutine on uvloop where it is installed (the asyncio loop otherwise)."""

from __future__ import annotations

import asyncio


def run(coro):
    try:
        import uvloop
    except ImportError:  # Windows, or a minimal install
        return asyncio.run(coro)
    return uvloop.run(coro)
