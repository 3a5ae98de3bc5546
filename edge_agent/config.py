"""The edge agent's tunables, declared once (routing.config), apart from the agent itself so that
`spa agent`'s flags are made without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import Tunables, tunable
from routing.quant import WIRE_DTYPES


@dataclass
class AgentConfig(Tunables):
    window: int = tunable(8, 1, 256, "tokens the worker may decode past the last ACK")
    heartbeat_s: float = tunable(1.0, 0.05, 10.0, "agent → broker beats: lease renewal and the "
                                 "path's liveness (well under the broker's lease)")
    dead_after_s: float = tunable(6.0, 0.2, 60.0, "no answer from the broker this long: the path "
                                  "is dead, a new socket, every session replays (ZeroMQ's own "
                                  "heartbeat drops a dead connection after routing.security."
                                  "CLIENT_TIMEOUT_S; this is the backstop)")
    hwm: int = tunable(100_000, 1_000, 1_000_000, "ZeroMQ high-water marks of the socket (messages)")
    wire_dtype: str = tunable("fp16", help="how the cloud sends z and hidden states: fp16, or int8 / "
                              "int4 codes on the edge kit's per-channel grid (fewer bytes per token)",
                              choices=WIRE_DTYPES)
    inline_compute: bool = tunable(False, help="edge compute on the event loop's own thread "
                                   "(default: a compute thread)")
    compute_device: str = tunable("cpu", help="where the edge's gate, side network and lm_head run: "
                                  "cpu (a phone), or cuda for a load tester simulating hundreds of "
                                  "devices beside a GPU (same arithmetic, batched across sessions)",
                                  choices=("cpu", "cuda"))
