"""Wire protocol (DESIGN.md §4): ZeroMQ multipart `[envelope…, header, tensor frames…]`.

The header is a msgpack map {v, type, session, …, tensors: [{dtype, shape}]}; each tensor is one
raw frame sent with copy=False. Every message type has ONE typed definition below (`SPECS`): its
fields with their types and ranges (nested ones included), its tensor arity and who may send it.
`decode` checks a message against it in full — version, type, sender, every field, no unknown
field, frame count, dtype allow-list, prod(shape)·itemsize == len(frame), size limits — and raises
ProtocolError with an `ErrorCode` the receiver answers in an ERROR. `Limits.check` adds what only
the worker knows (vocabulary, layers, context). Nothing crashes, nothing is dropped silently.
The field kinds the specs are written in (`Int`, `Str`, `ListOf`, …) are in `routing/fields.py`;
everyone imports the contract from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import msgpack
import numpy as np

from routing.errors import ErrorCode
from routing.fields import MAX_POS as MAX_POS  # re-exported: the contract's names in one place
from routing.fields import Bytes, Float, Int, ListOf, Map, Optional, Str
from routing.modes import Mode
from routing.quant import WIRE_DTYPES, check_grid, check_wire

VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # 1 MiB: prompts of ~100k tokens; sane range 64 KiB – 16 MiB
MAX_TENSOR_BYTES = 64 << 20  # one tensor frame; sane range 1 – 256 MiB
MAX_TENSORS = 4
MAX_PROMPT = 1 << 17  # prompt tokens; the worker's context is the real bound
MAX_NEW = 1 << 20  # max_new_tokens before the context check
MAX_WINDOW = 256  # tokens decoded past the last ACK; bounds the worker's ring; sane range 1–256
MAX_WIRE_LAYERS = 256  # hidden states per position; the backbone's depth is the real bound
MAX_BATCH = 4096  # messages in one BATCH
MAX_BATCH_BYTES = 32 << 20  # one BATCH's packed frames; below the sockets' MAXMSGSIZE (80 MiB)
MAX_AGENT_SESSIONS = 1024  # sessions one agent heartbeat may list
SESSION_BYTES = 16
DTYPES = {"float16": np.float16, "float32": np.float32, "int32": np.int32, "int64": np.int64,
          "int8": np.int8, "uint8": np.uint8}  # int8 / uint8: quantised wire codes (routing/quant.py)
_NP_DTYPES = {k: np.dtype(v) for k, v in DTYPES.items()}


class MsgType(StrEnum):
    OPEN = "OPEN"
    FRAME = "FRAME"
    REQUEST = "REQUEST"
    HIDDEN = "HIDDEN"
    CORRECT = "CORRECT"
    ACK = "ACK"
    TOKEN = "TOKEN"
    DONE = "DONE"
    CLOSE = "CLOSE"
    ERROR = "ERROR"
    READY = "READY"
    HEARTBEAT = "HEARTBEAT"
    RECONNECT = "RECONNECT"  # broker → worker: "I do not know you, send READY" (Majordomo)
    BATCH = "BATCH"  # coalescing, several messages in one send: broker → worker, and worker → broker
    # when the broker's beats say it takes them (HEARTBEAT.batches)


class Role(StrEnum):
    AGENT = "agent"
    WORKER = "worker"
    BROKER = "broker"


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` goes into the ERROR answer."""

    def __init__(self, code: ErrorCode | str, detail: str, session: bytes | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.session = ErrorCode(code), detail, session


SESSION = Bytes(SESSION_BYTES)
POS, EPOCH, TOKEN_ID = Int(), Int(), Int()
SAMPLING = Map({"temperature": Float(0.0, 100.0), "top_k": Int(0, 1 << 20), "seed": Int(0, (1 << 63) - 1)})
FINGERPRINT = Str(128)


@dataclass(frozen=True)
class Spec:
    """One message type: required and optional fields with their kinds, tensor arity, senders."""

    fields: dict
    senders: frozenset
    tensors: tuple[int, int] = (0, 0)
    optional: dict = field(default_factory=dict)


A, W, B = Role.AGENT, Role.WORKER, Role.BROKER
SPECS: dict[MsgType, Spec] = {
    MsgType.OPEN: Spec({"session": SESSION, "prompt": ListOf(TOKEN_ID, 1, MAX_PROMPT),
                        "max_new_tokens": Int(1, MAX_NEW), "mode": Str(16, tuple(m.value for m in Mode)),
                        "window": Int(1, MAX_WINDOW), "sampling": SAMPLING, "fingerprint": FINGERPRINT,
                        "wire_layers": ListOf(Int(0, MAX_WIRE_LAYERS), 0, MAX_WIRE_LAYERS, unique=True),
                        "eos": Optional(TOKEN_ID)}, frozenset({A}),
                   # the device's M budget (issue 17): the edge's gate adapts τ to it and
                   # enforces it; worker and broker need not act on it
                   # wire_dtype (issue 22): int8/int4 frames; the OPEN then carries the grid, float16
                   # (len(wire_layers) + 1, d): the kit's per-channel scales of those layers and z
                   (0, 1), optional={"m_budget": Float(0.0, 1.0), "wire_dtype": Str(8, WIRE_DTYPES)}),
    MsgType.FRAME: Spec({"session": SESSION, "pos": POS, "epoch": EPOCH, "token": TOKEN_ID},
                        frozenset({W}), (1, 4)),  # z [+ wire layers], each fp16 or (codes, scales)
    MsgType.REQUEST: Spec({"session": SESSION, "pos": POS, "epoch": EPOCH}, frozenset({A})),
    MsgType.HIDDEN: Spec({"session": SESSION, "pos": POS, "epoch": EPOCH}, frozenset({W}), (1, 2)),
    MsgType.CORRECT: Spec({"session": SESSION, "pos": POS, "epoch": EPOCH, "token": TOKEN_ID},
                          frozenset({A})),
    MsgType.ACK: Spec({"session": SESSION, "pos": POS}, frozenset({A})),
    MsgType.TOKEN: Spec({"session": SESSION, "pos": POS, "epoch": EPOCH, "token": TOKEN_ID},
                        frozenset({A})),
    MsgType.DONE: Spec({"session": SESSION, "wasted": Int()}, frozenset({W})),
    MsgType.CLOSE: Spec({"session": SESSION}, frozenset({A, B})),
    MsgType.ERROR: Spec({"code": Str(64), "detail": Str(4096)}, frozenset({W, B}),
                        optional={"session": SESSION}),
    MsgType.READY: Spec({"fingerprint": FINGERPRINT, "capacity": Int(1, 1 << 16)}, frozenset({W})),
    # Both ways: worker → broker (load), agent → broker (the sessions it still holds: their
    # leases are renewed, a session the broker does not know is answered UNKNOWN_SESSION),
    # broker → both (its instance id: a new id means it restarted and forgot every session;
    # to a worker, `batches`: it takes BATCHes of up to that many messages from the worker).
    MsgType.HEARTBEAT: Spec({}, frozenset({A, W, B}),
                            optional={"load": Int(0, 1 << 20), "broker": Bytes(8), "batches": Int(0, MAX_BATCH),
                                      "sessions": ListOf(SESSION, 0, MAX_AGENT_SESSIONS)}),
    MsgType.RECONNECT: Spec({}, frozenset({B}), optional={"broker": Bytes(8)}),
    # BATCH: several messages in one send and two frames: this header and every message's frames
    # packed end to end; `counts` frames per message, `sizes` bytes per frame (ZeroMQ and CURVE
    # cost per frame, so one frame for a step's hundreds of FRAMEs, not hundreds)
    MsgType.BATCH: Spec({"counts": ListOf(Int(1, MAX_TENSORS + 1), 1, MAX_BATCH),
                         "sizes": ListOf(Int(0, MAX_BATCH_BYTES), 1, MAX_BATCH * (MAX_TENSORS + 1))},
                        frozenset({B, W})),
}
_TYPES = {t.value: t for t in MsgType}
# what an agent takes from the broker (anything else it answers FORBIDDEN)
TO_AGENT = frozenset({MsgType.FRAME, MsgType.HIDDEN, MsgType.DONE, MsgType.ERROR, MsgType.HEARTBEAT})


@dataclass
class Message:
    type: MsgType
    fields: dict = field(default_factory=dict)
    tensors: list[np.ndarray] = field(default_factory=list)

    @property
    def session(self) -> bytes | None:
        return self.fields.get("session")

    def __getitem__(self, key: str):
        return self.fields[key]

    def get(self, key: str, default=None):
        return self.fields.get(key, default)


def msg(type_: MsgType | str, tensors: list[np.ndarray] | None = None, **fields) -> Message:
    return Message(MsgType(type_), fields, tensors or [])


def error(code: ErrorCode, detail: str, session: bytes | None = None) -> Message:
    return msg(MsgType.ERROR, code=code.value, detail=detail[:4096],
               **({"session": session} if session else {}))


def encode(m: Message) -> list:
    header = {"v": VERSION, "type": m.type.value, **m.fields,
              "tensors": [{"dtype": t.dtype.name, "shape": list(t.shape)} for t in m.tensors]}
    return [msgpack.packb(header, use_bin_type=True)] + [np.ascontiguousarray(t).reshape(-1).view(np.uint8).data
                                                        for t in m.tensors]


def _buffer(frame) -> memoryview | bytes:
    return frame.buffer if hasattr(frame, "buffer") else frame


def _header(frames: list) -> dict:
    if not frames:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "no frames")
    raw = _buffer(frames[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"header of {len(raw)} bytes > {MAX_HEADER_BYTES}")
    try:  # limits keep a tiny header from expanding into a huge structure
        h = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_bin_len=MAX_HEADER_BYTES,
                            max_str_len=MAX_HEADER_BYTES, max_array_len=MAX_PROMPT,
                            max_map_len=64, max_ext_len=0)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is not msgpack: {str(exc)[:200]}") from None
    if type(h) is not dict:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"header is a {type(h).__name__}, not a map")
    return h


