"""Attention over the paged KV cache (PagedAttention, Kwon et al. 2023), two kernels:

* `paged_decode` — one query per row (decode steps): a Triton kernel that walks the row's
  block table with an online softmax (FlashDecoding without the split), reading only the row's
  own pages. CUDA only; captured in the decode CUDA graphs.
* `gather_attention` — any query lengths (prefill chunks mixed with decodes): each row's pages
  are gathered into a dense (B, T_k) block and PyTorch's fused SDPA runs with a causal mask
  offset by the row's cached length. Runs everywhere (the CPU path, and prefills on cuda).

Cache layout: one (slots, H_kv, hd) tensor per layer for K and one for V, slot = page·bs + t % bs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # Triton is on the GPU image; the CPU venv does without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None


@dataclass
class AttnBatch:
    """Where a step's tokens go and what they attend to. Flat tokens: the `n_decode` one-token
    rows first, then the rows of several tokens."""

    slots: Tensor  # (N,) int64 cache slot of each new token
    block_size: int = 16
    n_decode: int = 0  # rows served by paged_decode (their tokens are the first n_decode)
    block_tables: Tensor | None = None  # (n_decode, max_blocks) int32
    ctx_lens: Tensor | None = None  # (n_decode,) int32 tokens in the KV after this step
    # gather path (rows after the decodes)
    kv_slots: Tensor | None = None  # (Bg, Tk) int64 slots of keys 0..Tk-1, ZERO_SLOT past the row
    q_pad: Tensor | None = None  # (Ng,) int64 index of each gathered-row token in (Bg·Tq)
    mask: Tensor | None = None  # (Bg, 1, Tq, Tk) bool: query may attend key
    tq: int = 0


def store_kv(k_cache: Tensor, v_cache: Tensor, k: Tensor, v: Tensor, slots: Tensor) -> None:
    """Write the new tokens' K, V (N, H_kv, hd) into their slots."""
    k_cache.index_copy_(0, slots, k)
    v_cache.index_copy_(0, slots, v)


def gather_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, a: AttnBatch, scale: float) -> Tensor:
    """q (Ng, H, hd) -> (Ng, H, hd) for the gathered rows."""
    Bg, Tk = a.kv_slots.shape
    H, hd = q.shape[1], q.shape[2]
    qp = q.new_zeros(Bg * a.tq, H, hd)
    qp[a.q_pad] = q
    qp = qp.view(Bg, a.tq, H, hd).transpose(1, 2)  # (Bg, H, Tq, hd)
    k = k_cache[a.kv_slots].transpose(1, 2)  # (Bg, H_kv, Tk, hd)
    v = v_cache[a.kv_slots].transpose(1, 2)
    o = F.scaled_dot_product_attention(qp, k, v, attn_mask=a.mask, scale=scale,
                                       enable_gqa=H != k.shape[1])  # (Bg, H, Tq, hd)
    return o.transpose(1, 2).reshape(Bg * a.tq, H, hd)[a.q_pad]


def attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, a: AttnBatch, scale: float) -> Tensor:
    """q (N, H, hd) of the step's new tokens -> attention output (N, H, hd)."""
    nd = a.n_decode
    if nd == 0:
        return gather_attention(q, k_cache, v_cache, a, scale)
    dec = paged_decode(q[:nd], k_cache, v_cache, a.block_tables, a.ctx_lens, scale, a.block_size)
    if nd == q.shape[0]:
        return dec
    return torch.cat([dec, gather_attention(q[nd:], k_cache, v_cache, a, scale)])


