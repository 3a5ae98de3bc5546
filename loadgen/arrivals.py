"""When requests arrive in an open loop: inter-arrival gaps of a gamma process with mean 1/R.

Shape k = `burstiness`, scale 1/(R·k): k = 1 is the Poisson process (exponential gaps), k < 1
is burstier at the same mean rate, k > 1 more regular (vLLM's `--burstiness`). R = inf sends
every request at once. Seeded: the same seed gives the same schedule.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np


def gaps(rate: float, burstiness: float = 1.0, seed: int = 0) -> Iterator[float]:
    """Seconds between consecutive arrivals, forever."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if not burstiness > 0:
        raise ValueError(f"burstiness must be > 0, got {burstiness}")
    if math.isinf(rate):
        while True:
            yield 0.0
    rng = np.random.default_rng(seed)
    scale = 1.0 / (rate * burstiness)
    while True:
        yield float(rng.gamma(burstiness, scale))


def schedule(rate: float, n: int, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """The first `n` arrival times (seconds after the start; the first request at 0)."""
    times, t = [], 0.0
    g = gaps(rate, burstiness, seed)
    for i in range(n):
        if i:
            t += next(g)
        times.append(t)
    return times
