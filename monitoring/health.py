"""`spa health URL`: the compose healthchecks. A process is healthy when its /metrics answers
(a worker serves it only once the backbone is loaded), optionally with requirements on samples,
e.g. `spa_live_workers>=1`."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from routing.errors import InputError, SpaError

_REQ = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(>=|<=|==|>|<)\s*(-?[0-9.eE+-]+)$")
_OPS = {">=": float.__ge__, "<=": float.__le__, "==": float.__eq__, ">": float.__gt__, "<": float.__lt__}


def parse_requirement(text: str) -> tuple[str, str, float]:
    m = _REQ.match(text.strip())
    if not m:
        raise InputError(f"--require {text!r}: expected NAME>=VALUE (or <=, ==, >, <)")
    return m[1], m[2], float(m[3])


def check(url: str, require: list[str], timeout: float = 3.0) -> str:
    """Fetch `url` and test each requirement on the sample summed over its labels; raise
    SpaError naming what failed, or return a one-line 'healthy' report."""
    reqs = [parse_requirement(r) for r in require]
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
    except (urllib.error.URLError, OSError) as e:
        raise SpaError(f"{url}: no answer ({getattr(e, 'reason', e)})") from None
    sums: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            sums[s.name] = sums.get(s.name, 0.0) + s.value
    for name, op, value in reqs:
        if name not in sums:
            raise SpaError(f"{url}: no sample named {name}")
        if not _OPS[op](sums[name], value):
            raise SpaError(f"{url}: {name} is {sums[name]:g}, needs {op} {value:g}")
    return f"healthy: {url}" + "".join(f", {n}={sums[n]:g}" for n, _, _ in reqs)


def wait(url: str, require: list[str], timeout: float = 3.0, wait_s: float = 0.0,
         every_s: float = 2.0) -> str:
    """`check`, retried until it passes or `wait_s` is over (0 = once): for scripts that start
    the stack and wait for it, e.g. through a first `docker compose up` that builds the models."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return check(url, require, timeout)
        except SpaError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
        time.sleep(min(every_s, left))
