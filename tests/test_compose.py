"""compose.yaml without a Docker engine: valid against the compose-spec schema; its Prometheus
and Grafana files agree with it; and each service's own command (and healthcheck) runs as a
local process, service hosts mapped to 127.0.0.1 and ports mapped to free ones, and the stack
works: the agents generate, Prometheus finds every target and records M."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from prom import PrometheusServer

from lab.build import ModelSet
from lab.data import load_examples, write_prompt_file
from monitoring.grafana import dashboard
from spa.stack import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())  # resolves the <<: merges
SERVICES = COMPOSE["services"]
PROM_DIR = ROOT / "monitoring" / "prometheus"
GRAFANA_DIR = ROOT / "monitoring" / "grafana"


def check_jsonschema() -> str:
    exe = Path(sys.executable).with_name("check-jsonschema")
    return str(exe) if exe.exists() else shutil.which("check-jsonschema")


def test_compose_file_matches_the_compose_spec():
    res = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.compose-spec",
                          str(ROOT / "compose.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_broken_compose_file_is_refused(tmp_path):
    """The schema check can fail: a misspelt key is caught."""
    bad = tmp_path / "compose.yaml"
    bad.write_text((ROOT / "compose.yaml").read_text().replace("healthcheck:", "healthchek:", 1))
    res = subprocess.run([check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(bad)],
                         capture_output=True, text=True)
    assert res.returncode != 0


def test_services_profiles_and_dependencies():
    assert {"model-builder", "broker", "cloud-worker", "cloud-worker-gpu", "edge-agent",
            "prometheus", "grafana"} <= set(SERVICES)
    env = dict(line.split("=", 1) for line in (ROOT / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["COMPOSE_PROFILES"] == "cpu" and SERVICES["cloud-worker"]["profiles"] == ["cpu"]
    gpu = SERVICES["cloud-worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and "cuda" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert SERVICES["edge-agent"]["deploy"]["replicas"] >= 2
    for name in ("cloud-worker", "cloud-worker-gpu", "edge-agent"):
        deps = SERVICES[name]["depends_on"]
        assert deps["broker"]["condition"] == "service_healthy"
        assert deps["model-builder"]["condition"] == "service_completed_successfully"
    assert SERVICES["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    assert SERVICES["broker"]["depends_on"]["keygen"]["condition"] == "service_completed_successfully"
    for name in ("broker", "cloud-worker", "cloud-worker-gpu", "edge-agent"):  # no plaintext
        cmd = SERVICES[name]["command"]
        assert "--plaintext" not in cmd and cmd[cmd.index("--keys") + 1] == KEYS
    for name, svc in SERVICES.items():
        if name not in ("model-builder", "keygen"):
            assert "healthcheck" in svc, f"{name} has no healthcheck"


def metrics_port(service: str) -> int:
    cmd = SERVICES[service]["command"]
    return int(cmd[cmd.index("--metrics-port") + 1])


def test_prometheus_config_matches_compose(promtool):
    res = subprocess.run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    aliases = {a for s in SERVICES.values()
               for a in (s.get("networks") or {}).get("default", {}).get("aliases", [])}
    for job in cfg["scrape_configs"]:
        for sd in job["dns_sd_configs"]:
            for name in sd["names"]:
                assert name in SERVICES, name  # a service (the gpu worker has it as an alias)
                assert sd["port"] == metrics_port(name), (name, sd["port"])
    assert "cloud-worker" in aliases
    mounts = [v.split(":") for v in SERVICES["prometheus"]["volumes"]]
    assert ["./monitoring/prometheus", "/etc/prometheus", "ro"] in mounts


def test_grafana_provisioning_matches_compose():
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == dashboard.DATASOURCE["uid"] and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/spa.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert mounts[path] == "./monitoring/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/") and (ROOT / mounts[path][2:] / Path(home).name).is_file()


def test_committed_dashboard_is_the_generated_one():
    committed = (GRAFANA_DIR / "dashboards" / "spa.json").read_text()
    assert committed == dashboard.render(), "run: python -m monitoring.grafana.dashboard"
    d = yaml.safe_load(committed)
    assert d["uid"] == "spa-overview"
    for p in d["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == dashboard.DATASOURCE["uid"], p["title"]
            assert p["targets"] and all(t["datasource"] == dashboard.DATASOURCE for t in p["targets"])


# ---------------------------------------------------------------- the stack, as processes
KEYS = "/run/secrets/spa-keys"


class LocalCompose:
    """compose.yaml's commands as local processes: hosts -> 127.0.0.1, each port -> a free one
    (the same everywhere it appears), /models -> a directory, /etc/prometheus -> a copy."""

    def __init__(self, tmp: Path, models: Path) -> None:
        self.tmp, self.models = tmp, models
        text = " ".join(" ".join(map(str, s.get("command", []) + s.get("ports", []) + s.get(
            "healthcheck", {}).get("test", []))) for s in SERVICES.values())
        ports = {int(p) for p in re.findall(r":(\d{4,5})\b", text)}
        ports |= {metrics_port(n) for n, s in SERVICES.items() if "--metrics-port" in s.get("command", [])}
        self.ports = {p: free_port() for p in ports}
        self.hosts = set(SERVICES) | {"*"}
        self.procs: dict[str, subprocess.Popen] = {}

    def map(self, arg: str) -> str:
        if arg.isdigit() and int(arg) in self.ports:  # e.g. --metrics-port 9101
            return str(self.ports[int(arg)])
        for host in self.hosts:
            arg = arg.replace(f"//{host}:", "//127.0.0.1:")
        arg = re.sub(r":(\d{4,5})\b", lambda m: f":{self.ports.get(int(m[1]), int(m[1]))}", arg)
        return arg.replace("/models", str(self.models)).replace(KEYS, str(self.tmp / "keys"))

    def argv(self, words: list[str]) -> list[str]:
        assert words[0] == "spa", words
        return [sys.executable, "-m", "spa", *(self.map(w) for w in words[1:])]

    def start(self, name: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(self.argv(SERVICES[name]["command"]), stdout=log,
                             stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs[name] = p
        return p

    def healthcheck(self, name: str) -> None:
        """The service's own healthcheck test, retried as compose would."""
        hc = SERVICES[name]["healthcheck"]
        test = hc["test"]
        assert test[0] == "CMD", test
        seconds = lambda s: float(s.rstrip("s"))  # noqa: E731
        deadline = time.monotonic() + seconds(hc["start_period"]) + seconds(hc["interval"]) * hc["retries"]
        last = ""
        while time.monotonic() < deadline:
            p = self.procs.get(name)
            assert p is None or p.poll() is None, f"{name} exited: {self.log(name)}"
            if test[1] == "spa":
                res = subprocess.run(self.argv(test[1:]), capture_output=True, text=True)
                ok, last = res.returncode == 0, res.stderr
            else:  # wget -q -O /dev/null URL (in the image): the same request
                assert test[1] == "wget", test
                try:
                    urllib.request.urlopen(self.map(test[-1]), timeout=3)
                    ok = True
                except OSError as e:
                    ok, last = False, str(e)
            if ok:
                return
            time.sleep(0.3)
        raise AssertionError(f"{name} never healthy: {last}\n{self.log(name)}")

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def prometheus_config(self) -> Path:
        """/etc/prometheus with each DNS name resolved to 127.0.0.1 (what Docker's DNS does)."""
        etc = self.tmp / "etc-prometheus"
        etc.mkdir()
        shutil.copy(PROM_DIR / "rules.yml", etc / "rules.yml")
        cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        for job in cfg["scrape_configs"]:
            sds = job.pop("dns_sd_configs")
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self.ports[sd['port']]}"
                                                  for sd in sds for _ in sd["names"]]}]
        (etc / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        return etc

    def stop(self) -> dict[str, int]:
        codes = {}
        for name, p in reversed(list(self.procs.items())):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)  # what `docker compose down` sends (via init)
            try:
                codes[name] = p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait()
        return codes


