"""Stop 37: Decoder.frame's cost per token in a source tree's edge_agent/decoding.py — 500
sessions of 64 tokens over a 128-token prompt, follow 1, a gate firing on every 4th token;
median of 7 repeats; copy 0 and (where the tree has the rule) copy 1, its prompt index built
per session included.

    python results/cpu_2026-12-05d/frame_cost.py TREE
"""

from __future__ import annotations

import inspect
import random
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])

from edge_agent.decoding import Decoder  # noqa: E402
from routing.modes import Mode  # noqa: E402

NEW = "prompt" in inspect.signature(Decoder.start).parameters
PROMPT = [random.Random(0).randrange(1000) for _ in range(128)]


def session(copy: int) -> None:
    kw = {}
    if NEW:
        from edge_agent.decoding import copy_index

        kw = {"copy": copy, "copy_next": copy_index(PROMPT, copy)}
    d = Decoder(Mode.SPA, 64, None, len(PROMPT), follow=1, **kw)
    for i in range(64):
        if d.frame(PROMPT[i] if i % 3 else 7, fire=i % 4 == 0).act.value == "request":
            d.side(PROMPT[i + 1])


def main() -> None:
    out = {}
    for copy in (0, 1) if NEW else (0,):
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(500):
                session(copy)
            runs.append((time.perf_counter() - t0) / (500 * 64) * 1e6)
        out[f"copy {copy}"] = f"{statistics.median(runs):.2f} µs/token"
    print(sys.argv[1], out)


if __name__ == "__main__":
    main()
