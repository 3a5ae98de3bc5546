"""Who gets in (DESIGN.md §5): ZeroMQ CURVE on both broker sockets, ZAP allow-lists.

Key files are pyzmq's certificates: `NAME.key` (public) and `NAME.key_secret` (both halves).
`spa keys DIR` lays them out as

    DIR/broker.key, DIR/broker.key_secret      the broker's pair (its public half goes to everyone)
    DIR/workers/NAME.key[_secret]              workers: the broker allows the public keys here
    DIR/agents/NAME.key[_secret]               agents: a separate allow-list

The broker authenticates every connection through ZAP (domain "agents" or "workers"); ZeroMQ then
stamps each message with its sender's public key (`User-Id`), and a session belongs to that key.
Plaintext exists only behind an explicit `--plaintext` flag (local demos and tests).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from routing.errors import InputError

AGENTS, WORKERS = "agents", "workers"  # ZAP domains, one allow-list each
# Connection liveness of clients (agents, workers): a ZeroMQ heartbeat every CLIENT_HEARTBEAT_S;
# a connection that hears nothing for CLIENT_TIMEOUT_S is dropped and ZeroMQ reconnects (a new
# TCP connection). Above the broker's own timeout (BrokerConfig.zmq_timeout_s, 3 s), so the
# broker has let go of the dead connection's routing id when the client comes back with it.
CLIENT_HEARTBEAT_S, CLIENT_TIMEOUT_S, TCP_KEEPALIVE_S = 1.0, 4.0, 10


@dataclass(frozen=True)
class ServerKeys:
    """The broker's side: its own secret certificate and the two allow-list directories."""

    secret: Path
    agents: Path
    workers: Path

    @classmethod
    def from_dir(cls, keys: str | Path) -> ServerKeys:
        d = Path(keys)
        return cls(d / "broker.key_secret", d / AGENTS, d / WORKERS)


@dataclass(frozen=True)
class ClientKeys:
    """A worker's or an agent's side: its own secret certificate and the broker's public key."""

    secret: Path
    broker: Path

    @classmethod
    def from_dir(cls, keys: str | Path, role: str, name: str | None = None) -> ClientKeys:
        d = Path(keys)
        folder = d / (WORKERS if role == "worker" else AGENTS)
        if name is None:
            found = sorted(folder.glob("*.key_secret"))
            if not found:
                raise InputError(f"no {role} key in {folder} (create one with `spa keys {d}`)")
            return cls(found[0], d / "broker.key")
        return cls(folder / f"{name}.key_secret", d / "broker.key")


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise InputError(f"key file {path} does not exist (create keys with `spa keys DIR`)")
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read key file {path}: {exc}") from None
    if secret and not private:
        raise InputError(f"{path} holds no secret key (give the .key_secret file)")
    return public, private


def serve(sock: zmq.Socket, keys: ServerKeys, domain: str) -> None:
    """Make a broker socket a CURVE server in ZAP `domain` (call before bind)."""
    public, private = _load(keys.secret, secret=True)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = public, private
    sock.zap_domain = domain.encode()


def connect_as(sock: zmq.Socket, keys: ClientKeys) -> None:
    """Make a worker's or agent's socket a CURVE client of the broker (call before connect).

    The socket also gets a random 16-byte routing id (first byte non-zero) unless it has one:
    a ROUTER gives a peer without one a generated id `00 + counter`, and libzmq aborts the whole
    broker when a generated id is already taken by a peer that chose it (issue 20). Clients
    that choose their own ids never make the broker generate one."""
    public, private = _load(keys.secret, secret=True)
    broker_public, _ = _load(keys.broker, secret=False)
    sock.curve_publickey, sock.curve_secretkey = public, private
    sock.curve_serverkey = broker_public
    if not sock.getsockopt(zmq.ROUTING_ID):
        sock.setsockopt(zmq.ROUTING_ID, random_routing_id())
    keep_alive(sock, CLIENT_HEARTBEAT_S, CLIENT_TIMEOUT_S, TCP_KEEPALIVE_S)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)  # back-off while the broker is away


def keep_alive(sock: zmq.Socket, heartbeat_s: float, timeout_s: float, keepalive_s: int,
               peer_ttl_s: float | None = None) -> None:
    """Notice a dead path (dropped packets, an expired NAT mapping, a peer gone without a FIN)
    within `timeout_s`: ZeroMQ pings every `heartbeat_s` and drops a connection that has heard
    nothing for `timeout_s`, and asks the peer to drop it after `peer_ttl_s` (default the same;
    the broker asks a second more, so it has let go of a dead connection's routing id before the
    client reconnects with it); TCP keepalive under it for whatever ZeroMQ does not see. Call
    before bind/connect."""
    sock.setsockopt(zmq.HEARTBEAT_IVL, int(heartbeat_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(timeout_s * 1000))
    sock.setsockopt(zmq.HEARTBEAT_TTL, min(int((peer_ttl_s or timeout_s) * 1000), 6_553_500))
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, keepalive_s)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, max(1, keepalive_s // 3))
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)


def random_routing_id() -> bytes:
    """16 random bytes outside libzmq's reserved space (ids beginning with 0x00)."""
    rid = os.urandom(16)
    return bytes([rid[0] | 1]) + rid[1:]


def seed_routing_ids() -> None:
    """Seed the C library's `rand()` from the OS before a ROUTER is created.

    libzmq starts a ROUTER's generated routing ids (`00 + uint32 counter`) at `rand()`, which
    nothing seeds: every fresh broker generates the same ids (`00 e4 3c 98 69` first), so a
    client can claim the next one and the broker aborts when libzmq generates it for another
    peer (an assertion, SIGABRT). Seeded, the counter's start is one of 2**32 values the
    clients never see. Where libc cannot be reached this does nothing."""
    try:
        libc = ctypes.CDLL(None)
        libc.srand(ctypes.c_uint(int.from_bytes(os.urandom(4), "little")))
    except (OSError, AttributeError):
        pass


def start_authenticator(ctx: zmq.Context, keys: ServerKeys) -> ThreadAuthenticator:
    """ZAP handler with one allow-list per domain; connections with other keys are refused."""
    for folder in (keys.agents, keys.workers):
        if not folder.is_dir():
            raise InputError(f"allow-list directory {folder} does not exist")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain=AGENTS, location=str(keys.agents))
    auth.configure_curve(domain=WORKERS, location=str(keys.workers))
    return auth


def create_keys(out: str | Path, agents: list[str], workers: list[str]) -> list[Path]:
    """`spa keys`: the broker's pair (kept if present) and one pair per named agent and worker."""
    d = Path(out)
    made = []
    for folder, names in ((d, ["broker"]), (d / AGENTS, agents), (d / WORKERS, workers)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise InputError(f"key name {name!r}: use letters, digits, '-' and '_'")
            if not (folder / f"{name}.key_secret").is_file():
                zmq.auth.create_certificates(folder, name)
                (folder / f"{name}.key_secret").chmod(0o600)
                made.append(folder / f"{name}.key_secret")
    return made


def client_keys(args, role: str) -> ClientKeys | None:
    """The keys a client process (`role`: agent or worker) was given on its command line:
    `--keys DIR [--key-name N]`, or None with `--plaintext`."""
    if args.plaintext:
        return None
    if not args.keys:
        raise InputError("give --keys DIR (create it with `spa keys DIR`) or, for a local test, --plaintext")
    return ClientKeys.from_dir(args.keys, role, args.key_name)
