"""Token choice shared by the cloud worker and the edge: greedy or seeded sampling.

Seeded sampling must replay identically (after a rollback, a re-open on another worker, or in
the reference generator), so the randomness of position `pos` depends on (seed, pos) alone:
Gumbel-max with noise from a CPU generator seeded by both. Worker and edge draw the *same*
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


def _gumbel(vocab: int, seed: int, pos: int) -> torch.Tensor:
    g = torch.Generator(device="cpu")
    g.manual_seed(((seed * _MIX) ^ (pos + 1) * 0x632BE59BD9B4E019) & 0x7FFF_FFFF_FFFF_FFFF)
    u = torch.rand(vocab, generator=g, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    return -torch.log(-torch.log(u))


def pick_tokens(logits: torch.Tensor, sampling: list[Sampling], positions: list[int]) -> list[int]:
    """Choose one token per row. logits: (B, V); positions: the position each token will take."""
    if all(s.greedy for s in sampling):
        return logits.argmax(dim=-1).tolist()
    out = []
    for row, s, pos in zip(logits, sampling, positions, strict=True):
        out.append(pick_token(row, s, pos))
    return out


def pick_token(logits: torch.Tensor, sampling: Sampling, pos: int) -> int:
    """Choose the token at `pos` from logits (V,)."""
    if sampling.greedy:
        return int(logits.argmax())
    scores = logits.detach().double().cpu() / sampling.temperature
    if sampling.top_k:
        k = min(sampling.top_k, scores.numel())
        kth = torch.topk(scores, k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    return int((scores + _gumbel(scores.numel(), sampling.seed, pos)).argmax())
