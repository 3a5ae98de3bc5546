"""Every tunable of the cloud worker's engine in one dataclass, each with its sane range.

`spa worker` exposes each field as a flag (`--max-batch`, `--chunk-tokens`, …); `validate()`
refuses values outside the ranges below with an InputError that names the field.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from routing.errors import InputError

# field -> (low, high) inclusive sane range
RANGES: dict[str, tuple[float, float]] = {
    "max_sessions": (1, 4096),
    "max_batch": (1, 1024),
    "chunk_tokens": (16, 65536),
    "block_size": (8, 256),
    "kv_memory_fraction": (0.05, 0.95),
    "kv_reserve_mb": (0, 65536),
    "cpu_kv_mb": (16, 262144),
    "kv_tokens": (0, 1 << 26),
    "graph_max_batch": (0, 1024),
    "max_context": (0, 1 << 20),
    "heartbeat_s": (0.01, 60),
    "liveness": (2, 100),
    "session_idle_s": (1, 86_400),
    "link_hwm": (100, 10_000_000),
}


@dataclass
class WorkerConfig:
    max_sessions: int = 64  # open sessions at most (READY's capacity); sane range 1–4096
    max_batch: int = 64  # rows (sessions) in one step; the rest take turns; sane range 1–1024
    chunk_tokens: int = 512  # tokens in one step (decodes count 1, prefill chunks fill the rest);
    # bounds a step's time so heartbeats keep flowing; sane range 16–65536
    block_size: int = 16  # tokens per KV block (page); sane range 8–256, a power of two
    kv_memory_fraction: float = 0.9  # cuda: share of free memory (after the model) for the KV
    # cache; sane range 0.05–0.95
    kv_reserve_mb: int = 2048  # cuda: memory kept back for activations and graphs; 0–65536
    cpu_kv_mb: int = 4096  # cpu: KV cache size (pages are touched only when used); 16–262144
    kv_tokens: int = 0  # fixed KV budget in tokens; 0 = from memory as above; 0–2^26
    cuda_graphs: bool = True  # capture decode steps as CUDA graphs (cuda only)
    fused_kernels: bool = True  # Triton add+RMSNorm, RoPE+KV store, SiLU·up (cuda only)
    graph_max_batch: int = 256  # largest captured decode batch (buckets 1,2,4,8,16,32,…); 0–1024
    max_context: int = 0  # longest session (prompt + new tokens); 0 = the model's; 0–2^20
    engine: str = "auto"  # 'auto' (paged engine for Llama-family models, else 'hf'), 'paged', 'hf'
    # the link to the broker (cloud_worker/worker.py's I/O thread)
    heartbeat_s: float = 0.5  # beat to the broker, also during steps; match the broker's; 0.01–60
    liveness: int = 4  # broker beats missed before the broker is called dead; 2–100
    session_idle_s: float = 120.0  # a session with no message this long is freed; 1–86400
    link_hwm: int = 100_000  # ZeroMQ high-water mark to the broker (messages); 100–10M

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> WorkerConfig:
        for f in fields(self):
            if f.name in RANGES:
                lo, hi = RANGES[f.name]
                v = getattr(self, f.name)
                if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
                    raise InputError(f"worker config {f.name}={v!r} outside its sane range {lo}–{hi}")
        if self.block_size & (self.block_size - 1):
            raise InputError(f"worker config block_size={self.block_size} is not a power of two")
        if self.engine not in ("auto", "paged", "hf"):
            raise InputError(f"worker config engine={self.engine!r}: expected auto, paged or hf")
        return self


def add_arguments(parser) -> None:
    """A flag for every WorkerConfig field but max_sessions (the worker's own flag): --max-batch …"""
    for f in fields(WorkerConfig):
        if f.name == "max_sessions":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes", "on"),
                                default=f.default, metavar="BOOL")
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            lo_hi = RANGES.get(f.name)
            parser.add_argument(flag, type=kind, default=f.default,
                                help=f"sane range {lo_hi[0]}–{lo_hi[1]}" if lo_hi else None)


def from_args(args) -> WorkerConfig:
    """The WorkerConfig of parsed `add_arguments` flags (validated)."""
    return WorkerConfig(**{f.name: getattr(args, f.name) for f in fields(WorkerConfig)})
