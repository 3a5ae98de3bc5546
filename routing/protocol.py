"""Wire protocol (DESIGN.md §4): ZeroMQ multipart `[envelope…, header, tensor frames…]`.

The header is a msgpack map {v, type, session, …, tensors: [{dtype, shape}]}; each tensor is
one raw frame sent with copy=False. `decode` validates everything — protocol version, known
type, required fields and their types, frame count, dtype allow-list,
prod(shape)·itemsize == len(frame), size limits — and raises ProtocolError with a code the
receiver answers in an ERROR. Nothing crashes, nothing is dropped silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgpack
import numpy as np

VERSION = 1
MAX_HEADER_BYTES = 1 << 20  # 1 MiB: prompts of ~100k tokens; sane range 64 KiB – 16 MiB
MAX_TENSOR_BYTES = 64 << 20  # one tensor frame; sane range 1 – 256 MiB
MAX_TENSORS = 4
DTYPES = {"float16": np.float16, "float32": np.float32, "int32": np.int32, "int64": np.int64}
_NP_DTYPES = {k: np.dtype(v) for k, v in DTYPES.items()}

_INT, _STR, _BYTES, _LIST, _DICT, _OPT_INT = int, str, bytes, list, dict, (int, type(None))
# type -> required fields (besides v/type/tensors) and their Python types
SCHEMA: dict[str, dict[str, object]] = {
    "OPEN": {"session": _BYTES, "prompt": _LIST, "max_new_tokens": _INT, "mode": _STR,
             "window": _INT, "sampling": _DICT, "fingerprint": _STR, "wire_layers": _LIST,
             "eos": _OPT_INT},
    "FRAME": {"session": _BYTES, "pos": _INT, "epoch": _INT, "token": _INT},
    "REQUEST": {"session": _BYTES, "pos": _INT, "epoch": _INT},
    "HIDDEN": {"session": _BYTES, "pos": _INT, "epoch": _INT},
    "CORRECT": {"session": _BYTES, "pos": _INT, "epoch": _INT, "token": _INT},
    "ACK": {"session": _BYTES, "pos": _INT},
    "TOKEN": {"session": _BYTES, "pos": _INT, "epoch": _INT, "token": _INT},
    "DONE": {"session": _BYTES, "wasted": _INT},
    "CLOSE": {"session": _BYTES},
    "ERROR": {"code": _STR, "detail": _STR},
    "READY": {"fingerprint": _STR, "capacity": _INT},
    "HEARTBEAT": {"load": _INT},
    "BATCH": {"counts": _LIST},  # broker→worker coalescing: several messages in one send
}
TENSORS = {"FRAME": (1, 2), "HIDDEN": (1, 1)}  # (min, max) tensor frames; others take none
SESSION_BYTES = 16
_MISSING = object()


class ProtocolError(Exception):
    """A message that cannot be accepted; `code` goes into the ERROR answer."""

    def __init__(self, code: str, detail: str, session: bytes | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.session = code, detail, session


@dataclass
class Message:
    type: str
    fields: dict = field(default_factory=dict)
    tensors: list[np.ndarray] = field(default_factory=list)

    @property
    def session(self) -> bytes | None:
        return self.fields.get("session")

    def __getitem__(self, key: str):
        return self.fields[key]


def msg(type_: str, tensors: list[np.ndarray] | None = None, **fields) -> Message:
    return Message(type_, fields, tensors or [])


def encode(m: Message) -> list:
    header = {"v": VERSION, "type": m.type, **m.fields,
              "tensors": [{"dtype": t.dtype.name, "shape": list(t.shape)} for t in m.tensors]}
    return [msgpack.packb(header, use_bin_type=True)] + [np.ascontiguousarray(t).data for t in m.tensors]


def decode(frames: list, tensors: bool = True) -> Message:
    """frames: [header, tensor…] (envelope already stripped). With tensors=False (a router
    that forwards the frames as they are) tensor frames are validated but not wrapped."""
    if not frames:
        raise ProtocolError("BAD_MESSAGE", "no frames")
    raw = frames[0].buffer if hasattr(frames[0], "buffer") else frames[0]
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("TOO_LARGE", f"header of {len(raw)} bytes > {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(raw, raw=False)
    except Exception as exc:  # msgpack raises several types for garbage
        raise ProtocolError("BAD_MESSAGE", f"header is not msgpack: {exc}") from None
    if not isinstance(h, dict):
        raise ProtocolError("BAD_MESSAGE", "header is not a map")
    session = h.get("session") if isinstance(h.get("session"), bytes) else None
    if h.get("v") != VERSION:
        raise ProtocolError("BAD_VERSION", f"protocol version {h.get('v')!r}, expected {VERSION}", session)
    t = h.get("type")
    if t not in SCHEMA:
        raise ProtocolError("UNKNOWN_TYPE", f"unknown message type {t!r}", session)
    for name, typ in SCHEMA[t].items():
        value = h.get(name, _MISSING)
        if value is _MISSING:
            raise ProtocolError("BAD_MESSAGE", f"{t} is missing field '{name}'", session)
        if not isinstance(value, typ) or value is True or value is False:
            raise ProtocolError("BAD_MESSAGE", f"{t}.{name} has type {type(value).__name__}", session)
    if session is not None and len(session) != SESSION_BYTES:
        raise ProtocolError("BAD_MESSAGE", f"session id of {len(session)} bytes, expected {SESSION_BYTES}")
    specs = h.pop("tensors", [])
    if not isinstance(specs, list):
        raise ProtocolError("BAD_MESSAGE", "tensors is not a list", session)
    lo, hi = TENSORS.get(t, (0, 0)) if t != "BATCH" else (0, 1 << 30)
    if t != "BATCH":
        if not lo <= len(specs) <= hi or len(specs) > MAX_TENSORS:
            raise ProtocolError("BAD_MESSAGE", f"{t} carries {len(specs)} tensors, allowed {lo}–{hi}", session)
        if len(frames) != 1 + len(specs):
            raise ProtocolError("BAD_MESSAGE", f"{t}: {len(frames) - 1} tensor frames for {len(specs)} specs", session)
    arrays = [] if t == "BATCH" else [_tensor(s, f, session, tensors)
                                      for s, f in zip(specs, frames[1:], strict=True)]
    h.pop("v")
    h.pop("type")
    return Message(t, h, arrays if tensors else [])


def peek(frames: list) -> tuple[str, bytes | None]:
    """(type, session) of a message to forward unchanged, for the broker's hot path from its own
    workers: the header is parsed, the rest is left to the receiving agent, which validates
    everything with `decode`. Raises ProtocolError on anything unparseable."""
    try:
        h = msgpack.unpackb(frames[0], raw=False)
        t, session = h["type"], h.get("session")
    except Exception:
        raise ProtocolError("BAD_MESSAGE", "unparseable header") from None
    if t not in SCHEMA or (session is not None and not isinstance(session, bytes)):
        raise ProtocolError("BAD_MESSAGE", f"bad type or session in {t!r}")
    return t, session


def _tensor(spec: object, frame, session: bytes | None, wrap: bool = True) -> np.ndarray | None:
    if not isinstance(spec, dict) or spec.get("dtype") not in DTYPES or not isinstance(spec.get("shape"), list):
        raise ProtocolError("BAD_TENSOR", f"bad tensor spec {spec!r} (dtypes: {sorted(DTYPES)})", session)
    shape = spec["shape"]
    if not all(isinstance(n, int) and 0 <= n for n in shape) or len(shape) > 4:
        raise ProtocolError("BAD_TENSOR", f"bad tensor shape {shape!r}", session)
    dtype = _NP_DTYPES[spec["dtype"]]
    buf = frame.buffer if hasattr(frame, "buffer") else memoryview(frame)
    want = math.prod(shape) * dtype.itemsize
    if want > MAX_TENSOR_BYTES:
        raise ProtocolError("TOO_LARGE", f"tensor of {want} bytes > {MAX_TENSOR_BYTES}", session)
    if len(buf) != want:
        raise ProtocolError("BAD_TENSOR", f"tensor frame has {len(buf)} bytes, shape {shape} "
                            f"{dtype.name} needs {want}", session)
    return np.frombuffer(buf, dtype=dtype).reshape(shape) if wrap else None  # a view: no copy


def encode_batch(messages: list[list]) -> list:
    """Coalesce already-encoded messages (lists of frames) into one BATCH send."""
    head = msgpack.packb({"v": VERSION, "type": "BATCH", "counts": [len(m) for m in messages],
                          "tensors": []}, use_bin_type=True)
    return [head] + [f for m in messages for f in m]


def split_batch(m: Message, frames: list) -> list[list]:
    counts = m["counts"]
    if not all(isinstance(c, int) and c >= 1 for c in counts) or sum(counts) != len(frames) - 1:
        raise ProtocolError("BAD_MESSAGE", f"BATCH counts {counts} do not match {len(frames) - 1} frames")
    out, i = [], 1
    for c in counts:
        out.append(frames[i : i + c])
        i += c
    return out
