"""Shared set-up for the serving benchmarks: the demo's cached tiny backbone and bundle."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from spa.demo import demo_prompts, ensure_models  # noqa: E402

CACHE = ROOT / ".spa-cache" / "demo"


def models() -> tuple[Path, Path]:
    return ensure_models(CACHE, None)


def prompts(n: int) -> list[str]:
    ps = demo_prompts(CACHE, n)
    return (ps * (n // max(1, len(ps)) + 1))[:n]


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
