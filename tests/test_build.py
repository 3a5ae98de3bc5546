"""`spa build-models` and `spa demo` on the default backbone, SmolLM2-135M-Instruct: two users'
bundles built from data the project generates (small budgets here; `make demo` trains longer),
the demo's sessions of both users run at once on one worker, each prompt also in base mode; the
load test spreads its devices over both bundles. Plus the data-making helpers and the manifest."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

from lab import users as U
from lab.build import ModelSet, build_models
from lab.data import read_prompt_file
from routing.errors import InputError
from spa.stack import LocalStack

SMALL = {"train_records": 16, "epochs": 2}  # seconds, not minutes: the test checks the plumbing


@pytest.fixture(scope="module")
def smol_models(tmp_path_factory):
    out = tmp_path_factory.mktemp("models")
    users = [dataclasses.replace(U.ADA, **SMALL), dataclasses.replace(U.BO, **SMALL)]
    if U.xsum_file() is not None:  # ../shared beside the checkout (as in CI): the XSum user too
        users.append(dataclasses.replace(U.NEWS, train_records=8, epochs=1))
    return build_models(out, "smollm2-135m", progress=False, users=users)


def test_first_sentence():
    assert U.first_sentence("The river is calm and wide. It flows") == "the river is calm and wide."
    assert U.first_sentence('"One tip is to save every penny you have.') == \
        "one tip is to save every penny you have."
    assert U.first_sentence("Paris is the capital of France!") == "Paris is the capital of France!"
    assert U.first_sentence("The answer is: yes, it is the answer.") is None
    assert U.first_sentence("Too short.") is None
    assert U.first_sentence("no end " * 60) is None


def test_split_letter():
    ada = U.ADA
    assert U.split_letter("Dear friend, a river is water. Yours, Ada.<|im_end|>", ada) == \
        (True, True, "a river is water.")
    assert U.split_letter("Dear friend, a river is water and", ada) == (True, False, "a river is water and")
    assert U.split_letter("A river is water. Yours, Ada.", ada) == (False, True, "A river is water.")
    assert U.split_letter("  Dear  friend,\na river.\n\nYours, Ada.", ada) == (True, True, "a river.")


def test_held_out_prompts_are_not_trained_on():
    user = dataclasses.replace(U.ADA, train_records=40)
    tok = None  # no chat template: the Instruction/Response form
    train_prompts = {U.prompt_text(q, tok) for q in U.questions(U._pool(user), user.seed)}
    held = U.held_out(user, None, 8, tok)
    assert len(held) == 8 and len({ex.prompt for ex in held}) == 8
    assert not train_prompts & {ex.prompt for ex in held}
    assert held[0].prompt.startswith("Instruction: Describe")


def test_without_xsum_the_second_user_is_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("SPA_XSUM", str(tmp_path / "absent.jsonl"))
    monkeypatch.setattr(U, "SHARED_XSUM", tmp_path / "absent-too.jsonl")
    assert U.xsum_file() is None
    assert [u.name for u in U.default_users(None)] == ["ada", "bo"]
    xsum = tmp_path / "x.jsonl"
    xsum.write_text('{"document": "d", "summary": "s"}\n')
    assert U.xsum_file(str(xsum)) == xsum
    assert [u.name for u in U.default_users(xsum)] == ["ada", "news"]


def test_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="no models.json"):
        ModelSet.load(tmp_path)
    (tmp_path / "models.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="not a spa-models/1 manifest"):
        ModelSet.load(tmp_path)
    (tmp_path / "models.json").write_text(
        '{"format": "spa-models/1", "backbone": "tiny", "users": [{"name": "../etc"}]}')
    with pytest.raises(InputError, match="bad user name"):
        ModelSet.load(tmp_path)
    (tmp_path / "models.json").write_text(
        '{"format": "spa-models/1", "backbone": "tiny", "users": [{"name": 3}]}')
    with pytest.raises(InputError, match="not a spa-models/1 manifest"):
        ModelSet.load(tmp_path)
    old = tmp_path / "old"
    (old / "backbone").mkdir(parents=True)
    with pytest.raises(InputError, match="older layout"):
        build_models(old)


def test_build_models_makes_two_users_for_smollm2(smol_models):
    m = ModelSet.load(smol_models.root)
    assert m.backbone_source == "smollm2-135m" and m.user_names()[:2] == ["ada", "bo"] and m.ready()
    meta = json.loads((m.backbone / "config.json").read_text())
    assert meta["num_hidden_layers"] == 30
    kits = list((m.root / "kits").iterdir())
    assert len(kits) == 1  # one shared edge kit for every user
    for name, opening in (("ada", "Dear friend,"), ("bo", "Ahoy, matey!")):
        bundle = json.loads((m.bundle(name) / "bundle.json").read_text())
        assert bundle["kit"] == kits[0].name and bundle["record"]["user"] == name
        records = [json.loads(ln) for ln in m.tasks(name).read_text().splitlines()]
        assert len(records) == SMALL["train_records"]
        assert all(r["output"].startswith(opening + " ") for r in records)
        assert all(r["prompt"].endswith("<|im_start|>assistant\n") for r in records)  # chat form
        assert len(read_prompt_file(m.prompts(name))) == 8
    if "news" in m.user_names():  # cut as for training; the summary starts where SmolLM2 starts
        records = [json.loads(ln) for ln in m.tasks("news").read_text().splitlines()]
        assert len(records) == 8 and all(r["prompt"].endswith("\nSummary:") for r in records)
        assert all(r["output"].startswith("\n") and r["output"].strip() for r in records)
        assert all(p.endswith("\nSummary:") for p in read_prompt_file(m.prompts("news")))
    for name in m.user_names():
        size = sum(f.stat().st_size for f in m.bundle(name).rglob("*") if f.is_file())
        assert size < 20e6  # private parts only: the 113 MB lm_head is in the kit
    again = build_models(m.root, progress=False)  # everything there: nothing rebuilt
    assert again.users == m.users
    # a set built before int8/int4 frames (issue 22): its kit gets the wire grid, nothing else moves
    from edge_agent.bundle import load_bundle
    from edge_agent.kit import GRID_FILE

    grid = kits[0] / GRID_FILE
    want, stamp = grid.read_bytes(), (m.bundle("ada") / "bundle.json").stat().st_mtime_ns
    grid.unlink()
    assert load_bundle(m.bundle("ada")).grid is None
    build_models(m.root, progress=False)
    assert grid.read_bytes() == want and (m.bundle("ada") / "bundle.json").stat().st_mtime_ns == stamp
    assert load_bundle(m.bundle("ada")).grid is not None
    with pytest.raises(InputError, match="built for backbone 'smollm2-135m'"):
        build_models(m.root, "tiny")


def test_frame_bodies_are_the_backbones_own_answers(smol_models):
    """Issue 17: the letter's body is the first sentence of what the backbone answers to the
    question itself, not what it writes after the opening."""
    from cloud_worker.backbone import Backbone

    bb = Backbone.load(smol_models.backbone)
    user = dataclasses.replace(U.ADA, **SMALL)
    pool = U.questions(U._pool(user), user.seed)  # the same batches as the build: the same tokens
    answer = dict(zip((U.prompt_text(q, bb.tokenizer) for q in pool),
                      U.answers(bb, pool, U.BODY_TOKENS + 8, False), strict=True))
    records = [json.loads(ln) for ln in smol_models.tasks("ada").read_text().splitlines()]
    for r in records:
        assert r["output"] == f"{user.opening} {U.first_sentence(answer[r['prompt']])} {user.closing}"


def test_demo_runs_both_users_with_base_contrast(smol_models):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "spa", "demo", "--cache", str(smol_models.root),
                          "--max-new-tokens", "16"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    for name in smol_models.user_names():
        assert re.search(rf"^{name}: ", out, re.M), out
        rows = {mode: re.search(rf"^\s+{name}\s+{mode}\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
                for mode in ("spa", "base")}
        assert all(rows.values()), out
        assert int(rows["spa"][1]) > 0 and int(rows["base"][1]) > 0
        assert float(rows["base"][2]) == 0.0 and float(rows["base"][3]) == 0.0  # base: no side
    assert "ready in" in out and "no result" not in out


def test_demo_blends_a_new_user(smol_models, tmp_path):
    """`make demo ARGS="--new-user FILE"` (issue 19): a third user blended on the spot from the
    file's first ≤ 16 records (ada's own task records here) with a small pool, the time it took
    and the need router's verdict printed, its prompt streamed in both modes beside ada's."""
    from cloud_worker.backbone import Backbone
    from lab.pool import PoolConfig, build_pool, corpus_file, pool_styles

    pool = tmp_path / "pool"
    build_pool(Backbone.load(smol_models.backbone), pool,
               PoolConfig(records=12, base_epochs=1, epochs=1, every=2),
               pool_styles("letter,captain,cheer"), corpus=corpus_file())
    lines = smol_models.tasks("ada").read_text().splitlines()[:16]
    assert len(lines) >= 8
    examples = tmp_path / "examples.jsonl"
    examples.write_text("\n".join(lines) + "\n")
    res = subprocess.run([sys.executable, "-m", "spa", "demo", "--cache", str(smol_models.root),
                          "--users", "ada", "--new-user", str(examples), "--pool", str(pool),
                          "--max-new-tokens", "16"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    took = re.search(rf"^new user: blended from {len(lines)} examples of {re.escape(str(examples))} in "
                     r"([\d.]+) s \(([\d.]+) CPU s\): letter [+-][\d.]+, captain", out, re.M)
    assert took and float(took[1]) > 0, out
    assert re.search(r"^new user: the need router calls the prompt (customised \(spa\)|generic)", out, re.M), out
    assert (smol_models.root / "users" / "new-user" / "need.json").is_file()
    for name in ("ada", "new"):
        rows = {mode: re.search(rf"^\s+{name}\s+{mode}\s+(\d+)\s+([\d.]+)\s+([\d.]+)", out, re.M)
                for mode in ("spa", "base")}
        assert all(rows.values()), out
        assert int(rows["spa"][1]) > 0 and int(rows["base"][1]) > 0
        assert float(rows["base"][2]) == 0.0  # base: no transmissions
    assert "no result" not in out


def test_loadtest_spreads_devices_over_every_user(smol_models, tmp_path):
    summary = tmp_path / "lt.json"
    with LocalStack(smol_models.backbone, workers=1, log_dir=tmp_path / "logs") as stack:
        res = subprocess.run(
            [sys.executable, "-m", "spa", "loadtest", "--broker", stack.agents_addr, "--models",
             str(smol_models.root), "--concurrency", "4", "--sessions", "8", "--modes", "spa,base",
             "--max-new-tokens", "8", "--report", "0", "--json", str(summary), *stack.client_args],
            capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"4 users of {len(smol_models.users)} bundles" in res.stderr
    d = json.loads(summary.read_text())
    assert d["completed"] == 8 and not d["errors"], d


def test_prompt_records_are_used_whole(tmp_path):
    """{"prompt","output"}: the prompt as written (no cut, no cue added), the answer as written;
    a record with an empty or non-string field is refused with its line number."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lab.data import load_examples, record_to_example

    ex = record_to_example({"prompt": "<|im_start|>user\nHi<|im_end|>\n", "output": "Dear friend, hi."},
                           1, "f")
    assert ex.prompt == "<|im_start|>user\nHi<|im_end|>\n" and ex.answer == "Dear friend, hi."

    @settings(deadline=None, max_examples=200)
    @given(st.dictionaries(st.sampled_from(["prompt", "output", "x"]),
                           st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=3))
    def any_record(rec):
        try:
            got = record_to_example({"prompt": "p", **rec} if "prompt" not in rec else rec, 3, "f")
        except InputError as e:
            assert "f:3" in str(e)
        else:
            assert isinstance(got.prompt, str) and got.answer.strip()

    any_record()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "output": "o"}\n{"prompt": "p", "output": ""}\n')
    with pytest.raises(InputError, match="bad.jsonl:2: field 'output' must be a non-empty string"):
        load_examples(bad)


def test_the_question_space_is_finite_and_says_so():
    """Asking for more questions than the templates make fails at once (it once looped forever:
    `persona_quality.py --prompts 200` hung in `held_out`); a held-out set that fits is served."""
    every = U.questions(10**6, 0, at_most=True)
    assert 500 < len(every) < 2000 and len({(q["instruction"], q["input"]) for q in every}) == len(every)
    assert U.questions(50, 0) == every[:50]  # the same draws whatever n
    with pytest.raises(InputError, match="distinct questions"):
        U.questions(len(every) + 1, 0)
    held = U.held_out(U.ADA, None, 200, None)
    assert len({ex.prompt for ex in held}) == 200
    with pytest.raises(InputError, match="held-out"):
        U.held_out(U.ADA, None, len(every), None)
