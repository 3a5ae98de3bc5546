"""Every metric of the system, defined once (DESIGN.md §6).

Names `spa_…`, base units (seconds, bytes), `_total` counters, bounded labels only: mode,
message type, direction, error code, path, kind, wire dtype — never a session or agent id. M is not a gauge:
it is `spa_blocking_transmissions_total / spa_tokens_generated_total`, divided in PromQL by the
recording rules in monitoring/prometheus/rules.yml.

Each process serves its registry on /metrics (`serve(port)`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from routing.modes import Mode
from routing.protocol import SPECS, TO_AGENT, MsgType, Role

REGISTRY = CollectorRegistry(auto_describe=True)

# Buckets chosen for each quantity's range.
_LATENCY_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_EDGE_RTT = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_SIDE = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
_STEP = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)

# ---- agents (edge) -------------------------------------------------------------------
TOKENS = Counter("spa_tokens_generated", "Generated tokens, by the path that produced them and "
                 "how the session's z and hidden states came (wire_dtype: fp16, int8, int4)",
                 ["mode", "path", "wire_dtype"], registry=REGISTRY)
BLOCKING = Counter("spa_blocking_transmissions", "Exchanges the token stream waits on "
                   "(request, correct, lockstep): the numerator of M", ["mode", "kind"],
                   registry=REGISTRY)
SESSIONS_FINISHED = Counter("spa_sessions_finished", "Generations finished, by outcome",
                            ["mode", "outcome"], registry=REGISTRY)
REPLAYS = Counter("spa_session_replays", "Sessions re-opened on another worker after WORKER_LOST",
                  registry=REGISTRY)
STALE_FRAMES = Counter("spa_speculative_frames_dropped", "Frames of old epochs the agent dropped",
                       ["mode"], registry=REGISTRY)
TTFT = Histogram("spa_time_to_first_token_seconds", "Time to first token", ["mode"],
                 buckets=_TTFT, registry=REGISTRY)
ITL = Histogram("spa_inter_token_latency_seconds", "Time between consecutive tokens", ["mode"],
                buckets=_LATENCY_TOKEN, registry=REGISTRY)
EDGE_RTT = Histogram("spa_edge_round_trip_seconds", "REQUEST → HIDDEN round trip seen by the agent",
                     buckets=_EDGE_RTT, registry=REGISTRY)
SIDE_COMPUTE = Histogram("spa_side_compute_seconds", "Side network + lm_head time per token",
                         ["mode"], buckets=_SIDE, registry=REGISTRY)
BUDGET_GAP = Histogram("spa_session_budget_gap", "|M − b| of each finished session that had an M "
                       "budget b (issue 17)", ["mode"],
                       buckets=(0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0), registry=REGISTRY)

# ---- every process: messages ----------------------------------------------------------
MESSAGES = Counter("spa_messages", "Protocol messages, by type and direction",
                   ["component", "type", "direction"], registry=REGISTRY)
BYTES = Counter("spa_message_bytes", "Protocol bytes, by type and direction; an agent's also by "
                "its session's wire dtype (fp16, int8, int4; empty for messages of no live session "
                "and for the broker's and workers')",
                ["component", "type", "direction", "wire_dtype"], registry=REGISTRY)
ERRORS = Counter("spa_errors", "ERROR answers and internal faults, by code",
                 ["component", "code"], registry=REGISTRY)

# ---- broker ---------------------------------------------------------------------------
LIVE_WORKERS = Gauge("spa_live_workers", "Workers with a recent heartbeat", registry=REGISTRY)
ACTIVE_SESSIONS = Gauge("spa_active_sessions", "Open sessions", ["component"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("spa_broker_queue_depth", "Messages waiting in the per-worker outboxes at flush",
                    registry=REGISTRY)
ADMISSION_QUEUE = Gauge("spa_broker_admission_queue", "OPENs waiting at the broker for a free worker slot",
                        registry=REGISTRY)
ADMISSION_WAIT = Histogram("spa_broker_admission_wait_seconds", "Time an OPEN waited for a slot "
                           "before it was placed (part of time to first token)", buckets=_TTFT,
                           registry=REGISTRY)
BROKER_DROPPED = Counter("spa_broker_dropped", "Messages the broker did not deliver, by reason (not "
                         "errors: late frames of closed sessions, peers gone, answers over a key's "
                         "budget)", ["reason"], registry=REGISTRY)

# ---- worker ---------------------------------------------------------------------------
STEP = Histogram("spa_backbone_step_seconds", "One batched backbone forward", buckets=_STEP,
                 registry=REGISTRY)
BATCH = Histogram("spa_batch_size", "Sessions in one backbone forward", buckets=_BATCH,
                  registry=REGISTRY)
ROLLBACKS = Counter("spa_rollbacks", "CORRECT rollbacks applied by workers", registry=REGISTRY)
WASTED = Counter("spa_speculative_tokens_wasted", "Tokens decoded ahead and thrown away on rollback",
                 registry=REGISTRY)


def message_bytes(component: str, type_: str, direction: str, wire_dtype: str = "") -> Counter:
    """The bytes counter of one (component, type, direction[, an agent session's wire dtype])."""
    return BYTES.labels(component, type_, direction, wire_dtype)


def count_message(component: str, type_: str, direction: str, nbytes: int,
                  wire_dtype: str = "") -> None:
    MESSAGES.labels(component, type_, direction).inc()
    BYTES.labels(component, type_, direction, wire_dtype).inc(nbytes)


def init_agent_series(modes: list[str], wire_dtypes: list[str] = ("fp16",)) -> None:
    """Create an agent's per-mode series at 0 before any traffic. Rates over a window that
    starts before the first token are then exact (numerator and denominator of M extrapolated
    alike), and dashboards show 0 rather than 'no data'. Modes without a side network carry no
    frames: their series have no wire dtype (label "")."""
    for mode in modes:
        wires = wire_dtypes if Mode.parse(mode).uses_side else ("",)
        for path in ("base", "side"):
            for wire in wires:
                TOKENS.labels(mode, path, wire)
        for kind in ("request", "correct", "lockstep"):
            BLOCKING.labels(mode, kind)
        for outcome in ("eos", "length", "cancelled", "error"):
            SESSIONS_FINISHED.labels(mode, outcome)
        for family in (STALE_FRAMES, TTFT, ITL, SIDE_COMPUTE):
            family.labels(mode)
    # a session's bytes each way by its wire dtype: at 0 too, else a series born mid-run is
    # rated from its first scrape and the per-dtype bytes per token come out short (or 0)
    # (heartbeats are connection-wide: label "")
    outs = [t for t, s in SPECS.items() if Role.AGENT in s.senders and t is not MsgType.HEARTBEAT]
    ins = TO_AGENT - {MsgType.HEARTBEAT}
    # and the message counts likewise: a run shorter than a scrape interval gives series born
    # between two scrapes one sample before the last scrape, and rate() over them nothing
    framed = any(Mode.parse(m).uses_side for m in modes)  # else every session's label is ""
    for direction, types in (("out", outs), ("in", ins)):
        for type_ in types:
            MESSAGES.labels("agent", type_, direction)
            for wire in wire_dtypes if framed else ():
                BYTES.labels("agent", type_, direction, wire)


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Serve /metrics on `addr`:`port` (0 = off); loopback unless told otherwise."""
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