def decode(frames: list, tensors: bool = True, sender: Role | None = None) -> Message:
    """frames: [header, tensor…] (envelope already stripped). With tensors=False (a router that
    forwards the frames as they are) tensor frames are validated but not wrapped. With `sender`,
    a type that role may not send is refused."""
    h = _header(frames)
    sid = h.get("session")
    session = sid if type(sid) is bytes and len(sid) == SESSION_BYTES else None
    if h.get("v") != VERSION or type(h.get("v")) is not int:
        raise ProtocolError(ErrorCode.BAD_VERSION, f"protocol version {h.get('v')!r:.40}, expected {VERSION}", session)
    raw_type = h.get("type")
    t = _TYPES.get(raw_type) if type(raw_type) is str else None
    if t is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {raw_type!r:.40}", session)
    spec = SPECS[t]
    if sender is not None and sender not in spec.senders:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"{sender.value}s may not send {t.value}", session)
    fields = {}
    for name, value in h.items():
        if name in ("v", "type", "tensors"):
            continue
        kind = spec.fields.get(name) or spec.optional.get(name)
        if kind is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t.value} has unknown field {name!r:.40}", session)
        if (why := kind.check(value)) is not None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t.value}.{name} {why}", session)
        fields[name] = value
    for name in spec.fields:
        if name not in fields:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t.value} is missing field '{name}'", session)
    specs = h.get("tensors", [])
    if type(specs) is not list:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "tensors is not a list", session)
    if t is MsgType.BATCH:
        if specs:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "BATCH carries no tensors of its own")
        return Message(t, fields, [])
    lo, hi = spec.tensors
    if not lo <= len(specs) <= min(hi, MAX_TENSORS):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t.value} carries {len(specs)} tensors, allowed {lo}–{hi}", session)
    if len(frames) != 1 + len(specs):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{t.value}: {len(frames) - 1} tensor frames for "
                            f"{len(specs)} specs", session)
    arrays = [_tensor(s, f, session, tensors) for s, f in zip(specs, frames[1:], strict=True)]
    _check_wire(t, fields, specs, arrays, session)
    return Message(t, fields, arrays if tensors else [])


