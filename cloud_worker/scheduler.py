"""The worker's scheduler: who runs in the next step, and how many tokens each.

nano-vllm's shape: a step is schedule → run → postprocess. The scheduler owns admission and the
block manager (the free KV pages); each session owns its state and changes it only through its
methods (`Session.reserve/grow/advance/emit/rollback/heard/…`), which the scheduler calls; the
model runner only reads sessions: it prepares inputs, runs the backbone and returns the step's
tokens in one transfer.

Scheduling: runnable sessions are taken least-recently-run first (sessions beyond `max_batch`
take turns, none waits more than its share), up to `max_batch` rows and `chunk_tokens` tokens per
step. Decodes cost one token each; prompts (and catch-up after a rollback) are cut into chunks that
fill the rest, so a long prompt never stalls the others and a step stays short (heartbeats keep
flowing). Admission is by the KV budget: a session reserves prompt + max_new_tokens at OPEN, a full
worker answers BUSY; so does one holding --max-sessions sessions when that is set. The capacity
announced to the broker is --max-sessions, or what the KV budget holds at --session-tokens each
(`WorkerConfig.capacity`). Gated sessions decode ahead up to their window; lockstep sessions (lst, full)
wait for the agent's TOKEN after every frame.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cloud_worker.backbone import Backbone
from cloud_worker.block_manager import BlockManager
from cloud_worker.config import WorkerConfig
from cloud_worker.model_runner import ModelRunner, Row, StepOutput
from cloud_worker.session import Session
from monitoring import metrics
from routing.errors import ErrorCode
from routing.modes import Mode
from routing.protocol import Limits, Message, MsgType, ProtocolError, msg
from routing.quant import WireDtype
from routing.sampling import Sampling


class Scheduler:
    def __init__(self, backbone: Backbone, config: WorkerConfig | None = None) -> None:
        cfg = self.config = (config or WorkerConfig()).for_device(backbone.device.type == "cuda")
        self.backbone = backbone
        self.runner = ModelRunner(backbone, cfg)
        self.blocks = BlockManager(self.runner.num_blocks, cfg.block_size)  # admission's budget
        self.capacity = cfg.capacity(self.blocks.capacity_tokens)  # sessions (READY)
        # what only this worker knows, checked on every message before use
        self.limits = Limits(backbone.vocab_size, backbone.n_layers, self.runner.max_context,
                             backbone.d_model)
        self.sessions: dict[bytes, Session] = {}
        self.steps = 0
        self.longest_wait_steps = 0  # most steps a runnable session waited for its turn
        self.longest_wait_s = 0.0  # … and in seconds

    def has_work(self) -> bool:
        return any(s.runnable for s in self.sessions.values())

    # ------------------------------------------------------------- protocol
    def expired(self, idle_s: float, now: float) -> list[bytes]:
        """Sessions whose agent has sent nothing for more than `idle_s` seconds."""
        return [sid for sid, s in self.sessions.items() if now - s.heard_at > idle_s]

    def handle(self, m: Message) -> list[Message]:
        """Apply one agent message (already valid by the contract); returns immediate answers
        (HIDDEN, DONE). Values the model cannot take raise ProtocolError before any use. A
        message taken renews its session's idle lease."""
        self.limits.check(m)
        sid = m.session
        if m.type == MsgType.OPEN:
            return self._open(m)
        s = self.sessions.get(sid)
        if s is None:
            if m.type in (MsgType.ACK, MsgType.CLOSE):  # late after a free: harmless
                return []
            raise ProtocolError(ErrorCode.UNKNOWN_SESSION, f"worker has no session {sid.hex()}", sid)
        answers = self._apply(s, m)
        if sid in self.sessions:
            s.heard(time.monotonic())
        return answers

    def _apply(self, s: Session, m: Message) -> list[Message]:
        sid = s.id
        if m.type == MsgType.ACK:
            if m["pos"] > len(s.seq):
                raise ProtocolError(ErrorCode.BAD_POSITION, f"ACK session={sid.hex()} pos={m['pos']} "
                                    f"past the sequence (len={len(s.seq)})", sid)
            s.ack(m["pos"])
        elif m.type == MsgType.REQUEST:
            if m["epoch"] != s.epoch:
                return []  # stale: the agent has moved to a newer epoch
            hidden = s.ring.get(m["pos"])
            if hidden is None:
                raise ProtocolError(ErrorCode.NO_STATE, f"no hidden states: session={sid.hex()} "
                                    f"pos={m['pos']} epoch={s.epoch} ring={sorted(s.ring)}", sid)
            return [msg(MsgType.HIDDEN, [t.cpu().numpy() for t in hidden], session=sid, pos=m["pos"],
                        epoch=s.epoch)]
        elif m.type == MsgType.CORRECT:
            if m["epoch"] != s.epoch or not s.n_prompt <= m["pos"] < len(s.seq):
                raise ProtocolError(ErrorCode.BAD_POSITION, f"CORRECT session={sid.hex()} pos={m['pos']} "
                                    f"epoch={m['epoch']} (worker epoch={s.epoch} len={len(s.seq)})", sid)
            before = s.wasted
            s.rollback(m["pos"], m["token"])
            metrics.ROLLBACKS.inc()
            metrics.WASTED.inc(s.wasted - before)
        elif m.type == MsgType.TOKEN:
            if s.waiting is None or s.waiting != m["pos"] or m["epoch"] != s.epoch:
                raise ProtocolError(ErrorCode.BAD_POSITION, f"TOKEN session={sid.hex()} pos={m['pos']} "
                                    f"epoch={m['epoch']} but worker waits for {s.waiting} "
                                    f"(epoch {s.epoch})", sid)
            s.take_token(m["pos"], m["token"])
        elif m.type == MsgType.CLOSE:
            return self.close(sid)
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"worker does not take {m.type}", sid)
        return []

    def _open(self, m: Message) -> list[Message]:
        sid = m.session
        if m["fingerprint"] != self.backbone.fingerprint:
            raise ProtocolError(ErrorCode.BACKBONE_MISMATCH, f"session wants backbone {m['fingerprint'][:16]}…, "
                                f"worker has {self.backbone.fingerprint[:16]}…", sid)
        if sid in self.sessions:
            raise ProtocolError(ErrorCode.DUPLICATE_SESSION, f"session {sid.hex()} is open already", sid)
        if self.config.max_sessions and len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError(ErrorCode.BUSY, f"worker holds {len(self.sessions)} sessions (--max-sessions)", sid)
        prompt = m["prompt"]
        try:
            mode, sampling = Mode.parse(m["mode"]), Sampling.from_dict(m["sampling"])
        except Exception as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc), sid) from None
        wire = WireDtype(m.get("wire_dtype", "fp16"))
        grid = None
        if wire.quantised:  # the kit's per-channel scales, as the contract checked them
            grid = torch.from_numpy(m.tensors[0].astype(np.float32)).to(self.runner.device)
        s = Session(sid, list(prompt), len(prompt), m["max_new_tokens"], mode, m["window"], sampling,
                    m["eos"], list(m["wire_layers"]), wire, grid)
        if not self.blocks.can_admit(s.max_len):
            raise ProtocolError(ErrorCode.BUSY, f"KV cache full: {self.blocks.free_tokens} tokens free, "
                                f"session needs {s.max_len}", sid)
        s.reserve(self.blocks)
        s.heard(time.monotonic())
        self.sessions[sid] = s
        return []

    def close(self, sid: bytes) -> list[Message]:
        """Free a session at once: its KV pages, reservation, ring and the runner's state of it."""
        s = self.sessions.pop(sid, None)
        if s is None:
            return []
        s.release(self.blocks)
        self.runner.forget(sid)
        return [msg(MsgType.DONE, session=sid, wasted=s.wasted)]

    # ------------------------------------------------------------- compute
    def step(self) -> list[Message]:
        """schedule → run → postprocess; returns the FRAMEs the step produced."""
        rows = self.schedule()
        if not rows:
            return []
        started = time.perf_counter()
        out = self.runner.run(rows)
        metrics.STEP.observe(time.perf_counter() - started)
        metrics.BATCH.observe(len(rows))
        return self.postprocess(out)

    def schedule(self) -> list[Row]:
        """Pick rows least-recently-run first; decodes take one token each, prefill chunks the rest
        of the step's token budget."""
        cfg, now = self.config, time.monotonic()
        runnable = sorted((s for s in self.sessions.values() if s.runnable), key=lambda s: s.last_run)
        chosen = runnable[: cfg.max_batch]
        budget = cfg.chunk_tokens
        prefill_need = sum(len(s.seq) - s.kv_len for s in chosen if len(s.seq) - s.kv_len > 1)
        decode_cap = budget - min(prefill_need, budget // 4)  # keep room for a prompt chunk
        rows: list[Row] = []
        for s in chosen:
            if len(s.seq) - s.kv_len == 1 and len(rows) < decode_cap:
                rows.append((s, 1))
        budget -= len(rows)
        for s in chosen:
            need = len(s.seq) - s.kv_len
            if need > 1 and budget > 0:
                n = min(need, budget)
                rows.append((s, n))
                budget -= n
        ran = {id(s) for s, _ in rows}
        for s in runnable:
            if id(s) in ran:
                steps, seconds = s.scheduled(now)
                self.longest_wait_steps = max(self.longest_wait_steps, steps)
                self.longest_wait_s = max(self.longest_wait_s, seconds)
            else:
                s.passed_over(now)
        for s, n in rows:
            s.grow(self.blocks, s.kv_len + n)
        return rows

    def postprocess(self, out: StepOutput) -> list[Message]:
        """Each session takes its step's result: KV length, token, ring, FRAME."""
        frames = []
        for s, n in out.rows:
            s.advance(n, self.steps)
        for e, i in enumerate(out.emit):
            s = out.rows[i][0]
            pos = len(s.seq)
            tensors = out.z[e] + out.shipped.get(i, [])
            frames.append(msg(MsgType.FRAME, tensors, session=s.id, pos=pos, epoch=s.epoch,
                              token=out.tokens[e]))
            s.emit(out.tokens[e], pos, out.ring.get(i))
        self.steps += 1
        return frames
