"""What one run measured, per request and summed up per mode and overall.

Field names follow vLLM's benchmark JSON where the meaning is the same (`completed`,
`request_throughput`, `output_throughput`, `request_goodput`, `mean_ttft_ms`, `p99_itl_ms`,
`median_e2el_ms`, …); the rest is SPA's own: M (blocking edge↔cloud transmissions per token),
side usage, corrections, bytes per token each way (also per wire dtype), errors by code, attempts (refused and tried
again); queue wait comes from the broker (loadgen/queue_wait.py).

- TTFT: from the request's first attempt to its first token (refusals and retries included).
- TPOT: per request, (E2E − TTFT) / (output tokens − 1); requests of one token have none.
- ITL: every gap between consecutive tokens of every request.
- E2E (vLLM's `e2el`): first attempt to last token.
- Goodput: completed requests that meet every SLO given, per second; `goodput_share` is their
  share of the completed requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from routing.transmissions import Transmissions

PERCENTILES = (90, 99)
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One request (one generation, however many attempts it took)."""

    mode: str
    start: float  # seconds after the run started (first attempt)
    prompt_tokens: int
    output_tokens: int = 0  # of the attempt that finished (or the last one)
    ttft: float | None = None
    e2el: float | None = None
    itl: list[float] = field(default_factory=list)
    sent: Transmissions = field(default_factory=Transmissions)  # every attempt's, as /metrics
    bytes_up: int = 0
    bytes_down: int = 0
    attempts: int = 0
    errors: list[str] = field(default_factory=list)  # the code of every failed attempt
    error: str | None = None  # what left it unfinished: a code, or 'cancelled' (None = completed)
    m_budget: float | None = None  # the session's M budget b (None: the bundle's fixed τ)
    wire: str = "fp16"  # how its z and hidden states came ("": a mode without a side network)

    @property
    def completed(self) -> bool:
        return self.error is None and self.e2el is not None

    @property
    def tpot(self) -> float | None:
        if not self.completed or self.output_tokens < 2 or self.ttft is None:
            return None
        return (self.e2el - self.ttft) / (self.output_tokens - 1)

    def meets(self, slos: dict[str, float]) -> bool:
        """Completed and within every SLO (seconds; names as in SLO_METRICS)."""
        if not self.completed:
            return False
        values = {"ttft": self.ttft, "tpot": self.tpot, "e2el": self.e2el}
        return all(values[k] is None or values[k] <= bound for k, bound in slos.items())


def latency_stats(name: str, xs: list[float]) -> dict[str, float | None]:
    """vLLM's `mean_X_ms`, `median_X_ms`, `std_X_ms`, `pNN_X_ms` (None without samples)."""
    a = np.asarray(xs, dtype=float)
    out: dict[str, float | None] = {}
    for stat, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
        out[f"{stat}_{name}_ms"] = float(fn(a)) * 1000 if a.size else None
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(a, p)) * 1000 if a.size else None
    return out


def samples(records: list[RequestRecord], name: str) -> list[float]:
    if name == "itl":
        return [g for r in records if r.completed for g in r.itl]
    return [v for r in records if r.completed and (v := getattr(r, name)) is not None]


