"""Every tunable of the cloud worker (engine and link to the broker), each declared once.

`spa worker` makes a flag of each field (`--max-sessions`, `--max-batch`, …) with
`WorkerConfig.add_arguments`; construction refuses values outside the ranges with an
InputError naming the field. Nobody mutates a config it was handed: `cfg.replace(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import Tunables, tunable
from routing.errors import InputError

MAX_CAPACITY = 1 << 16  # sessions a READY can announce (routing/protocol.py)


@dataclass
class WorkerConfig(Tunables):
    max_sessions: int = tunable(
        0, 0, MAX_CAPACITY, "open sessions at most; 0 = as many as the KV budget holds at "
        "--session-tokens each (the capacity announced in READY)")
    session_tokens: int = tunable(
        512, 16, 1 << 20, "a typical session's KV need (prompt + new tokens), for the announced "
        "capacity; every OPEN is still admitted by its own need")
    max_batch: int = tunable(0, 0, 65536, "rows (sessions) in one step, the rest take turns; 0 = auto: "
                             "on cuda the largest captured graph batch (--graph-max-batch), on cpu 64")
    chunk_tokens: int = tunable(
        0, 0, 65536, "tokens in one step (decodes count 1, prefill chunks fill the rest; at least "
        "16); bounds a step's time so heartbeats keep flowing; 0 = auto: 8192 on cuda, 512 on cpu")
    block_size: int = tunable(16, 8, 256, "tokens per KV block (page), a power of two")
    kv_memory_fraction: float = tunable(
        0.9, 0.05, 0.95, "cuda: share of free memory (after the model) for the KV cache")
    kv_reserve_mb: int = tunable(2048, 0, 65536, "cuda: memory (MiB) kept back for activations and graphs")
    cpu_kv_mb: int = tunable(4096, 16, 262144, "cpu: KV cache size in MiB (pages touched only when used)")
    kv_tokens: int = tunable(0, 0, 1 << 26, "fixed KV budget in tokens; 0 = from memory as above")
    cuda_graphs: bool = tunable(True, help="capture decode steps as CUDA graphs (cuda only)")
    fused_kernels: bool = tunable(True, help="Triton add+RMSNorm, RoPE+KV store, SiLU·up (cuda only)")
    graph_max_batch: int = tunable(
        256, 0, 4096, "largest captured decode batch (buckets 1,2,4,…; also capped by the "
        "capacity and --max-batch); bigger batches run eagerly")
    max_context: int = tunable(0, 0, 1 << 20, "longest session (prompt + new tokens); 0 = the model's")
    engine: str = tunable("auto", help="'auto' (paged for Llama-family models, else hf), 'paged', 'hf'",
                          choices=("auto", "paged", "hf"))
    # the link to the broker (cloud_worker/worker.py's I/O thread)
    heartbeat_s: float = tunable(0.5, 0.01, 60, "seconds between beats to the broker; match the broker's")
    liveness: int = tunable(4, 2, 100, "broker beats missed before the broker is called dead")
    session_idle_s: float = tunable(120.0, 1, 86_400, "a session with no message this long is freed")
    link_hwm: int = tunable(100_000, 100, 10_000_000, "ZeroMQ high-water mark to the broker (messages)")

    def validate(self) -> WorkerConfig:
        super().validate()
        if self.block_size & (self.block_size - 1):
            raise InputError(f"WorkerConfig.block_size={self.block_size} is not a power of two")
        if 0 < self.chunk_tokens < 16:
            raise InputError(f"WorkerConfig.chunk_tokens={self.chunk_tokens}: 0 (auto) or at least 16")
        return self

    def for_device(self, cuda: bool) -> WorkerConfig:
        """The 0 (auto) step limits made concrete. A GPU step costs about the same for 1 row as
        for hundreds, so on cuda a step takes every session up to the largest decode graph (with
        --max-batch 64 a 1024-session worker ran each session every 16th step: 330 ms per token
        on the H200) and a prefill budget that keeps many arrivals in one step."""
        max_batch = self.max_batch or ((self.graph_max_batch or 256) if cuda else 64)
        return self.replace(max_batch=max_batch,
                            chunk_tokens=self.chunk_tokens or max(8192 if cuda else 512, max_batch))

    def capacity(self, kv_tokens: int) -> int:
        """Sessions to announce for a KV cache of `kv_tokens`: --max-sessions, or (0) what the
        budget holds at --session-tokens each; at least 1, at most MAX_CAPACITY."""
        if self.max_sessions:
            return self.max_sessions
        return max(1, min(MAX_CAPACITY, kv_tokens // self.session_tokens))