def test_compose_services_run_as_local_processes(tmp_path, backbone_dir, bundle_dir, tasks_file,
                                                 prometheus_bin):
    models = tmp_path / "models"  # a mounted model volume, in build-models' layout: kept
    shutil.copytree(backbone_dir, models / "backbone")
    shutil.copytree(bundle_dir, models / "users" / "ada")
    shutil.copytree(bundle_dir.parent / "kits", models / "kits")  # the backbone's shared edge kit
    write_prompt_file([ex.prompt for ex in load_examples(tasks_file)[:8]], models / "prompts" / "ada.txt")
    ModelSet(models, "tiny", [{"name": "ada", "about": "the test's user"}]).save()
    stack = LocalCompose(tmp_path, models)
    keygen = subprocess.run(stack.argv(SERVICES["keygen"]["command"]), capture_output=True, text=True,
                            timeout=60)
    assert keygen.returncode == 0 and (tmp_path / "keys" / "broker.key_secret").is_file(), keygen.stderr

    builder = subprocess.run(stack.argv(SERVICES["model-builder"]["command"]), capture_output=True,
                             text=True, timeout=120)
    assert builder.returncode == 0, builder.stderr  # service_completed_successfully
    assert str(models / "backbone") in builder.stdout and "user ada: bundle" in builder.stdout

    prom = None
    try:
        for name in ("broker", "cloud-worker", "edge-agent"):
            stack.start(name)
            stack.healthcheck(name)
        etc = stack.prometheus_config()
        args = [a.replace("/etc/prometheus", str(etc)).replace("=/prometheus", f"={tmp_path}/tsdb")
                for a in SERVICES["prometheus"]["command"]]
        listen = next(a for a in args if a.startswith("--web.listen-address="))
        port = int(listen.rsplit(":", 1)[1])
        prom = PrometheusServer(prometheus_bin, etc / "prometheus.yml", tmp_path / "tsdb",
                                stack.ports[port], [a for a in args if a != listen])
        prom.wait_ready()
        stack.healthcheck("prometheus")

        deadline, seen = time.monotonic() + 90, {}
        while time.monotonic() < deadline:
            seen = {
                "up": prom.query("count(up == 1)"),
                "tokens": prom.query('sum(spa_tokens_generated_total{job="edge-agent"}) > 0'),
                "finished": prom.query('sum(spa_sessions_finished_total{outcome=~"eos|length"}) > 0'),
                "workers": prom.query('spa_live_workers{job="broker"} == 1'),
                "steps": prom.query('sum(spa_backbone_step_seconds_count{job="cloud-worker"}) > 0'),
                "m": prom.query(":spa_blocking_transmissions_per_token:ratio_rate1m"),
            }
            if all(seen.values()) and int(seen["up"][0]["value"][1]) == 3:
                break
            time.sleep(1)
        assert all(seen.values()) and int(seen["up"][0]["value"][1]) == 3, (
            seen, prom.targets_up(), stack.log("edge-agent"))
        assert 0 < float(seen["m"][0]["value"][1]) < 1.5
    finally:
        if prom is not None:
            prom.stop()
        codes = stack.stop()
    assert codes["edge-agent"] == 0, stack.log("edge-agent")  # SIGTERM: a summary, exit 0
    assert "sessions=" in stack.log("edge-agent")
    for name in ("broker", "cloud-worker"):
        assert codes[name] in (0, 130), (name, codes[name], stack.log(name))


def test_dockerfile_copies_every_package_and_the_wheel_holds_them(tmp_path):
    """The image installs the project with `pip install .` from what the Dockerfile copies:
    every package must be copied, none ignored by .dockerignore, and the wheel must hold them."""
    import tomllib
    import zipfile

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = {src for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") for src in line.split()[1:-1]}
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip()}
    for top in {p.split(".")[0] for p in packages} | {"pyproject.toml", "README.md"}:
        assert top in copied, f"Dockerfile does not COPY {top}"
        assert top not in ignored, f".dockerignore hides {top}"
    context = tmp_path / "context"  # what the Dockerfile copies, and only that
    context.mkdir()
    for src in sorted(copied):
        (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(
            ROOT / src, context / src, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                          if (ROOT / src).is_dir() else {}))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path), str(context)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("spa_serving-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for p in packages:
        assert f"{p.replace('.', '/')}/__init__.py" in names, p
    for module in ("loadgen/loadtest.py", "monitoring/health.py", "monitoring/grafana/dashboard.py",
                   "cloud_worker/worker.py", "broker/broker.py"):
        assert module in names, module
