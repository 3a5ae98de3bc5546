"""The worker's scheduler: one batched backbone forward over all runnable sessions per step.

Sessions join (prefill) and leave between steps; a new session's prompt rides in the same
forward as the others' one-token decodes (left-padded). Gated sessions decode ahead up to
their window; lockstep sessions (lst, full) wait for the agent's TOKEN after every frame.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cloud_worker.backbone import Backbone
from cloud_worker.batch_runner import BatchRunner
from cloud_worker.session import Session
from monitoring import metrics
from routing.protocol import Message, ProtocolError, msg
from routing.sampling import pick_token

WIRE = np.float16


class Scheduler:
    def __init__(self, backbone: Backbone, max_sessions: int = 64, max_batch: int = 64) -> None:
        self.backbone = backbone
        self.runner = BatchRunner(backbone)
        self.sessions: dict[bytes, Session] = {}
        self.max_sessions = max_sessions  # sane range 1–512 (KV memory bound)
        self.max_batch = max_batch  # rows per forward; sane range 8–256
        self.steps = 0

    def has_work(self) -> bool:
        return any(s.runnable for s in self.sessions.values())

    # ------------------------------------------------------------- protocol
    def handle(self, m: Message) -> list[Message]:
        """Apply one agent message; returns immediate answers (HIDDEN, DONE, ERROR)."""
        sid = m.session
        if m.type == "OPEN":
            return self._open(m)
        s = self.sessions.get(sid)
        if s is None:
            if m.type in ("ACK", "CLOSE"):  # late after a free: harmless
                return []
            raise ProtocolError("UNKNOWN_SESSION", f"worker has no session {sid.hex()}", sid)
        if m.type == "ACK":
            s.ack(m["pos"])
        elif m.type == "REQUEST":
            if m["epoch"] != s.epoch:
                return []  # stale: the agent has moved to a newer epoch
            hidden = s.ring.get(m["pos"])
            if hidden is None:
                raise ProtocolError("NO_STATE", f"no hidden states: session={sid.hex()} pos={m['pos']}"
                                    f" epoch={s.epoch} ring={sorted(s.ring)}", sid)
            return [msg("HIDDEN", [hidden], session=sid, pos=m["pos"], epoch=s.epoch)]
        elif m.type == "CORRECT":
            if m["epoch"] != s.epoch or not s.n_prompt <= m["pos"] < len(s.seq):
                raise ProtocolError("BAD_POSITION", f"CORRECT session={sid.hex()} pos={m['pos']} "
                                    f"epoch={m['epoch']} (worker epoch={s.epoch} len={len(s.seq)})", sid)
            before = s.wasted
            s.rollback(m["pos"], m["token"])
            metrics.ROLLBACKS.inc()
            metrics.WASTED.inc(s.wasted - before)
        elif m.type == "TOKEN":
            if s.waiting != m["pos"]:
                raise ProtocolError("BAD_POSITION", f"TOKEN session={sid.hex()} pos={m['pos']} but "
                                    f"worker waits for {s.waiting}", sid)
            s.seq.append(m["token"])
            s.waiting = None
            s.ack(m["pos"])
        elif m.type == "CLOSE":
            return self.close(sid)
        else:
            raise ProtocolError("BAD_MESSAGE", f"worker does not take {m.type}", sid)
        return []

    def _open(self, m: Message) -> list[Message]:
        from routing.modes import Mode
        from routing.sampling import Sampling

        sid = m.session
        if m["fingerprint"] != self.backbone.fingerprint:
            raise ProtocolError("BACKBONE_MISMATCH", f"session wants backbone {m['fingerprint'][:16]}…, "
                                f"worker has {self.backbone.fingerprint[:16]}…", sid)
        if sid in self.sessions:
            raise ProtocolError("DUPLICATE_SESSION", f"session {sid.hex()} is open already", sid)
        if len(self.sessions) >= self.max_sessions:
            raise ProtocolError("BUSY", f"worker holds {len(self.sessions)} sessions (max)", sid)
        prompt = m["prompt"]
        V, L = self.backbone.vocab_size, self.backbone.n_layers
        if not prompt or not all(isinstance(t, int) and 0 <= t < V for t in prompt):
            raise ProtocolError("BAD_MESSAGE", f"prompt must be 1+ token ids in [0, {V})", sid)
        if m["max_new_tokens"] < 1 or m["window"] < 1:
            raise ProtocolError("BAD_MESSAGE", "max_new_tokens and window must be >= 1", sid)
        if not all(isinstance(i, int) and 0 <= i < L for i in m["wire_layers"]):
            raise ProtocolError("BAD_MESSAGE", f"wire_layers must lie in 0..{L - 1}", sid)
        try:
            mode, sampling = Mode.parse(m["mode"]), Sampling.from_dict(m["sampling"])
        except Exception as exc:
            raise ProtocolError("BAD_MESSAGE", str(exc), sid) from None
        self.sessions[sid] = Session(sid, list(prompt), len(prompt), m["max_new_tokens"], mode,
                                     m["window"], sampling, m["eos"], list(m["wire_layers"]))
        return []

    def close(self, sid: bytes) -> list[Message]:
        s = self.sessions.pop(sid, None)  # frees KV and ring at once
        return [] if s is None else [msg("DONE", session=sid, wasted=s.wasted)]

    # ------------------------------------------------------------- compute
    def step(self) -> list[Message]:
        """One batched forward over the runnable sessions; returns the FRAMEs it produced."""
        batch = [s for s in self.sessions.values() if s.runnable][: self.max_batch]
        if not batch:
            return []
        started = time.perf_counter()
        results = self.runner.step([(s.kv, s.new_tokens()) for s in batch])
        metrics.STEP.observe(time.perf_counter() - started)
        metrics.BATCH.observe(len(batch))
        metrics.ACTIVE_SESSIONS.labels("worker").set(len(self.sessions))
        self.steps += 1
        out = []
        for s, r in zip(batch, results, strict=True):
            s.kv, s.kv_len = r.kv, len(s.seq)
            pos = len(s.seq)
            token = pick_token(r.logits, s.sampling, pos)
            z = r.z.to(torch.float16).cpu().numpy()
            tensors = [z]
            if s.wire_layers:
                hidden = r.hidden[s.wire_layers].to(torch.float16).cpu().numpy()  # (k, d)
                if s.mode.lockstep:
                    tensors.append(hidden)
                else:
                    s.ring[pos] = hidden
            out.append(msg("FRAME", tensors, session=s.id, pos=pos, epoch=s.epoch, token=token))
            if s.mode.lockstep:
                s.waiting = pos
            else:
                s.seq.append(token)
        return out
