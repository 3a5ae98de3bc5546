"""The edge's compute for every session of a process, batched and off the event loop.

Sessions ask for a gate decision (classifier on z_t) or a side token (side network + lm_head on
the HIDDEN states) and await the answer. Everything asked while the loop was busy elsewhere is
one batch: grouped by mode, one `EdgeModel.gate_batch` and one `side_logits` call per group, on a
compute thread, so the event loop keeps reading and writing sockets meanwhile. Asks that arrive
while a batch computes form the next one (continuous batching, as a worker does with sessions).

The arithmetic is `EdgeModel`'s — the same calls the batched generator makes, and row for row
the numbers of one-at-a-time `gate` / `side_token` (tests/test_edge_batch.py holds every stream
to the reference generator token for token). `inline=True` computes on the loop's thread
(no thread hop; for a process that has nothing else to do). `device="cuda"` runs the batches on
a GPU copy of the edge's modules (a load tester simulating hundreds of devices beside the
GPU it loads: the same calls, float rounding in another order, so a near-tie may go the other way).
"""

from __future__ import annotations

import asyncio
import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from edge_agent.edge_model import EdgeModel
from routing.modes import Mode
from routing.sampling import Sampling, pick_tokens


def on_device(edge: EdgeModel, device: torch.device | str) -> EdgeModel:
    """A copy of the edge's modules on `device` (the tokenizer and the grid shared, not copied)."""
    keep = {id(edge.tokenizer): edge.tokenizer, id(edge.grid): edge.grid}
    return copy.deepcopy(edge, memo=keep).to(device)


@dataclass
class _Ask:
    kind: str  # 'gate' or 'side'
    mode: Mode
    z: np.ndarray  # (d,) float32, as `EdgeModel.unwire` gives it (fp16 widened or dequantised)
    fut: asyncio.Future
    wire: np.ndarray | None = None  # (K, d) float32, side only
    sampling: Sampling | None = None
    pos: int = 0


class EdgeCompute:
    """`await compute.gate(mode, z)` -> (fire, g); `await compute.side(...)` -> token id."""

    def __init__(self, edge: EdgeModel, inline: bool = False, device: str = "cpu") -> None:
        self.device = torch.device(device)
        # the compute's own copy on another device (the stream keeps unwiring with `edge` on the CPU)
        self.edge = edge if self.device.type == "cpu" else on_device(edge, self.device)
        self._asks: list[_Ask] = []
        self._busy = self._kicked = False
        self._pool = None if inline else ThreadPoolExecutor(1, thread_name_prefix="edge-compute")
        self.batches = 0  # batches computed (each one or more groups)
        self.rows = 0  # asks answered
        self.busy_s = 0.0  # compute time, for the side-compute metric

    def gate(self, mode: Mode, z: np.ndarray) -> asyncio.Future | tuple[bool, float]:
        """The gate's decision on z_t: an awaitable, or the answer itself when the mode needs
        no classifier (never / always)."""
        if mode.gate != "classifier":
            return mode.gate == "always", float(mode.gate == "always")
        return self._ask(_Ask("gate", mode, z, self._future()))

    def side(self, mode: Mode, z: np.ndarray, wire: np.ndarray, sampling: Sampling,
             pos: int) -> asyncio.Future:
        """The side-augmented token at `pos` (z: (d,), wire: (K, d), both as the wire brings)."""
        return self._ask(_Ask("side", mode, z, self._future(), wire, sampling, pos))

    @staticmethod
    def _future() -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    def _ask(self, ask: _Ask) -> asyncio.Future:
        self._asks.append(ask)
        if not self._busy and not self._kicked:
            self._kicked = True
            ask.fut.get_loop().call_soon(self._launch)  # after this tick's other sessions asked
        return ask.fut

    def _launch(self) -> None:
        self._kicked = False
        asks, self._asks = self._asks, []
        if not asks:
            return
        if self._pool is None:
            try:
                self._land(asks, *self._compute(asks))
            except Exception as exc:  # noqa: BLE001 - every waiting stream hears it
                self._fail(asks, exc)
            return
        self._busy = True
        loop = asyncio.get_running_loop()
        loop.run_in_executor(self._pool, self._compute, asks).add_done_callback(
            lambda f: self._landed(asks, f))

    def _landed(self, asks: list[_Ask], f: asyncio.Future) -> None:
        self._busy = False
        if f.cancelled():
            return
        if f.exception() is not None:
            self._fail(asks, f.exception())
        else:
            self._land(asks, *f.result())
        if self._asks and not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._launch)

    @staticmethod
    def _fail(asks: list[_Ask], exc: BaseException) -> None:
        for a in asks:
            if not a.fut.done():
                a.fut.set_exception(exc)

    def _land(self, asks: list[_Ask], answers: list, seconds: float) -> None:
        self.batches += 1
        self.rows += len(asks)
        self.busy_s += seconds
        for a, answer in zip(asks, answers, strict=True):
            if not a.fut.done():  # a cancelled stream's answer is dropped
                a.fut.set_result(answer)

    @torch.inference_mode()
    def _compute(self, asks: list[_Ask]) -> tuple[list, float]:
        """Every ask's answer, in order, and the seconds it took (runs on the compute thread)."""
        started = time.perf_counter()
        answers: list = [None] * len(asks)
        groups: dict[tuple[str, Mode], list[int]] = {}
        for i, a in enumerate(asks):
            groups.setdefault((a.kind, a.mode), []).append(i)
        edge = self.edge
        for (kind, mode), rows in groups.items():
            z = torch.from_numpy(np.stack([asks[i].z for i in rows])).float().to(self.device)
            if kind == "gate":
                fire, g = edge.gate_batch(mode, z)
                for k, i in enumerate(rows):
                    answers[i] = (fire[k], g[k])
                continue
            wire = torch.from_numpy(np.stack([asks[i].wire for i in rows])).float().to(self.device)
            logits = edge.side_logits(mode, z, wire)
            toks = pick_tokens(logits, [asks[i].sampling for i in rows], [asks[i].pos for i in rows])
            for k, i in enumerate(rows):
                answers[i] = toks[k]
        return answers, time.perf_counter() - started

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
