"""How often a bundle's side network ends a generation before it starts: the share of held-out
XSum prompts whose first token is EOS in `full` and `spa` mode (RESULTS.md §6).

    python3 benchmarks/first_token_eos.py --backbone DIR --data xsum_1000.jsonl --split 900:940 BUNDLE…
    python3 benchmarks/first_token_eos.py --smoke   # seconds: the tiny models, 4 built-in prompts
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cloud_worker.backbone import Backbone  # noqa: E402
from edge_agent.bundle import load_bundle  # noqa: E402
from lab.batched import BatchConfig, BatchedGenerator  # noqa: E402
from lab.data import load_examples, split  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone")
    p.add_argument("--data")
    p.add_argument("--split", default="900:940")
    p.add_argument("--max-prompt-tokens", type=int, default=160)
    p.add_argument("--smoke", action="store_true", help="the benchmarks' tiny models and 4 built-in prompts")
    p.add_argument("bundles", nargs="*")
    args = p.parse_args()
    if args.smoke:
        from common import models
        from common import prompts as texts

        backbone, bundle = models()
        bb, args.bundles = Backbone.load(str(backbone)), [str(bundle)]
        prompts = [bb.encode(t)[-args.max_prompt_tokens:] for t in texts(4)]
    else:
        if not (args.backbone and args.data and args.bundles):
            p.error("give --backbone, --data and at least one BUNDLE (or --smoke)")
        bb = Backbone.load(args.backbone)
        exs = split(load_examples(args.data), args.split)
        prompts = [ex.prompt_ids(bb.tokenizer, args.max_prompt_tokens) for ex in exs]
    for path in args.bundles:
        gen = BatchedGenerator(bb, load_bundle(path), BatchConfig(batch_size=len(prompts), progress=False))
        for mode in ("full", "spa"):
            out = gen.generate(prompts, 3, mode)
            eos = sum(g.tokens[0] == bb.eos_token_id for g in out)
            print(f"{path} {mode}: first token EOS on {eos} of {len(out)} prompts")


if __name__ == "__main__":
    main()