def summarize(records: list[RequestRecord], seconds: float, slos: dict[str, float] | None = None,
              ) -> dict:
    """The figures of `records` over a run of `seconds`."""
    slos = slos or {}
    done = [r for r in records if r.completed]
    secs = max(seconds, 1e-9)
    sent = Transmissions()
    for r in records:
        sent += r.sent
    out_tokens = sum(r.output_tokens for r in done)
    errors: dict[str, int] = {}
    unfinished: dict[str, int] = {}
    for r in records:
        for code in r.errors:
            errors[code] = errors.get(code, 0) + 1
        if r.error is not None:
            unfinished[r.error] = unfinished.get(r.error, 0) + 1
    good = sum(r.meets(slos) for r in done)
    d = {
        "duration": seconds,
        "completed": len(done),
        "failed": len(records) - len(done),
        "total_input_tokens": sum(r.prompt_tokens for r in done),
        "total_output_tokens": out_tokens,
        "request_throughput": len(done) / secs,
        "request_goodput": good / secs if slos else None,
        "goodput_share": good / len(done) if slos and done else None,
        "output_throughput": out_tokens / secs,
        "total_token_throughput": (out_tokens + sum(r.prompt_tokens for r in done)) / secs,
        # SPA's own: every generated token (unfinished attempts too, as /metrics counts them)
        "tokens": sent.tokens,
        "tokens_per_s": sent.tokens / secs,
        "blocking": sent.blocking,
        "m": sent.m,
        "side_rate": sent.side_rate,
        "correction_rate": sent.correction_rate,
        "bytes_up_per_token": sum(r.bytes_up for r in records) / sent.tokens if sent.tokens else None,
        "bytes_down_per_token": (sum(r.bytes_down for r in records) / sent.tokens
                                 if sent.tokens else None),
        "retries": sum(max(0, r.attempts - 1) for r in records),
        "errors": dict(sorted(errors.items())),  # every failed attempt, retried ones too
        "unfinished": dict(sorted(unfinished.items())),
        **budget_figures(done),
        "wire_dtypes": wire_figures(records),
    }
    for name in LATENCIES:
        d.update(latency_stats(name, samples(records, name)))
    return d


def budget_figures(done: list[RequestRecord], band: float = 0.05) -> dict:
    """Completed sessions under an M budget (issue 17): their b, the largest |M − b| of one
    session, and the share within ±`band` of b (empty without budgeted sessions)."""
    under = [r for r in done if r.m_budget is not None and r.sent.tokens]
    if not under:
        return {}
    gaps = [abs(r.sent.m - r.m_budget) for r in under]
    return {"m_budget": sorted({r.m_budget for r in under}), "budget_sessions": len(under),
            "budget_gap_max": max(gaps), f"budget_within_{band:g}": sum(g <= band for g in gaps) / len(under)}


def wire_figures(records: list[RequestRecord]) -> dict[str, dict]:
    """Per wire dtype (issue 22): sessions, tokens, M and bytes per generated token each way
    (every attempt's, as the totals)."""
    out: dict[str, dict] = {}
    for wire in sorted({r.wire for r in records} - {""}):  # base sessions carry no frames
        rs = [r for r in records if r.wire == wire]
        sent = Transmissions()
        for r in rs:
            sent += r.sent
        n = sent.tokens
        out[wire] = {"sessions": len(rs), "completed": sum(r.completed for r in rs), "tokens": n,
                     "m": sent.m, "bytes_up_per_token": sum(r.bytes_up for r in rs) / n if n else None,
                     "bytes_down_per_token": sum(r.bytes_down for r in rs) / n if n else None}
    return out


def by_mode(records: list[RequestRecord]) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = {}
    for r in records:
        out.setdefault(r.mode, []).append(r)
    return dict(sorted(out.items()))


@dataclass
class Timeline:
    """Samples over a run: (seconds, tokens so far, blocking so far, sessions in flight)."""

    points: list[tuple[float, int, int, int]] = field(default_factory=list)

    def add(self, t: float, tokens: int, blocking: int, in_flight: int) -> None:
        self.points.append((t, tokens, blocking, in_flight))

    def rates(self) -> list[dict]:
        """Per interval: tok/s, M of that interval's tokens, sessions in flight at its end."""
        rows = []
        for (t0, k0, b0, _), (t1, k1, b1, n1) in zip(self.points, self.points[1:], strict=False):
            dt, dk = t1 - t0, k1 - k0
            rows.append({"t": t1, "tokens_per_s": dk / dt if dt > 0 else 0.0,
                         "m": (b1 - b0) / dk if dk else None, "in_flight": n1})
        return rows


def report(records: list[RequestRecord], seconds: float, slos: dict[str, float],
           timeline: Timeline | None = None, **meta) -> dict:
    """The whole run: overall figures at the top level (vLLM-style), per mode under `modes`,
    `meta` (request_rate, burstiness, max_concurrency, …) beside them."""
    d = {**meta, **summarize(records, seconds, slos)}
    d["modes"] = {m: summarize(rs, seconds, slos) for m, rs in by_mode(records).items()}
    if timeline is not None:
        d["timeline"] = timeline.rates()
    return d
