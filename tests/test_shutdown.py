"""SIGTERM (what `docker stop` and `docker compose down` send) stops a worker and the broker
cleanly: each ends its loop at the next tick and exits 0 within seconds. Both use a flag, not a
KeyboardInterrupt raised at whatever bytecode runs — one that lands in a finaliser is dropped,
and a CI run's broker served on that way (broker/broker.py, cloud_worker/worker.py main)."""

from __future__ import annotations

import os
import signal

from spa.stack import LocalStack


def test_sigterm_stops_worker_and_broker_cleanly(backbone_dir, tmp_path):
    with LocalStack(backbone_dir, workers=1, log_dir=tmp_path) as stack:
        for name in ("worker0", "broker"):
            p = stack.by_name[name]
            os.killpg(p.pid, signal.SIGTERM)
            try:
                code = p.wait(15)
            except Exception:  # noqa: BLE001 — fail with the log, leave no process behind
                os.killpg(p.pid, signal.SIGKILL)
                raise AssertionError(f"{name} did not stop on SIGTERM within 15 s:\n"
                                     + (tmp_path / f"{name}.log").read_text()[-800:]) from None
            assert code == 0, (tmp_path / f"{name}.log").read_text()[-800:]
