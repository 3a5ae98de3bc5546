"""Benchmarks that cannot rot (issue 21 step 7): every script in benchmarks/ runs in its
`--smoke` mode (seconds, the test session's tiny backbone and bundle through
SPA_BENCH_BACKBONE/SPA_BENCH_BUNDLE) and must exit 0 with output; shell scripts must parse
(`bash -n`). A new file in benchmarks/ must be listed here, so none is forgotten."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"

# script → who keeps its --smoke working
SMOKE = {
    "loadtest_scaling.py": "load", "wan_latency.py": "load", "delay_proxy.py": "load",
    "stack_efficiency.py": "load", "rate_sweep.py": "load", "spa_batched_speed.py": "load", "spa_gguf_to_hf.py": "load",
    "gpu_engine.py": "worker", "batching.py": "worker", "bare_hop.py": "worker", "worker_io.py": "worker",
    "broker_overhead.py": "broker",
    "spa_xsum.py": "method", "spa_select.py": "method", "first_token_eos.py": "method",
    "persona_quality.py": "method", "seed_table.py": "method",
    "blend_quality.py": "blend", "blend_segments.py": "blend", "blend_time.py": "blend",
    "edge_devices.py": "device",
    "wire_bytes.py": "wire",
}
SHELL = ("gpu_stack.sh", "gpu_loadtest.sh", "spa_gpu.sh", "xsum_results.sh")
LIBRARIES = ("common.py", "stage_probes.py")  # imported by the scripts
TIMEOUT_S = 420  # a smoke run takes seconds; this is for a 2-core machine under load


def test_every_benchmark_is_listed():
    present = {p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh")}
    listed = set(SMOKE) | set(SHELL) | set(LIBRARIES)
    assert present <= listed, f"add to tests/test_benchmarks.py: {sorted(present - listed)}"


def test_every_benchmark_has_a_smoke_mode():
    """A listed script without --smoke would only be skipped below: that is how benchmarks rot."""
    missing = [s for s in sorted(SMOKE) if (BENCH / s).exists() and "--smoke" not in (BENCH / s).read_text()]
    assert not missing, f"give these a --smoke mode: {missing}"


@pytest.mark.parametrize("script", SHELL)
def test_shell_scripts_parse(script):
    res = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def bench_env(backbone_dir, bundle_dir) -> dict:
    return {**os.environ, "SPA_BENCH_BACKBONE": str(backbone_dir), "SPA_BENCH_BUNDLE": str(bundle_dir),
            "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


PARALLEL = 2  # smokes run single-threaded (OMP_NUM_THREADS=1): two at a time on CI's 2 cores


def _runnable(script: str) -> str | None:
    """Why `script` cannot run its smoke yet, or None."""
    path = BENCH / script
    if not path.exists():
        return f"{script} does not exist yet ({SMOKE[script]} engineer)"
    if "--smoke" not in path.read_text():
        return f"{script} has no --smoke mode yet ({SMOKE[script]} engineer)"
    return None


@pytest.fixture(scope="module")
def smoke_runs(bench_env, tmp_path_factory) -> dict[str, subprocess.CompletedProcess | str]:
    """Every runnable smoke, PARALLEL at a time; script → its result."""
    from concurrent.futures import ThreadPoolExecutor

    def run(script: str) -> subprocess.CompletedProcess | str:
        cwd = tmp_path_factory.mktemp(script.replace(".", "_"))
        try:
            return subprocess.run([sys.executable, str(BENCH / script), "--smoke"], cwd=cwd, env=bench_env,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            return f"timed out after {TIMEOUT_S} s; stdout: {str(e.stdout)[-2000:]}"

    todo = [s for s in sorted(SMOKE) if _runnable(s) is None]
    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip(todo, pool.map(run, todo), strict=True))


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_smoke(script, smoke_runs):
    why = _runnable(script)
    if why:
        pytest.skip(why)
    res = smoke_runs[script]
    assert not isinstance(res, str), f"{script} --smoke {res}"
    assert res.returncode == 0, f"{script} --smoke failed:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{script} --smoke printed nothing"


def test_seed_table_pools_seeds_per_record():
    """seed_table's 'seed mean per record': one seed gives that seed's paired bootstrap; two
    seeds average each record's difference first (the records are not counted twice)."""
    import importlib.util

    from lab.evaluate import paired_bootstrap

    spec = importlib.util.spec_from_file_location("seed_table", ROOT / "benchmarks" / "seed_table.py")
    st = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(st)
    a, b, c = [1.0, 3.0, 5.0, 7.0], [0.0, 4.0, 1.0, 2.0], [2.0, 2.0, 2.0, 2.0]
    one = {"scores": {"spa": a, "full": b}}
    assert st.seed_mean_paired([one], "spa − full") == paired_bootstrap(a, b)
    two = {"scores": {"spa": c, "full": b}}
    mean = [(x + y) / 2 for x, y in zip(a, c, strict=True)]
    assert st.seed_mean_paired([one, two], "spa − 0.5 × full") == paired_bootstrap(mean, [x / 2 for x in b])
    assert st.seed_mean_paired([one], "spa − lst") is None
