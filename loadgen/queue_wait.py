"""Queue wait at the broker, read from its /metrics (`--broker-metrics URL`).

Every OPEN passes the broker's admission queue (broker/admission.py; it waits there while every
worker is full) and the broker observes its wait in `spa_broker_admission_wait_seconds` when it
places it (≈ 0 when a worker had room); an agent cannot see its own wait (it is part of its
TTFT). The histogram's sum and count before and after a run give the OPENs placed and their mean
wait, over every agent of that broker (so this process's only when it is the broker's one client)."""

from __future__ import annotations

import urllib.request

WAIT = "spa_broker_admission_wait_seconds"


def read(url: str, timeout_s: float = 5.0) -> tuple[float, float] | None:
    """(sum of waits in seconds, OPENs placed) so far; None when the broker does not
    answer or has no such histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    except (OSError, ValueError):
        return None
    total = count = None
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == WAIT + "_sum":
                total = (total or 0.0) + s.value
            elif s.name == WAIT + "_count":
                count = (count or 0.0) + s.value
    return (total, count) if total is not None and count is not None else None


def between(before: tuple[float, float] | None, after: tuple[float, float] | None) -> dict:
    """The run's queue figures: OPENs placed and their mean wait in the queue (None if unknown)."""
    if before is None or after is None:
        return {"opens_placed": None, "mean_queue_wait_ms": None}
    n = after[1] - before[1]
    return {"opens_placed": int(n), "mean_queue_wait_ms": (after[0] - before[0]) / n * 1000 if n else 0.0}