def _check_wire(t: MsgType, fields: dict, specs: list, arrays: list, session: bytes | None) -> None:
    """The wire tensors' structure: FRAME/HIDDEN states fp16 or quantised pairs, an OPEN's grid
    present exactly when its wire_dtype quantises (routing/quant.py)."""
    why = None
    if t in (MsgType.FRAME, MsgType.HIDDEN):
        why = check_wire(specs, arrays, 2 if t is MsgType.FRAME else 1)
    elif t is MsgType.OPEN:
        quantised = fields.get("wire_dtype", "fp16") != "fp16"
        if quantised != bool(specs):
            why = f"wire_dtype {fields.get('wire_dtype', 'fp16')} with {len(specs)} grid tensors"
        elif specs:
            why = check_grid(specs[0], arrays[0], len(fields["wire_layers"]) + 1)
    if why is not None:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"{t.value}: {why}", session)


def peek(frames: list) -> tuple[MsgType, bytes | None]:
    """(type, session) of a message to forward unchanged, for the broker's hot path from its own
    (authenticated) workers: the header is parsed, the rest is left to the receiving agent, which
    validates everything with `decode`. Raises ProtocolError on anything unparseable."""
    h = _header(frames)
    raw_type, session = h.get("type"), h.get("session")
    t = _TYPES.get(raw_type) if type(raw_type) is str else None
    if t is None or (session is not None and (type(session) is not bytes or len(session) != SESSION_BYTES)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"bad type or session in {raw_type!r:.40}")
    return t, session


