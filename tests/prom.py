"""Test helpers: a real Prometheus server started as a process, queried over its HTTP API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


class PromError(AssertionError):
    pass


class PrometheusServer:
    def __init__(self, binary: str, config: Path, data: Path, port: int,
                 extra_args: list[str] | None = None) -> None:
        self.port, self.log = port, data.parent / f"prometheus-{port}.log"
        args = extra_args if extra_args is not None else [
            f"--config.file={config}", f"--storage.tsdb.path={data}"]
        self.proc = subprocess.Popen([binary, *args, f"--web.listen-address=127.0.0.1:{port}"],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PromError(f"prometheus exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise PromError(f"prometheus not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def api(self, path: str, **params) -> object:
        qs = urllib.parse.urlencode(params, doseq=True)
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/v1/{path}?{qs}", timeout=10).read()
        except urllib.error.HTTPError as e:  # 400/422: a bad expression
            body = e.read()
        out = json.loads(body)
        if out.get("status") != "success":
            raise PromError(f"{path} {params}: {out.get('errorType')}: {out.get('error')}")
        return out["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        data = self.api("query", query=expr, **({"time": f"{at:.3f}"} if at else {}))
        assert data["resultType"] == "vector", (expr, data["resultType"])
        return data["result"]

    def targets_up(self) -> dict[str, str]:
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def wait_scraped(self, after: float, selector: str = "", timeout: float = 30.0) -> float:
        """Until each target matching `selector` (e.g. '{job="x"}') has been scraped
        successfully after the epoch time `after`; returns the oldest such scrape's time.
        (`timestamp()` must take the selector itself: of an expression such as `up == 1` it
        gives the evaluation time, not the scrape's.)"""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n_all = self.query(f"count(up{selector})")
            n_up = self.query(f"count(up{selector} == 1)")
            fresh = self.query(f"count(timestamp(up{selector}) > {after:.3f})")
            if n_all and n_up and fresh and fresh[0]["value"][1] == n_up[0]["value"][1] == n_all[0]["value"][1]:
                return float(self.query(f"min(timestamp(up{selector}))")[0]["value"][1])
            time.sleep(0.2)
        raise PromError(f"targets {selector} not all scraped after {after}: {self.targets_up()}")

    def wait_evaluated(self, record: str, after: float, timeout: float = 30.0) -> float:
        """Until the recording rule `record` has been evaluated after `after`; returns the time
        of that evaluation."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.query(f"max(timestamp({record}))")
            if r and float(r[0]["value"][1]) > after:
                return float(r[0]["value"][1])
            time.sleep(0.2)
        raise PromError(f"{record} not evaluated after {after}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
