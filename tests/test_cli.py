"""Bad input gets a clear error and a non-zero exit, never a traceback; eval end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def spa(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spa", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def assert_clean_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert needle in res.stderr, res.stderr


def test_missing_data_file(backbone_dir, tmp_path):
    res = spa("train", "--backbone", str(backbone_dir), "--data", str(tmp_path / "nope.jsonl"),
              "--out", str(tmp_path / "b"))
    assert_clean_error(res, "does not exist")


def test_malformed_jsonl_names_line(backbone_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": oops\n')
    res = spa("train", "--backbone", str(backbone_dir), "--data", str(data), "--out", str(tmp_path / "b"))
    assert_clean_error(res, "bad.jsonl:2: malformed JSON")


def test_record_missing_field(backbone_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"document": "some text"}\n')
    res = spa("train", "--backbone", str(backbone_dir), "--data", str(data), "--out", str(tmp_path / "b"))
    assert_clean_error(res, "bad.jsonl:1: record is missing field 'summary'")


def test_missing_backbone(tmp_path, tasks_file):
    res = spa("train", "--backbone", str(tmp_path / "nobackbone"), "--data", str(tasks_file),
              "--out", str(tmp_path / "b"))
    assert_clean_error(res, "does not exist")


@pytest.mark.parametrize("args,needle", [
    (["--prompt", "   "], "empty prompt"),
    (["--prompt", "the cat", "--max-new-tokens", "0"], "max_new_tokens must be >= 1"),
])
def test_generate_bad_request(backbone_dir, args, needle):
    assert_clean_error(spa("generate", "--backbone", str(backbone_dir), "--mode", "base", *args), needle)


def test_bundle_for_another_backbone(workdir, corpus_file, bundle_dir, tmp_path):
    other = tmp_path / "other"
    res = spa("pretrain", "--corpus", str(corpus_file), "--out", str(other), "--steps", "2", "--seed", "3",
              "--quiet")
    assert res.returncode == 0, res.stderr
    res = spa("generate", "--backbone", str(other), "--bundle", str(bundle_dir), "--prompt", "the cat")
    assert_clean_error(res, "was built for backbone")


def test_eval_end_to_end(backbone_dir, bundle_dir, tasks_file, tmp_path):
    out = tmp_path / "eval.json"
    res = spa("eval", "--backbone", str(backbone_dir), "--bundle", str(bundle_dir), "--data",
              str(tasks_file), "--split", "140:", "--limit", "6", "--sweep-limit", "3",
              "--max-new-tokens", "12", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "| spa |" in res.stdout and "| base |" in res.stdout
    report = json.loads(out.read_text())
    rows = {r["mode"]: r for r in report["results"]}
    assert set(rows) == {"base", "lst", "full", "choice", "spa"}
    assert rows["base"]["m"] == 0 and rows["lst"]["m"] == 1 and rows["full"]["m"] == 1
    assert out.with_suffix(".png").stat().st_size > 1000
    assert report["sweep"]


@pytest.mark.parametrize("args,needle", [
    (["--concurrency", "0"], "concurrency=0 outside its sane range"),
    (["--modes", "spa,nope"], "nope"),
    (["--sessions", "-1"], "num_prompts=-1 outside its sane range"),
])
def test_loadtest_bad_arguments(bundle_dir, args, needle):
    assert_clean_error(spa("loadtest", "--bundle", str(bundle_dir), *args), needle)


def test_loadtest_empty_prompt_file(bundle_dir, tmp_path):
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    res = spa("loadtest", "--bundle", str(bundle_dir), "--prompts", str(empty))
    assert_clean_error(res, "prompts.txt: no prompts in the file")


def test_loadtest_counts_and_retries_refusals(bundle_dir, tmp_path):
    """No worker serves the bundle's backbone: NO_WORKER is reported with its detail, retried
    until the duration ends, and the run still ends cleanly with a summary."""
    from spa.stack import free_port

    port = free_port()
    broker = subprocess.Popen([sys.executable, "-m", "spa", "broker", "--agents",
                               f"tcp://127.0.0.1:{port}", "--workers", f"tcp://127.0.0.1:{free_port()}",
                               "--plaintext"])
    try:
        res = spa("loadtest", "--broker", f"tcp://127.0.0.1:{port}", "--bundle", str(bundle_dir),
                  "--concurrency", "2", "--duration", "3", "--json", "-", "--report", "0", "--plaintext")
    finally:
        broker.terminate()
        broker.wait(10)
    assert res.returncode == 0, res.stderr
    assert "NO_WORKER: no live worker serves backbone" in res.stderr and "(retrying)" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["errors"]["NO_WORKER"] >= 2 and summary["completed"] == 0


def test_health(tmp_path):
    from spa.stack import free_port

    port = free_port()
    assert_clean_error(spa("health", f"http://127.0.0.1:{port}/metrics"), "no answer")
    assert_clean_error(spa("health", "http://x/metrics", "--require", "spa_live_workers=>1"),
                       "expected NAME>=VALUE")
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    reg = CollectorRegistry()
    Gauge("spa_live_workers", "w", registry=reg).set(1)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        ok = spa("health", url, "--require", "spa_live_workers>=1")
        assert ok.returncode == 0 and "spa_live_workers=1" in ok.stdout
        assert_clean_error(spa("health", url, "--require", "spa_live_workers>=2"), "is 1, needs >= 2")
        assert_clean_error(spa("health", url, "--require", "spa_nothing>=0"), "no sample named")
    finally:
        server.shutdown()


def test_health_waits_for_a_late_start():
    """--wait retries until the endpoint answers (a worker still loading, a first compose build)."""
    import threading

    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from spa.stack import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    t0 = time.monotonic()
    assert_clean_error(spa("health", url, "--wait", "2"), "no answer")
    assert time.monotonic() - t0 >= 1.5  # it did retry
    assert_clean_error(spa("health", url, "--wait", "-1"), "--wait must be >= 0")
    reg = CollectorRegistry()
    Gauge("spa_live_workers", "w", registry=reg).set(1)
    servers = []
    timer = threading.Timer(3.0, lambda: servers.append(start_http_server(port, "127.0.0.1", reg)))
    timer.start()
    try:
        ok = spa("health", url, "--wait", "30", "--require", "spa_live_workers>=1")
        assert ok.returncode == 0 and "healthy" in ok.stdout, ok.stderr
    finally:
        timer.join()
        for server, _ in servers:
            server.shutdown()
