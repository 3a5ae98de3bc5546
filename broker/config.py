"""Every tunable of the broker, each declared once with its sane range and help.

`spa broker` makes a flag of each field (`--lease-s`, `--queue-max`, …) with
`BrokerConfig.add_arguments`; construction refuses values outside the ranges with an InputError
naming the field. Nobody mutates a config it was handed: `cfg.replace(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import Tunables, tunable


@dataclass
class BrokerConfig(Tunables):
    # liveness of workers (protocol beats) and of every connection (ZeroMQ and TCP)
    heartbeat_s: float = tunable(0.5, 0.01, 60, "seconds between beats to workers; match the workers'")
    liveness: int = tunable(4, 2, 100, "beats a worker may miss before it is dead")
    zmq_heartbeat_s: float = tunable(
        1.0, 0.1, 60, "ZeroMQ connection heartbeat (HEARTBEAT_IVL) on both broker sockets")
    zmq_timeout_s: float = tunable(
        3.0, 0.3, 600, "a connection silent this long is dropped (HEARTBEAT_TIMEOUT; peers are "
        "asked to drop it a second later: TTL); keep it below routing.security.CLIENT_TIMEOUT_S")
    tcp_keepalive_s: int = tunable(10, 1, 7200, "TCP keepalive idle seconds (probes every third of it)")
    # sessions: leases, per-key limits, admission queue
    lease_s: float = tunable(
        10.0, 0.1, 3600, "a session with no progress (a message of its agent for it) this long is "
        "freed; while OPENs wait for a slot, heartbeats alone no longer renew it")
    max_agent_sessions: int = tunable(256, 1, 65536, "open sessions per agent key (hard cap)")
    queue_max: int = tunable(1024, 0, 65536, "OPENs waiting for a free slot, all keys; 0 = BUSY at once")
    queue_per_key: int = tunable(256, 1, 65536, "OPENs one agent key may have waiting")
    queue_bytes_max: int = tunable(64 << 20, 1 << 20, 1 << 34, "bytes of waiting OPENs, all keys")
    queue_wait_s: float = tunable(30.0, 0.1, 3600, "an OPEN waiting longer than this is answered BUSY")
    # what the broker holds per key and per session (memory bounds, RESULTS.md)
    max_requests_in_flight: int = tunable(
        8, 1, 256, "REQUESTs of one session unanswered; a session's HIDDENs stay within its FRAMEs "
        "plus this many (a REQUEST flood cannot multiply the largest message)")
    max_key_connections: int = tunable(
        64, 1, 4096, "connections (routing ids) one agent key is served on at a time; one silent "
        "for a lease is forgotten")
    key_errors_per_s: float = tunable(
        200.0, 1, 1e6, "ERROR answers per second to one agent key (burst 4×); more are dropped, counted")
    # workers
    worker_capacity_max: int = tunable(
        4096, 1, 1 << 16, "the most sessions the broker places on one worker, whatever it announces")
    worker_unanswered_max: int = tunable(
        256, 1, 65536, "OPENs placed on one worker it has not answered yet (a worker that claims much "
        "and serves nothing takes little); a burst of OPENs is placed this many per worker round trip")
    # queues and loop
    outbox_max: int = tunable(20_000, 1, 1_000_000, "messages queued for one worker per tick")
    hwm: int = tunable(10_000, 100, 1_000_000, "ZeroMQ high-water marks (messages per peer)")
    tick_ms: int = tunable(50, 1, 1000, "idle poll timeout (ms)")
    drain_max: int = tunable(1024, 1, 100_000, "messages read per socket per tick before flushing")
    term_timeout_s: float = tunable(2.0, 0.1, 60, "at shutdown, how long to wait for ZeroMQ's "
                                    "context to terminate before exiting anyway")
    # allow-lists
    reload_s: float = tunable(2.0, 0, 3600, "re-read the key directories this often (0 = on SIGHUP only)")
