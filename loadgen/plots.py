"""`--plot DIR`: the run as PNGs (matplotlib, no display needed).

- `latency_cdf[_RATE].png`: TTFT, ITL and E2E distributions, one line per mode;
- `timeline[_RATE].png`: output tok/s and M over time, sessions in flight;
- `sweep.png` (a sweep of rates): request and goodput throughput, and output tok/s, against
  the offered rate (`inf` drawn right of the largest finite rate).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from loadgen.figures import by_mode, samples  # noqa: E402
from loadgen.runner import Phase, offered  # noqa: E402


def _suffix(phase: Phase, several: bool) -> str:
    return f"_{offered(phase.rate)}" if several else ""


def latency_cdf(phase: Phase, path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (name, title) in zip(axes, (("ttft", "time to first token"),
                                        ("itl", "inter-token latency"),
                                        ("e2el", "end-to-end latency")), strict=True):
        for mode, recs in by_mode(phase.records).items():
            xs = np.sort(np.asarray(samples(recs, name))) * 1000
            if xs.size:
                ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=mode)
        ax.set_xlabel(f"{title} (ms)")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of requests (ITL: of gaps)")
    axes[0].legend()
    fig.suptitle(f"latency CDFs per mode, offered rate {offered(phase.rate)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def timeline(phase: Phase, path: Path) -> Path:
    rows = phase.timeline.rates()
    t = [r["t"] for r in rows]
    peak = max([r["in_flight"] for r in rows] + [1])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    ax.plot(t, [r["tokens_per_s"] for r in rows], color="tab:blue", label="tok/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("tokens/s", color="tab:blue")
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, [r["m"] if r["m"] is not None else math.nan for r in rows], color="tab:red",
             label="M")
    ax2.plot(t, [r["in_flight"] / peak for r in rows],
             color="tab:gray", ls=":", label="in flight (share of max)")
    ax2.set_ylabel("M (blocking transmissions / token)", color="tab:red")
    ax2.set_ylim(0, 1.1)
    ax2.legend(loc="lower right")
    fig.suptitle(f"throughput and M over time, offered rate {offered(phase.rate)}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def sweep(results: list[dict], path: Path) -> Path:
    """`results`: one report per rate (request_rate, request_throughput, request_goodput,
    output_throughput)."""
    finite = [r["request_rate"] for r in results if not math.isinf(r["request_rate"])]
    inf_at = 2 * max(finite) if finite else 1.0
    xs = [inf_at if math.isinf(r["request_rate"]) else r["request_rate"] for r in results]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    ax.plot(xs, xs, color="lightgray", ls="--", label="offered")
    ax.plot(xs, [r["request_throughput"] for r in results], "o-", label="completed req/s")
    if all(r.get("request_goodput") is not None for r in results):
        ax.plot(xs, [r["request_goodput"] for r in results], "s-", label="goodput req/s")
    ax.set_ylabel("requests/s")
    ax2.plot(xs, [r["output_throughput"] for r in results], "o-", color="tab:green")
    ax2.set_ylabel("output tokens/s")
    for a in (ax, ax2):
        a.set_xscale("log")
        a.set_xticks(xs, [offered(r["request_rate"]) for r in results])
        a.minorticks_off()
        a.set_xlabel("offered rate (requests/s)")
        a.grid(alpha=0.3)
    ax.set_ylim(0, max([*finite, *(r["request_throughput"] for r in results), 1.0]) * 1.1)
    ax.legend()
    fig.suptitle("throughput and goodput against the offered rate")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(phases: list[Phase], results: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    several = len(phases) > 1
    paths = []
    for phase in phases:
        paths.append(latency_cdf(phase, out / f"latency_cdf{_suffix(phase, several)}.png"))
        paths.append(timeline(phase, out / f"timeline{_suffix(phase, several)}.png"))
    if several and all(r.get("request_rate") is not None for r in results):
        paths.append(sweep(results, out / "sweep.png"))
    return paths
