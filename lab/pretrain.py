"""`spa pretrain`: a BPE tokenizer and a small Llama trained from scratch on a text file.

Saves a normal Hugging Face directory (config.json, model.safetensors, tokenizer files) that
`AutoModelForCausalLM.from_pretrained` loads. `tiny` trains on a CPU in a few minutes; `small`
is meant for a GPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from routing.errors import InputError, read_text

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    vocab: int
    d: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    seq: int
    batch: int
    steps: int
    lr: float


PRESETS = {
    "tiny": Preset(vocab=2048, d=128, layers=4, heads=4, kv_heads=2, ffn=384, seq=128, batch=16,
                   steps=600, lr=3e-3),
    "small": Preset(vocab=8192, d=512, layers=8, heads=8, kv_heads=4, ffn=1536, seq=512, batch=32,
                    steps=3000, lr=1e-3),
}


def train_tokenizer(texts: list[str], vocab: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=None
    )


def read_corpus(path: str | Path) -> list[str]:
    text = read_text(path, "corpus file")
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    if sum(len(p) for p in paras) < 1000:
        raise InputError(f"corpus {path} is too small ({len(text)} characters; need ≥ 1000)")
    return paras


def pretrain(
    corpus: str | Path,
    out: str | Path,
    preset: str = "tiny",
    steps: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    from tqdm import tqdm
    from transformers import LlamaConfig, LlamaForCausalLM

    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: expected one of {sorted(PRESETS)}")
    p = PRESETS[preset]
    steps = p.steps if steps is None else steps
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    torch.manual_seed(seed)
    paras = read_corpus(corpus)
    tokenizer = train_tokenizer(paras, p.vocab)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for enc in tokenizer(paras, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    data = torch.tensor(ids)
    n_chunks = (len(data) - 1) // p.seq
    if n_chunks < 2:
        raise InputError(f"corpus {corpus} gives {len(data)} tokens: too few for seq {p.seq}")
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=p.d, intermediate_size=p.ffn,
        num_hidden_layers=p.layers, num_attention_heads=p.heads, num_key_value_heads=p.kv_heads,
        max_position_embeddings=2048, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=False, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=0.1, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    gen = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc=f"pretrain {preset}", disable=not progress)
    t0, loss_val = time.time(), float("nan")
    for step in bar:
        starts = torch.randint(0, len(data) - p.seq - 1, (p.batch,), generator=gen)
        x = torch.stack([data[s : s + p.seq + 1] for s in starts.tolist()]).to(device)  # (B, T+1)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
            loss = model(input_ids=x, labels=x).loss  # the model shifts labels itself
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_val = loss.item()
        bar.set_postfix(loss=f"{loss_val:.3f}")
        if not progress and (step % max(1, steps // 10) == 0 or step == steps - 1):
            print(f"pretrain step {step}/{steps} loss {loss_val:.3f}", flush=True)
    model.eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    print(f"pretrained {preset}: {sum(t.numel() for t in model.parameters()) / 1e6:.2f}M params, "
          f"{len(data)} corpus tokens, {steps} steps, final loss {loss_val:.3f}, "
          f"{time.time() - t0:.0f}s -> {out}", flush=True)
    return out
