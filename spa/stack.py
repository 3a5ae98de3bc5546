"""A local serving stack — broker and workers as separate processes on localhost — for the
demo, the end-to-end tests and the benchmarks. Stops cleanly: no stray processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from routing.errors import SpaError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    def __init__(self, backbone: str | Path, workers: int = 1, max_sessions: int | None = None,
                 log_dir: str | Path | None = None, agent_port: int | None = None,
                 metrics: bool = False, device: str = "cpu", secure: bool = True,
                 broker_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = ()) -> None:
        """secure: CURVE with keys made for this stack (`agent_keys` for in-process agents,
        `client_args` for spawned ones); False: --plaintext."""
        self.backbone, self.device = str(backbone), device
        self.n_workers = workers
        self.broker_args, self.worker_args = tuple(broker_args), tuple(worker_args)
        self.max_sessions = max_sessions
        self.agent_port = agent_port or free_port()
        self.worker_port = free_port()
        self.log_dir = Path(log_dir) if log_dir else None
        self.procs: list[subprocess.Popen] = []
        self.by_name: dict[str, subprocess.Popen] = {}
        self.commands: dict[str, tuple[str, ...]] = {}
        self.key_dir: Path | None = None
        if secure:
            import tempfile

            from routing.security import create_keys

            self.key_dir = Path(tempfile.mkdtemp(prefix="spa-keys-"))
            create_keys(self.key_dir, ["agent", "probe"], ["worker"])
        # /metrics ports: 'broker', 'worker0', 'worker1', …
        self.metrics_ports = ({"broker": free_port()} | {f"worker{i}": free_port() for i in range(workers)}
                              if metrics else {})

    @property
    def agent_keys(self):
        """ClientKeys for an in-process EdgeAgent (None on a plaintext stack)."""
        from routing.security import ClientKeys

        return ClientKeys.from_dir(self.key_dir, "agent", "agent") if self.key_dir else None

    @property
    def client_args(self) -> list[str]:
        """Flags for a spawned `spa agent` / `spa loadtest` / `spa worker`."""
        return ["--keys", str(self.key_dir)] if self.key_dir else ["--plaintext"]

    @property
    def agents_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.agent_port}"

    @property
    def workers_addr(self) -> str:
        return f"tcp://127.0.0.1:{self.worker_port}"

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        self.commands[name] = args
        out = open(self.log_dir / f"{name}.log", "a") if self.log_dir else subprocess.DEVNULL
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen([sys.executable, "-m", "spa", *args], stdout=out, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.procs.append(p)
        self.by_name[name] = p
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one process ('broker', 'worker0', …): the chaos tests' fault."""
        p = self.by_name[name]
        if p.poll() is None:
            os.killpg(p.pid, sig)
            p.wait()

    def respawn(self, name: str) -> subprocess.Popen:
        """Start a killed process again with its original command (same ports, same keys)."""
        self.kill(name)
        self.procs.remove(self.by_name[name])
        return self._spawn(name, *self.commands[name])

    def start(self, timeout: float = 120.0) -> LocalStack:
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        mp = self.metrics_ports
        self._spawn("broker", "broker", "--agents", f"tcp://127.0.0.1:{self.agent_port}",
                    "--workers", f"tcp://127.0.0.1:{self.worker_port}",
                    "--metrics-port", str(mp.get("broker", 0)), *self.client_args, *self.broker_args)
        for i in range(self.n_workers):
            self._spawn(f"worker{i}", "worker", "--broker", self.workers_addr, "--backbone",
                        self.backbone, "--device", self.device,
                        *(("--max-sessions", str(self.max_sessions)) if self.max_sessions else ()),
                        "--metrics-port", str(mp.get(f"worker{i}", 0)), *self.client_args,
                        *self.worker_args)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Until the broker has every worker registered (asked over a probe socket)."""
        import zmq

        from routing.protocol import MsgType, decode, encode, msg

        ctx = zmq.Context.instance()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    self.stop()
                    raise SpaError(f"stack process {p.args[3]} exited with {p.returncode}")
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self.key_dir:
                from routing.security import ClientKeys, connect_as

                connect_as(s, ClientKeys.from_dir(self.key_dir, "agent", "probe"))
            s.connect(self.agents_addr)
            s.send_multipart(encode(msg(MsgType.OPEN, session=os.urandom(16), prompt=[0], max_new_tokens=1,
                                        mode="base", window=1, sampling={}, fingerprint="probe",
                                        wire_layers=[], eos=None)))
            if s.poll(500):
                detail = decode(s.recv_multipart())["detail"]
                live = int(detail.split("(")[1].split()[0]) if "workers live" in detail else 0
                if live >= self.n_workers:
                    s.close(0)
                    return
            s.close(0)
            time.sleep(0.2)
        self.stop()
        raise SpaError(f"stack not ready within {timeout}s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self.key_dir is not None:
            import shutil

            shutil.rmtree(self.key_dir, ignore_errors=True)
            self.key_dir = None
