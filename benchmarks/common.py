"""Shared set-up for the serving benchmarks: the cached tiny backbone and its user's bundle
(`spa build-models --backbone tiny`: fast on a CPU; the GPU benchmarks bring their own).

`SPA_BENCH_BACKBONE` and `SPA_BENCH_BUNDLE` (both set) name another backbone directory and
bundle instead: tests/test_benchmarks.py passes the test session's, so a smoke run builds nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CACHE = ROOT / ".spa-cache" / "tiny"


def models() -> tuple[Path, Path]:
    given = os.environ.get("SPA_BENCH_BACKBONE"), os.environ.get("SPA_BENCH_BUNDLE")
    if all(given):
        return Path(given[0]), Path(given[1])
    from lab.build import build_models

    m = build_models(CACHE, "tiny")
    return m.backbone, m.bundle(m.user_names()[0])


def prompts(n: int) -> list[str]:
    """`n` prompts as text: the demo's held-out prompts of the tiny models, or with
    SPA_BENCH_BUNDLE the built-in personal-style tasks."""
    if all((os.environ.get("SPA_BENCH_BACKBONE"), os.environ.get("SPA_BENCH_BUNDLE"))):
        from lab.data import record_to_example
        from lab.synthetic import make_personal_tasks

        return [record_to_example(r, i + 1, "builtin").prompt
                for i, r in enumerate(make_personal_tasks(max(n, 1), seed=2))][:n]
    from lab.build import build_models
    from spa.demo import demo_prompts

    return demo_prompts(build_models(CACHE, "tiny"), n)


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")
