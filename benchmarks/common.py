"""Shared set-up for the serving benchmarks: the cached tiny backbone and its user's bundle
(`spa build-models --backbone tiny`: fast on a CPU; the GPU benchmarks bring their own)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lab.build import build_models  # noqa: E402
from spa.demo import demo_prompts  # noqa: E402

CACHE = ROOT / ".spa-cache" / "tiny"


def models() -> tuple[Path, Path]:
    m = build_models(CACHE, "tiny")
    return m.backbone, m.bundle(m.user_names()[0])


def prompts(n: int) -> list[str]:
    return demo_prompts(build_models(CACHE, "tiny"), n)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
