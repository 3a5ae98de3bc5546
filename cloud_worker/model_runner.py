"""Runs one scheduled step on the backbone: prepare inputs → forward → choose tokens → ONE copy.

The model is the paged Llama-family forward (`llama.py`) when the backbone is one, else the HF
model through `batch_runner.HFEngine` (today's padded path). Either way a step returns, at each
row's last scheduled token, logits, z and the per-layer states; then, on the device and for all
rows at once, tokens are chosen (`routing.sampling.choose_tokens`), z is encoded in each session's
wire dtype (fp16, or int8/int4 codes + scales: `routing.quant`, on the device), lockstep rows' wire
layers are gathered and encoded, and all of it goes to the host in one non-blocking copy into
pinned memory (one sync per step; the encoding and the staging: `step_output.py`). Gated rows'
encoded wire layers stay on the device in the ring; a REQUEST copies only its position's states.

On cuda, a step's decode rows replay CUDA graphs captured at bucketed batch sizes (nano-vllm's
`capture_cudagraph`): static input buffers are filled, the graph replays, padded rows write to
the scratch slot; a step that also carries prefill chunks runs those eagerly after the replay.
Graphs go up to the smallest of --graph-max-batch, --max-batch and the batch the KV budget
allows; a bigger decode batch runs eagerly (same kernels, no graph).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from cloud_worker import fused
from cloud_worker.attention import AttnBatch, paged_decode_available
from cloud_worker.backbone import Backbone
from cloud_worker.block_manager import SCRATCH_SLOT, ZERO_SLOT, table_slots, token_slots
from cloud_worker.config import WorkerConfig
from cloud_worker.step_output import Row, Staging, StepOutput, encode_wire
from routing.sampling import choose_tokens, noise_key

log = logging.getLogger("spa.worker")
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512,
                 640, 768, 896, 1024)


class _Eager:
    """Stands in for a CUDA graph off cuda: replay() runs the captured function."""

    def __init__(self, fn) -> None:
        self.replay = fn


class ModelRunner:
    def __init__(self, backbone: Backbone, cfg: WorkerConfig) -> None:
        from cloud_worker import llama

        self.backbone, self.cfg = backbone, cfg
        self.device = backbone.device
        self.cuda = self.device.type == "cuda"
        mc = getattr(backbone.model.config, "max_position_embeddings", None) or 2048
        self.max_context = min(cfg.max_context or mc, mc)
        why = llama.supports(backbone.model, self.max_context)
        if cfg.engine == "paged" and why:
            raise ValueError(f"paged engine cannot run this backbone: {why}")
        self.paged = cfg.engine != "hf" and why is None
        self.bs = cfg.block_size
        self.forwards = 0
        self.last_rows: list[Row] = []  # the latest step's rows (tests, benchmarks)
        if self.paged:
            self.model = llama.LlamaModel(backbone.model, self.max_context)
            per_token = self.model.kv_bytes_per_token()
            self.num_blocks = self._kv_tokens(per_token) // self.bs + 1  # KV pages (+ page 0)
            m = self.model
            self.model.kv = torch.empty((m.n_layers, 2, self.num_blocks * self.bs, m.n_kv, m.head_dim),
                                        dtype=m.dtype, device=self.device)
            self.model.kv[:, :, : self.bs].zero_()  # block 0: the zero / scratch page
            self.decode_kernel = self.cuda and paged_decode_available(m.head_dim)
            m.fused = self.decode_kernel and cfg.fused_kernels and fused.AVAILABLE
            log.info("paged engine: KV %d tokens (%.2f GiB), block %d", (self.num_blocks - 1) * self.bs,
                     self.model.kv.numel() * self.model.kv.element_size() / 2**30, self.bs)
        else:
            from cloud_worker.batch_runner import HFEngine

            log.info("HF engine (%s)", why or "asked for")
            self.model = HFEngine(backbone)
            self.num_blocks = self._kv_tokens(0) // self.bs + 1  # accounting only
            self.decode_kernel = False
        self.max_blocks = -(-self.max_context // self.bs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._host: Tensor | None = None  # pinned staging buffer of the one copy per step
        if self.paged and self.cuda and self.decode_kernel and cfg.cuda_graphs and cfg.graph_max_batch:
            self._capture()

    def _kv_tokens(self, per_token: int) -> int:
        cfg = self.cfg
        if cfg.kv_tokens:
            return cfg.kv_tokens
        if not per_token:
            return 1 << 20
        if self.cuda:
            free, _ = torch.cuda.mem_get_info(self.device)
            budget = (free - cfg.kv_reserve_mb * 2**20) * cfg.kv_memory_fraction
        else:
            budget = cfg.cpu_kv_mb * 2**20
        tokens = int(budget // per_token)
        if tokens < self.bs * 4:
            raise MemoryError(f"KV budget of {tokens} tokens: not enough memory for the cache")
        return tokens

    # ------------------------------------------------------------------ prepare
    def _order(self, rows: list[Row]) -> list[Row]:
        """Rows the decode kernel serves (one token) first, then the rest."""
        if not self.decode_kernel:
            return rows
        return [r for r in rows if r[1] == 1] + [r for r in rows if r[1] != 1]

    def _prepare(self, rows: list[Row]) -> tuple[Tensor, Tensor, AttnBatch, Tensor | None]:
        dev, bs = self.device, self.bs
        ids, pos, slots, last = [], [], [], []
        nd = sum(1 for _, n in rows if n == 1) if self.decode_kernel else 0
        for s, n in rows:
            start = s.kv_len
            ids.extend(s.seq[start : start + n])
            pos.extend(range(start, start + n))
            slots.extend(token_slots(s.block_table, bs, start, n))
            last.append(len(ids) - 1)
        a = AttnBatch(slots=self._to(slots), block_size=bs, n_decode=nd)
        if nd:
            a.ctx_lens = self._to([s.kv_len + 1 for s, _ in rows[:nd]], torch.int32)
            a.block_tables = self._to(self._tables(rows[:nd]), torch.int32)
        g = rows[nd:]
        if g:
            tq = max(n for _, n in g)
            tk = max(s.kv_len + n for s, n in g)
            kv_slots = np.full((len(g), tk), ZERO_SLOT, dtype=np.int64)
            qpos = np.zeros((len(g), tq), dtype=np.int64)
            q_pad = []
            for r, (s, n) in enumerate(g):
                c = s.kv_len + n
                kv_slots[r, :c] = table_slots(s.block_table, bs, c)
                qpos[r, :n] = np.arange(s.kv_len, c)
                q_pad.extend(range(r * tq, r * tq + n))
            a.kv_slots, a.tq, a.q_pad = self._to(kv_slots), tq, self._to(q_pad)
            j = torch.arange(tk, device=dev)
            a.mask = (j[None, None, :] <= self._to(qpos)[:, :, None])[:, None]  # (Bg, 1, Tq, Tk)
        is_last = len(ids) == len(rows)
        return self._to(ids), self._to(pos), a, None if is_last else self._to(last)

    def _tables(self, rows: list[Row]) -> np.ndarray:
        mb = max(len(s.block_table) for s, _ in rows)
        t = np.zeros((len(rows), mb), dtype=np.int32)
        for r, (s, _) in enumerate(rows):
            t[r, : len(s.block_table)] = s.block_table
        return t

    def _to(self, x, dtype: torch.dtype = torch.int64) -> Tensor:
        t = torch.as_tensor(np.asarray(x), dtype=dtype)
        if not self.cuda:
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ run
    @torch.inference_mode()
    def forward(self, rows: list[Row]) -> tuple[list[Row], Tensor, Tensor, Tensor]:
        """One forward over the rows (two in a step that mixes graph-served decodes with prefill
        chunks) -> (rows in run order, logits (B, V), z (B, d), hidden (L+1, B, d)), all at each
        row's last scheduled token, on the device."""
        self.forwards += 1
        if not self.paged:
            logits, z, hidden = self.model.forward(rows)
            return rows, logits, z, hidden
        rows = self._order(rows)
        nd = sum(1 for _, n in rows if n == 1)  # one-token rows, first in run order
        if self.graphs and nd and nd <= max(self.graphs):
            if nd == len(rows):
                return (rows, *self._replay(rows))
            # Mixed step (a serving worker's usual one: someone is always arriving): the decodes
            # replay their graph, the prefill chunks run eagerly — in one eager pass the decodes
            # would pay per-op launch overhead with the whole batch (the H200 profile's top entry).
            self.forwards += 1
            g_logits, g_z, g_hidden = self._replay(rows[:nd])
            logits, z, hidden = self._eager(rows[nd:])
            return (rows, torch.cat([g_logits, logits]), torch.cat([g_z, z]),
                    torch.cat([g_hidden, hidden], dim=1))
        return (rows, *self._eager(rows))

    def _eager(self, rows: list[Row]) -> tuple[Tensor, Tensor, Tensor]:
        """The rows without a graph: logits (B, V), z (B, d), hidden (L+1, B, d)."""
        ids, pos, a, last = self._prepare(rows)
        m = self.model
        hidden = torch.empty((m.n_layers + 1, len(rows), m.d), dtype=m.dtype, device=self.device)
        z = m.forward(ids, pos, a, last, hidden)
        return m.logits(z), z, hidden

    def run(self, rows: list[Row]) -> StepOutput:
        """forward, then tokens chosen on the device and one transfer to the host."""
        rows, logits, z, hidden = self.forward(rows)
        self.last_rows = rows
        emit = [i for i, (s, n) in enumerate(rows) if s.kv_len + n == len(s.seq)]
        if not emit:
            return StepOutput(rows, [], [], [], {}, {})
        sess = [rows[i][0] for i in emit]
        idx = self._to(emit) if len(emit) < len(rows) else None
        lg = logits if idx is None else logits[idx]
        if all(s.sampling.greedy for s in sess):
            tokens = lg.argmax(dim=-1)
        else:
            temps = [s.sampling.temperature for s in sess]
            top_k = [s.sampling.top_k for s in sess]
            keys = [noise_key(s.sampling.seed, len(s.seq)) if not s.sampling.greedy else 0 for s in sess]
            tokens = choose_tokens(lg, self._to(temps, torch.float64), self._to(top_k),
                                   self._to(keys), kmax=max(top_k))
        zz = z if idx is None else z[idx]  # (E, d)
        stage = Staging()
        stage.add(tokens.to(torch.int32))
        z_parts, shipped_h, ring = encode_wire(rows, emit, zz, hidden, stage, self._to)
        arrays = stage.unpack(self._copy_to_host(stage.flat()))  # the one transfer of the step
        toks = arrays[0].tolist()
        zh = [[arrays[h][j] for h, j in parts] for parts in z_parts]
        shipped = {i: [arrays[h] for h in hs] for i, hs in shipped_h.items()}
        return StepOutput(rows, emit, toks, zh, shipped, ring)

    def _copy_to_host(self, t: Tensor) -> np.ndarray:
        """One non-blocking copy into pinned memory, then one sync; numpy over a fresh copy."""
        if not self.cuda:
            return t.numpy().copy()
        n = t.numel()
        if self._host is None or self._host.numel() < n:
            self._host = torch.empty(max(n, 1 << 17), dtype=torch.uint8, pin_memory=True)
        self._host[:n].copy_(t, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return self._host[:n].numpy().copy()

    def forget(self, sid: bytes) -> None:
        """A session ended: drop what the runner keeps of it (the HF path's per-session KV)."""
        if not self.paged:
            self.model.free(sid)

    # ------------------------------------------------------------------ CUDA graphs
    def _bucket(self, b: int) -> int:
        return next(x for x in sorted(self.graphs) if x >= b)

    def _capture(self) -> None:
        """Decode graphs at bucketed batch sizes, sharing one memory pool (largest first)."""
        m, dev = self.model, self.device
        kv_batch = self.cfg.capacity((self.num_blocks - 1) * self.bs)  # the KV-allowed batch
        top = min(self.cfg.graph_max_batch, self.cfg.max_batch, kv_batch)  # larger batches: eager
        sizes = [b for b in GRAPH_BUCKETS if b < top] + [top]
        self.g_ids = torch.zeros(top, dtype=torch.int64, device=dev)
        self.g_pos = torch.zeros(top, dtype=torch.int64, device=dev)
        self.g_slots = torch.full((top,), SCRATCH_SLOT, dtype=torch.int64, device=dev)
        self.g_lens = torch.ones(top, dtype=torch.int32, device=dev)
        self.g_tables = torch.zeros((top, self.max_blocks), dtype=torch.int32, device=dev)
        self.g_hidden = torch.zeros((m.n_layers + 1, top, m.d), dtype=m.dtype, device=dev)
        self.g_z = torch.zeros((top, m.d), dtype=m.dtype, device=dev)
        self.g_logits = torch.zeros((top, m.vocab), dtype=m.dtype, device=dev)
        pool = None
        with torch.inference_mode():
            for b in reversed(sizes):
                a = AttnBatch(slots=self.g_slots[:b], block_size=self.bs, n_decode=b,
                              block_tables=self.g_tables[:b], ctx_lens=self.g_lens[:b])
                hidden = self.g_hidden[:, :b]

                def run(b=b, a=a, hidden=hidden):
                    z = m.forward(self.g_ids[:b], self.g_pos[:b], a, None, hidden)
                    self.g_z[:b] = z
                    self.g_logits[:b] = m.logits(z)

                if not self.cuda:  # the same static-buffer path without a graph (tests)
                    self.graphs[b] = _Eager(run)
                    continue
                run()  # warm-up (Triton compiles here, not during capture)
                torch.cuda.synchronize(dev)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool):
                    run()
                pool = g.pool() if pool is None else pool
                self.graphs[b] = g
        if self.cuda:
            torch.cuda.synchronize(dev)
        log.info("captured decode CUDA graphs at batch sizes %s", sizes)

    def _replay(self, rows: list[Row]) -> tuple[Tensor, Tensor, Tensor]:
        """Fill the static inputs with ONE host→device copy, replay the bucket's graph."""
        B = len(rows)
        gb = self._bucket(B)
        tables = self._tables(rows)
        mb = tables.shape[1]
        stage = np.empty(4 * B + B * mb, dtype=np.int64)  # ids | pos | slots | lens | tables
        pos = np.fromiter((s.kv_len for s, _ in rows), dtype=np.int64, count=B)
        stage[:B] = [s.seq[s.kv_len] for s, _ in rows]
        stage[B : 2 * B] = pos
        stage[2 * B : 3 * B] = [s.block_table[s.kv_len // self.bs] * self.bs + s.kv_len % self.bs
                                for s, _ in rows]
        stage[3 * B : 4 * B] = pos + 1
        stage[4 * B :] = tables.reshape(-1)
        dev = self._to(stage)
        self.g_ids[:B] = dev[:B]
        self.g_pos[:B] = dev[B : 2 * B]
        self.g_slots[:B] = dev[2 * B : 3 * B]
        self.g_lens[:B] = dev[3 * B : 4 * B]
        self.g_tables[:B, :mb] = dev[4 * B :].view(B, mb)
        if gb > B:
            self.g_slots[B:gb] = SCRATCH_SLOT
            self.g_lens[B:gb] = 1
        self.graphs[gb].replay()
        return self.g_logits[:B], self.g_z[:B], self.g_hidden[:, :B]
