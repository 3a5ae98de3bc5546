"""Token choice shared by the cloud worker and the edge: greedy or seeded sampling.

Seeded sampling must replay identically (after a rollback, a re-open on another worker, or in
the reference generator), so the randomness of position `pos` depends on (seed, pos) alone:
Gumbel-max with noise from a counter-based hash (splitmix64) of (seed, pos, token): the same
numbers on a CPU and a GPU, for one row or a whole batch at once. Worker and edge draw the *same*
noise for a position, so the backbone's and the side network's samples agree whenever their
distributions are close — fewer corrections than independent draws.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from routing.errors import InputError

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: spreads (seed, pos) over the 63-bit space


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy; sane range 0.2–1.5
    top_k: int = 0  # 0 = whole vocabulary; sane range 10–200
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Sampling:
        d = d or {}
        unknown = set(d) - {"temperature", "top_k", "seed"}
        if unknown:
            raise InputError(f"unknown sampling fields: {sorted(unknown)}")
        return cls(float(d.get("temperature", 0.0)), int(d.get("top_k", 0)), int(d.get("seed", 0)))


def _signed(x: int) -> int:
    """A 64-bit pattern as torch's int64 (two's complement)."""
    x &= _U64
    return x - (1 << 64) if x >> 63 else x


_U64 = (1 << 64) - 1
_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1, _M2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def noise_key(seed: int, pos: int) -> int:
    """The 63-bit key of position `pos`'s noise under `seed`."""
    return ((seed * _MIX) ^ (pos + 1) * 0x632BE59BD9B4E019) & 0x7FFF_FFFF_FFFF_FFFF


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise (B, V) float64 for keys (B,) int64: splitmix64 of (key, token index),
    integer arithmetic only up to the uniform, so CPU and GPU draw the same numbers."""
    idx = torch.arange(1, vocab + 1, dtype=torch.int64, device=keys.device)
    h = keys[:, None] + idx * _GOLDEN  # (B, V), wrapping int64 arithmetic
    h = (h ^ _shr(h, 30)) * _M1
    h = (h ^ _shr(h, 27)) * _M2
    h = h ^ _shr(h, 31)
    u = (_shr(h, 11).double() + 0.5) * 2.0**-53  # (0, 1)
    return -torch.log(-torch.log(u))


def choose_tokens(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                  keys: torch.Tensor, kmax: int | None = None) -> torch.Tensor:
    """Token choice for all rows at once, on the logits' device: (B,) int64.

    logits (B, V); temperature (B,) float64, 0 = greedy; top_k (B,) int64, 0 = all; keys (B,)
    int64 from `noise_key`; kmax = max(top_k) when the caller knows it (saves a device sync).
    Row for row the same token as `pick_token`."""
    greedy = logits.argmax(dim=-1)
    sampled = temperature > 0
    V = logits.shape[-1]
    scores = logits.double() / torch.where(sampled, temperature, 1.0)[:, None]  # (B, V)
    k = top_k.clamp(max=V)
    kmax = int(k.max()) if kmax is None else min(kmax, V)
    if kmax:
        kth = torch.topk(scores, kmax, dim=-1).values.gather(1, (k - 1).clamp(min=0)[:, None])
        scores = scores.masked_fill((k[:, None] > 0) & (scores < kth), float("-inf"))
    choice = (scores + gumbel_noise(keys, V)).argmax(dim=-1)
    return torch.where(sampled, choice, greedy)


def pick_tokens(logits: torch.Tensor, sampling: list[Sampling], positions: list[int]) -> list[int]:
    """Choose one token per row. logits: (B, V); positions: the position each token will take."""
    if all(s.greedy for s in sampling):
        return logits.argmax(dim=-1).tolist()
    dev = logits.device
    temps = torch.tensor([s.temperature for s in sampling], dtype=torch.float64, device=dev)
    top_k = torch.tensor([s.top_k for s in sampling], dtype=torch.int64, device=dev)
    keys = torch.tensor([noise_key(s.seed, p) for s, p in zip(sampling, positions, strict=True)],
                        dtype=torch.int64, device=dev)
    return choose_tokens(logits, temps, top_k, keys).tolist()


def pick_token(logits: torch.Tensor, sampling: Sampling, pos: int) -> int:
    """Choose the token at `pos` from logits (V,)."""
    if sampling.greedy:
        return int(logits.argmax())
    return pick_tokens(logits.detach().cpu()[None], [sampling], [pos])[0]
