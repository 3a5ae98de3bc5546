"""The Llama-family decoder (Llama, SmolLM2, Qwen2, Mistral) written for the paged engine.

Touvron et al. 2023 (Llama); the weights are the Hugging Face model's own tensors, not copies:
q/k/v and gate/up are fused into one matrix each and the HF parameters become views into it, so
the HF model (fingerprint, fallback) and this forward share memory. RoPE's cos/sin come from the
HF model's rotary module (rope scaling included), RMSNorm is computed as HF does, so in fp32 the
tokens equal the HF model's.

One forward takes the step's tokens flat (N,) — decodes and prefill chunks of many sessions —
writes their K/V into the paged cache and returns, at each row's last token, z (B, d) and the
L+1 per-layer states (hidden[0] = embedding, hidden[i] = residual after layer i, hidden[L] = z).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloud_worker.attention import AttnBatch, attention, store_kv

SUPPORTED = {"llama", "mistral", "qwen2"}


def supports(model: nn.Module, max_context: int) -> str | None:
    """None when the paged forward can run this HF model, else the reason it cannot."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        return f"model_type {cfg.model_type!r} is not one of {sorted(SUPPORTED)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", True) and window < max_context:
        return f"sliding window {window} < context {max_context}"
    return None


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """HF LlamaRMSNorm: in fp32, cast back, then scale."""
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _fuse(mods: list[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """Concatenate the linears' weights (and biases); the HF parameters become views of it."""
    w = torch.cat([m.weight.data for m in mods])
    bias = None
    if any(m.bias is not None for m in mods):
        bias = torch.cat([m.bias.data if m.bias is not None else w.new_zeros(m.out_features) for m in mods])
    i = 0
    for m in mods:
        n = m.out_features
        m.weight.data = w[i : i + n]
        if m.bias is not None:
            m.bias.data = bias[i : i + n]
        i += n
    return w, bias


class Layer:
    def __init__(self, hf_layer: nn.Module, eps: float) -> None:
        at, mlp = hf_layer.self_attn, hf_layer.mlp
        self.eps = eps
        self.w_in = hf_layer.input_layernorm.weight
        self.w_post = hf_layer.post_attention_layernorm.weight
        self.qkv, self.qkv_b = _fuse([at.q_proj, at.k_proj, at.v_proj])
        self.o, self.o_b = at.o_proj.weight, at.o_proj.bias
        self.gate_up, self.gate_up_b = _fuse([mlp.gate_proj, mlp.up_proj])
        self.down, self.down_b = mlp.down_proj.weight, mlp.down_proj.bias


class LlamaModel:
    """The forward over a paged cache. `kv` is set by the model runner: (L, 2, slots, H_kv, hd)."""

    def __init__(self, hf_model: nn.Module, max_positions: int) -> None:
        cfg = hf_model.config
        dec = hf_model.model
        self.n_layers = cfg.num_hidden_layers
        self.d = cfg.hidden_size
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or self.d // self.n_heads
        self.vocab = cfg.vocab_size
        self.eps = cfg.rms_norm_eps
        self.scale = self.head_dim**-0.5
        self.embed = dec.embed_tokens.weight  # (V, d)
        self.norm = dec.norm.weight
        self.lm_head = hf_model.get_output_embeddings().weight  # (V, d), tied or not
        self.layers = [Layer(la, self.eps) for la in dec.layers]
        w = self.embed
        with torch.inference_mode():
            pos = torch.arange(max_positions, device=w.device)[None]
            cos, sin = dec.rotary_emb(w.new_zeros(1, 1, self.head_dim), pos)  # (1, T, hd)
        self.cos, self.sin = cos[0].to(w.dtype).contiguous(), sin[0].to(w.dtype).contiguous()
        self.kv: Tensor | None = None
        self.fused = False  # Triton kernels (fused.py): set by the model runner on cuda

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def kv_bytes_per_token(self) -> int:
        return 2 * self.n_layers * self.n_kv * self.head_dim * self.embed.element_size()

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (N, heads, hd) rotated by position: x·cos + rotate_half(x)·sin (HF's formula)."""
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rot * sin

    @torch.inference_mode()
    def forward(self, ids: Tensor, positions: Tensor, a: AttnBatch, last: Tensor | None,
                hidden: Tensor) -> Tensor:
        """ids, positions (N,); last (B,) index of each row's last token (None: every token is a
        row's last); hidden (L+1, B, d) is filled in place. Returns z (B, d)."""
        if self.fused:
            return self._forward_fused(ids, positions, a, last, hidden)
        H, Hkv, hd = self.n_heads, self.n_kv, self.head_dim
        N = ids.shape[0]
        x = F.embedding(ids, self.embed)  # (N, d)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (N, 1, hd)
        hidden[0].copy_(x if last is None else x[last])
        for i, la in enumerate(self.layers):
            h = rms_norm(x, la.w_in, self.eps)
            qkv = F.linear(h, la.qkv, la.qkv_b).view(N, H + 2 * Hkv, hd)
            qk = self._rope(qkv[:, : H + Hkv], cos, sin)
            q, k, v = qk[:, :H], qk[:, H:], qkv[:, H + Hkv :]
            kc, vc = self.kv[i, 0], self.kv[i, 1]  # (slots, H_kv, hd)
            store_kv(kc, vc, k, v, a.slots)
            o = attention(q, kc, vc, a, self.scale)  # (N, H, hd)
            x = x + F.linear(o.reshape(N, H * hd), la.o, la.o_b)
            h = rms_norm(x, la.w_post, self.eps)
            g, u = F.linear(h, la.gate_up, la.gate_up_b).chunk(2, dim=-1)
            x = x + F.linear(F.silu(g) * u, la.down, la.down_b)
            if i < self.n_layers - 1:
                hidden[i + 1].copy_(x if last is None else x[last])
        z = rms_norm(x if last is None else x[last], self.norm, self.eps)  # (B, d)
        hidden[self.n_layers].copy_(z)
        return z

    def _forward_fused(self, ids: Tensor, positions: Tensor, a: AttnBatch, last: Tensor | None,
                       hidden: Tensor) -> Tensor:
        """The same computation with fused kernels. With last=None (decode) the residual stream
        lives in `hidden` itself: layer i reads hidden[i] and writes hidden[i+1] (hidden[L] is
        scratch until z lands there), no copies."""
        from cloud_worker import fused

        H, Hkv, hd, L = self.n_heads, self.n_kv, self.head_dim, self.n_layers
        N = ids.shape[0]
        x = F.embedding(ids, self.embed)  # (N, d)
        if last is None:
            hidden[0].copy_(x)
            x = hidden[0]
        else:
            hidden[0].copy_(x[last])
        _, h = fused.add_rms_norm(x, None, self.layers[0].w_in, self.eps)
        for i, la in enumerate(self.layers):
            qkv = F.linear(h, la.qkv, la.qkv_b)  # (N, (H + 2·Hkv)·hd)
            kc, vc = self.kv[i, 0], self.kv[i, 1]
            q = fused.rope_store(qkv, positions, self.cos, self.sin, a.slots, kc, vc, H, Hkv, hd)
            o = attention(q, kc, vc, a, self.scale)  # (N, H, hd)
            attn = F.linear(o.view(N, H * hd), la.o, la.o_b)
            x, h = fused.add_rms_norm(x, attn, la.w_post, self.eps, hidden[i + 1] if last is None else None)
            mlp = F.linear(fused.silu_mul(F.linear(h, la.gate_up, la.gate_up_b)), la.down, la.down_b)
            if i < L - 1:
                x, h = fused.add_rms_norm(x, mlp, self.layers[i + 1].w_in, self.eps)  # in place
                if last is not None:
                    hidden[i + 1].copy_(x[last])
            else:
                x = x + mlp
        z = rms_norm(x if last is None else x[last], self.norm, self.eps)  # (B, d)
        hidden[L].copy_(z)
        return z

    def logits(self, z: Tensor) -> Tensor:
        return F.linear(z, self.lm_head)  # (B, V)
