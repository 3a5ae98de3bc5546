"""Coalescing: several encoded messages in one send (the BATCH message). A BATCH is two frames:
its header (`counts` frames per message, `sizes` bytes per frame) and every message's frames packed
end to end, so ZeroMQ and CURVE pay per BATCH, not per frame; receivers slice it by memoryview."""

from __future__ import annotations

from collections.abc import Iterator

import msgpack

from routing.errors import ErrorCode
from routing.protocol import (
    MAX_BATCH,
    MAX_BATCH_BYTES,
    VERSION,
    Message,
    MsgType,
    ProtocolError,
    _buffer,
)


def encode_batch(messages: list[list]) -> list:
    """Coalesce already-encoded messages (lists of frames) into one BATCH send of two frames."""
    flat = [_buffer(f) for m in messages for f in m]
    head = msgpack.packb({"v": VERSION, "type": MsgType.BATCH.value, "counts": [len(m) for m in messages],
                          "sizes": [memoryview(f).nbytes for f in flat], "tensors": []}, use_bin_type=True)
    return [head, b"".join(flat)]


def coalesce(messages: list[list], most: int = MAX_BATCH) -> Iterator[tuple[list, int, int]]:
    """(frames to send, first, end) for `messages[first:end]`: a lone message as it is, runs of
    several as BATCHes of at most `most` messages and MAX_BATCH_BYTES packed bytes."""
    i, n = 0, len(messages)
    while i < n:
        j, size = i, 0
        while j < n and j - i < most:
            b = sum(memoryview(_buffer(f)).nbytes for f in messages[j])
            if j > i and size + b > MAX_BATCH_BYTES:
                break
            size, j = size + b, j + 1
        yield (messages[i] if j - i == 1 else encode_batch(messages[i:j])), i, j
        i = j


def split_batch(m: Message, frames: list) -> list[list]:
    """A BATCH's messages, each a list of frames (memoryviews into the packed frame: no copy)."""
    counts, sizes = m["counts"], m["sizes"]
    if len(frames) != 2:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"BATCH has {len(frames)} frames, expected 2")
    if sum(counts) != len(sizes):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"BATCH counts sum to {sum(counts)}, {len(sizes)} sizes")
    blob = memoryview(_buffer(frames[1])).cast("B")
    if sum(sizes) != blob.nbytes:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"BATCH sizes sum to {sum(sizes)}, {blob.nbytes} bytes follow")
    out, at, k = [], 0, 0
    for c in counts:
        part = []
        for size in sizes[k : k + c]:
            part.append(blob[at : at + size])
            at += size
        out.append(part)
        k += c
    return out
