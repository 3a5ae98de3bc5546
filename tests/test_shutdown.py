"""SIGTERM (what `docker stop` and `docker compose down` send) stops a worker and the broker
cleanly: each ends its loop at the next tick and exits 0 within seconds. Both use a flag, not a
KeyboardInterrupt raised at whatever bytecode runs — one that lands in a finaliser is dropped,
and a CI run's broker served on that way (broker/broker.py, cloud_worker/worker.py main). The
asyncio commands cancel their coroutine instead (routing/aio.py)."""

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


def test_sigterm_cancels_an_asyncio_command_and_runs_its_cleanup(tmp_path):
    """The asyncio commands (edge agent, load tester) run through routing.aio.run: SIGTERM
    cancels the coroutine — its `finally` runs (sessions closed) — and run() raises
    KeyboardInterrupt as Ctrl-C does. The script installs no handler of its own: without aio's,
    SIGTERM would kill it with no cleanup."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "agent_like.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from routing import aio\n"
        "async def main():\n"
        "    try:\n"
        "        print('ready', flush=True)\n"
        "        await asyncio.sleep(60)\n"
        "    finally:\n"
        "        await asyncio.sleep(0.05)  # an async close still runs\n"
        "        print('closed', flush=True)\n"
        "try:\n"
        "    aio.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(130)\n")
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=15)
    finally:
        p.kill()
    assert out.split() == ["closed", "interrupted"] and p.returncode == 130