def decode_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                     ctx_lens: Tensor, block_size: int, scale: float) -> Tensor:
    """What paged_decode computes, in plain PyTorch (tests compare the two)."""
    out = []
    for b in range(q.shape[0]):
        n = int(ctx_lens[b])
        t = torch.arange(n)
        slots = block_tables[b].long()[t // block_size] * block_size + t % block_size
        k, v = k_cache[slots].transpose(0, 1), v_cache[slots].transpose(0, 1)  # (H_kv, n, hd)
        o = F.scaled_dot_product_attention(q[b][:, None], k, v, scale=scale,
                                           enable_gqa=q.shape[1] != k.shape[0])
        out.append(o[:, 0])
    return torch.stack(out)


if triton is not None:

    @triton.jit
    def _attend(q, k_ptr, v_ptr, bt_ptr, b, bt_stride, kvh, lo, hi, d, HKV: tl.constexpr,
                D: tl.constexpr, BS: tl.constexpr, BLOCK_N: tl.constexpr):
        """Online softmax of query `q` (D,) over tokens lo … hi-1 of row b's pages ->
        (unnormalised acc (D,), running max, running sum): the loop both kernels share."""
        m = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
        lsum = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
        acc = tl.zeros([D], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            t = start + tl.arange(0, BLOCK_N)
            valid = t < hi
            page = tl.load(bt_ptr + b * bt_stride + t // BS, mask=valid, other=0)
            off = ((page.to(tl.int64) * BS + t % BS) * HKV + kvh) * D  # (BLOCK_N,)
            k = tl.load(k_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            s = tl.sum(k.to(tl.float32) * q[None, :], 1)  # (BLOCK_N,)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 0))
            p = tl.exp(s - m_new)
            alpha = tl.exp(m - m_new)
            v = tl.load(v_ptr + off[:, None] + d[None, :], mask=valid[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            lsum = lsum * alpha + tl.sum(p, 0)
            m = m_new
        return acc, m, lsum

    @triton.jit
    def _paged_decode_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, len_ptr, o_ptr, scale, bt_stride,
                             H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                             BS: tl.constexpr, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        kvh = h // (H // HKV)
        n = tl.load(len_ptr + b)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (b * H + h) * D + d).to(tl.float32) * scale  # (D,)
        acc, m, lsum = _attend(q, k_ptr, v_ptr, bt_ptr, b, bt_stride, kvh, 0, n, d, HKV, D, BS, BLOCK_N)
        tl.store(o_ptr + (b * H + h) * D + d, (acc / lsum).to(o_ptr.dtype.element_ty))

    @triton.jit
    def _paged_decode_split_kernel(q_ptr, k_ptr, v_ptr, bt_ptr, len_ptr, acc_ptr, ml_ptr, scale,
                                   bt_stride, H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr,
                                   BS: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr):
        """FlashDecoding: split s of the row's context -> unnormalised acc, running max, sum."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        sp = tl.program_id(2)
        kvh = h // (H // HKV)
        n = tl.load(len_ptr + b)
        part = tl.cdiv(tl.cdiv(n, SPLITS), BLOCK_N) * BLOCK_N
        lo = sp * part
        hi = tl.minimum(lo + part, n)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + (b * H + h) * D + d).to(tl.float32) * scale
        acc, m, lsum = _attend(q, k_ptr, v_ptr, bt_ptr, b, bt_stride, kvh, lo, hi, d, HKV, D, BS, BLOCK_N)
        i = (b * H + h) * SPLITS + sp
        tl.store(acc_ptr + i * D + d, acc)
        tl.store(ml_ptr + i * 2, m)
        tl.store(ml_ptr + i * 2 + 1, lsum)

    @triton.jit
    def _split_reduce_kernel(acc_ptr, ml_ptr, o_ptr, D: tl.constexpr, SPLITS: tl.constexpr):
        row = tl.program_id(0)  # b * H + h
        s = tl.arange(0, SPLITS)
        d = tl.arange(0, D)
        m = tl.load(ml_ptr + (row * SPLITS + s) * 2)  # (SPLITS,), -inf for empty splits
        lsum = tl.load(ml_ptr + (row * SPLITS + s) * 2 + 1)
        mx = tl.max(m, 0)
        w = tl.where(m > float("-inf"), tl.exp(m - mx), 0.0)
        acc = tl.load(acc_ptr + (row * SPLITS + s)[:, None] * D + d[None, :])  # (SPLITS, D)
        out = tl.sum(acc * w[:, None], 0) / tl.sum(lsum * w, 0)
        tl.store(o_ptr + row * D + d, out.to(o_ptr.dtype.element_ty))


def paged_decode_available(head_dim: int) -> bool:
    return triton is not None and head_dim & (head_dim - 1) == 0 and head_dim >= 16


def paged_decode(q: Tensor, k_cache: Tensor, v_cache: Tensor, block_tables: Tensor,
                 ctx_lens: Tensor, scale: float, block_size: int) -> Tensor:
    """q (B, H, hd), one query per row at the end of its context -> (B, H, hd)."""
    B, H, D = q.shape
    HKV = k_cache.shape[1]
    q = q.contiguous()
    out = torch.empty_like(q)
    splits = decode_splits(B, H)
    if splits == 1:
        _paged_decode_kernel[(B, H)](q, k_cache, v_cache, block_tables, ctx_lens, out, scale,
                                     block_tables.stride(0), H=H, HKV=HKV, D=D, BS=block_size,
                                     BLOCK_N=64, num_warps=4)
        return out
    acc = torch.empty((B, H, splits, D), dtype=torch.float32, device=q.device)
    ml = torch.empty((B, H, splits, 2), dtype=torch.float32, device=q.device)
    _paged_decode_split_kernel[(B, H, splits)](q, k_cache, v_cache, block_tables, ctx_lens, acc, ml,
                                               scale, block_tables.stride(0), H=H, HKV=HKV, D=D,
                                               BS=block_size, BLOCK_N=64, SPLITS=splits, num_warps=4)
    _split_reduce_kernel[(B * H,)](acc, ml, out, D=D, SPLITS=splits, num_warps=4)
    return out


def decode_splits(B: int, H: int) -> int:
    """Context splits per (row, head) so a small batch still fills the GPU (~1024 programs); a
    power of two, at most 16. Fixed per batch size, so each captured graph has its own."""
    s = 1
    while s < 16 and B * H * s * 2 <= 1024:
        s *= 2
    return s

