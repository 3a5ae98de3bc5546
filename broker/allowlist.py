"""Allow-lists read again while the broker runs (issue 20 item 5).

ZAP checks a key only at the handshake, so a removed key's open connections would go on. The
broker therefore keeps the set of allowed public keys (Z85 text, as ZeroMQ stamps each message's
`User-Id`) per domain, re-reads the directories every `reload_s` (when their listing or a file
changed) and on SIGHUP, reconfigures the ZAP handler for new connections, and checks every
message's key against the current set.
"""

from __future__ import annotations

import logging
from pathlib import Path

import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from routing import security

log = logging.getLogger("spa.broker")


def _stamp(folder: Path) -> tuple:
    """What changes when a key file is added, removed or replaced."""
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.glob("*.key")))
    except OSError:
        return ()


def _keys(folder: Path) -> frozenset[bytes]:
    try:
        return frozenset(zmq.auth.load_certificates(str(folder)))
    except (OSError, ValueError) as exc:  # a half-written file: keep the last good list
        raise RuntimeError(f"cannot read allow-list {folder}: {exc}") from None


class AllowLists:
    def __init__(self, keys: security.ServerKeys, auth: ThreadAuthenticator) -> None:
        self.folders = {security.AGENTS: keys.agents, security.WORKERS: keys.workers}
        self.auth = auth
        self.allowed: dict[str, frozenset[bytes]] = {}
        self.stamps: dict[str, tuple] = {}
        self.reload(force=True)

    def allows(self, domain: str, key: bytes) -> bool:
        return key in self.allowed[domain]

    def reload(self, force: bool = False) -> dict[str, frozenset[bytes]]:
        """Re-read the changed directories; returns {domain: keys removed} (empty if none)."""
        removed: dict[str, frozenset[bytes]] = {}
        for domain, folder in self.folders.items():
            stamp = _stamp(folder)
            if not force and stamp == self.stamps.get(domain):
                continue
            try:
                now = _keys(folder)
            except RuntimeError as exc:
                log.warning("%s", exc)
                continue
            old = self.allowed.get(domain, frozenset())
            self.allowed[domain], self.stamps[domain] = now, stamp
            self.auth.configure_curve(domain=domain, location=str(folder))  # new handshakes
            if not force and (old - now or now - old):
                log.info("allow-list %s: %d keys (%d removed, %d added)", domain, len(now),
                         len(old - now), len(now - old))
            if old - now:
                removed[domain] = old - now
        return removed