def _tensor(spec: object, frame, session: bytes | None, wrap: bool = True) -> np.ndarray | None:
    if type(spec) is not dict or set(spec) != {"dtype", "shape"} or type(spec["dtype"]) is not str \
            or spec["dtype"] not in DTYPES or type(spec["shape"]) is not list:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"bad tensor spec {spec!r:.80} (dtypes: {sorted(DTYPES)})", session)
    shape = spec["shape"]
    if len(shape) > 4 or not all(type(n) is int and 0 <= n < 1 << 40 for n in shape):
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"bad tensor shape {shape!r:.80}", session)
    dtype = _NP_DTYPES[spec["dtype"]]
    buf = _buffer(frame)
    want = math.prod(shape) * dtype.itemsize
    if want > MAX_TENSOR_BYTES:
        raise ProtocolError(ErrorCode.TOO_LARGE, f"tensor of {want} bytes > {MAX_TENSOR_BYTES}", session)
    if (buf.nbytes if isinstance(buf, memoryview) else len(buf)) != want:
        raise ProtocolError(ErrorCode.BAD_TENSOR, f"tensor frame has {memoryview(buf).nbytes} bytes, shape {shape} "
                            f"{dtype.name} needs {want}", session)
    return np.frombuffer(buf, dtype=dtype).reshape(shape) if wrap else None  # a view: no copy


# ----------------------------------------------------------------------------- model limits
@dataclass(frozen=True)
class Limits:
    """What only the worker knows: its backbone's vocabulary, depth and context."""

    vocab: int
    n_layers: int
    context: int
    d_model: int = 0  # 0: not checked (an OPEN's grid width)

    def check(self, m: Message) -> None:
        """Raise BAD_MESSAGE/TOO_LARGE for a value the backbone cannot take."""
        sid = m.session
        if m.type is MsgType.OPEN:
            prompt, new = m["prompt"], m["max_new_tokens"]
            if len(prompt) + new > self.context:
                raise ProtocolError(ErrorCode.TOO_LARGE, f"prompt of {len(prompt)} tokens + max_new_tokens "
                                    f"{new} > context {self.context}", sid)
            bad = next((x for x in prompt if x >= self.vocab), None)
            if bad is not None:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"prompt token {bad} outside the vocabulary "
                                    f"[0, {self.vocab})", sid)
            if m["eos"] is not None and m["eos"] >= self.vocab:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"eos {m['eos']} outside [0, {self.vocab})", sid)
            if any(i >= self.n_layers for i in m["wire_layers"]):
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"wire_layers must lie in 0..{self.n_layers - 1}", sid)
            if m.tensors and self.d_model and (m.tensors[0].shape[1] != self.d_model or (
                    m.get("wire_dtype") == "int4" and self.d_model % 2)):
                raise ProtocolError(ErrorCode.BAD_TENSOR, f"grid of width {m.tensors[0].shape[1]} for a "
                                    f"backbone of d={self.d_model} ({m.get('wire_dtype')})", sid)
            return
        if m.type in (MsgType.CORRECT, MsgType.TOKEN) and m["token"] >= self.vocab:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{m.type.value} token {m['token']} outside "
                                f"[0, {self.vocab})", sid)
        if "pos" in m.fields and m["pos"] >= self.context:
            raise ProtocolError(ErrorCode.BAD_POSITION, f"{m.type.value} pos {m['pos']} >= context "
                                f"{self.context}", sid)
