"""The frozen backbone LM `B` of DESIGN.md §2.

For positions t it yields the embedding h0_t, the residual states after each layer, the final
normed state z_t and the logits lm_head(z_t). Any Hugging Face causal LM whose decoder returns
`hidden_states` (Llama-style first), from a local directory or a hub id.

Layer indexing used everywhere in this project: `hidden[i]` for i in 0..L, where hidden[0] is the
embedding, hidden[i] (0 < i < L) the residual after layer i, and hidden[L] is z (the final
normed state; transformers returns it as the last hidden state, in place of the raw residual).

`Backbone.load` takes a directory, a hub id, a GGUF file or a packaged model's short name
(`smollm2-135m`, the default backbone); GGUF files are dequantized once into a cached directory
(cloud_worker/packaged.py), so every route to one model gives one fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor

from routing.errors import InputError

# Config keys that do not change what the network computes.
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "_attn_implementation", "_attn_implementation_autoset", "_commit_hash", "output_hidden_states",
    "_model_name_or_path", "quantization_config",
}


@dataclass
class BackboneOutput:
    logits: Tensor  # (B, T', V) at the requested positions (T' = T unless logits_last_only)
    z: Tensor  # (B, T, d) final normed state
    hidden: tuple[Tensor, ...]  # L+1 tensors of (B, T, d): h0, h1 … h_{L-1}, z
    past_key_values: object | None  # a transformers Cache when use_cache


def resolve_dtype(name: str | None, device: str) -> torch.dtype:
    if name in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise InputError(f"unknown dtype {name!r}: expected one of {sorted(table)}")
    return table[name]


class Backbone:
    """A frozen causal LM in eval mode, with the per-layer states the side network needs."""

    def __init__(self, model: torch.nn.Module, tokenizer, source: str = "<memory>") -> None:
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.decoder = getattr(model, model.base_model_prefix)
        self.lm_head = model.get_output_embeddings()
        cfg = model.config
        self.n_layers: int = cfg.num_hidden_layers
        self.d_model: int = cfg.hidden_size
        self.vocab_size: int = cfg.vocab_size

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, source: str | Path, device: str = "cpu", dtype: str | None = None) -> Backbone:
        """Load from a local directory, a hub id, a GGUF file or a packaged model's short name
        (e.g. `smollm2-135m`); frozen, eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cloud_worker.packaged import resolve

        src = resolve(source)
        if Path(src).expanduser().exists():
            src = str(Path(src).expanduser())
            if not (Path(src) / "config.json").is_file():
                raise InputError(f"backbone directory {src} has no config.json")
        elif src.startswith((".", "/", "~")):
            raise InputError(f"backbone directory {src} does not exist")
        try:
            tokenizer = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=resolve_dtype(dtype, device))
        except OSError as exc:  # missing files, no network for a hub id, …
            raise InputError(f"cannot load backbone {src!r}: {exc}") from None
        return cls(model.to(device), tokenizer, src)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def eos_token_id(self) -> int | None:
        eos = self.model.config.eos_token_id
        if eos is None and self.tokenizer is not None:
            eos = self.tokenizer.eos_token_id
        return eos[0] if isinstance(eos, list) else eos

    # ---------------------------------------------------------------- identity
    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the config, tokenizer vocabulary and weights (hashed as bf16, so a model
        loaded in fp32 or bf16 from the same files has one fingerprint)."""
        h = hashlib.sha256()
        cfg = {k: v for k, v in self.model.config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        if self.tokenizer is not None:
            vocab = sorted(self.tokenizer.get_vocab().items())
            h.update(json.dumps(vocab).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            t = tensor.detach()
            if t.is_floating_point():
                t = t.to(torch.bfloat16).view(torch.int16)
            h.update(t.cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    # ---------------------------------------------------------------- compute
    @torch.inference_mode()
    def forward(
        self,
        input_ids: Tensor,  # (B, T)
        attention_mask: Tensor | None = None,  # (B, T_past + T), 1 = real token
        position_ids: Tensor | None = None,  # (B, T)
        past_key_values=None,
        use_cache: bool = False,
        logits_last_only: bool = False,
    ) -> BackboneOutput:
        out = self.decoder(
            input_ids=input_ids.to(self.device),
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            position_ids=None if position_ids is None else position_ids.to(self.device),
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=True,
        )
        z = out.last_hidden_state  # (B, T, d)
        hidden = tuple(out.hidden_states[:-1]) + (z,)
        if len(hidden) != self.n_layers + 1:
            raise RuntimeError(
                f"backbone returned {len(hidden)} hidden states, expected {self.n_layers + 1}"
            )
        logits = self.lm_head(z[:, -1:] if logits_last_only else z)  # (B, T', V)
        return BackboneOutput(logits, z, hidden, out.past_key_values if use_cache else None)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]
