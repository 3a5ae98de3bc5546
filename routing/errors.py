"""Errors that carry state.

`SpaError` is what a user sees: the CLI prints its message and exits with status 2, never a
traceback. Each error names what was wrong (Petals style: `f"... session={s} pos={p}"`).
"""

from __future__ import annotations

from enum import StrEnum


class SpaError(Exception):
    """A user-facing error: bad input, a missing file, a mismatched bundle."""

    code = "ERROR"


class InputError(SpaError):
    """A file, record or argument that cannot be used."""

    code = "BAD_INPUT"


class FingerprintMismatch(SpaError):
    """An edge bundle built for another backbone."""

    code = "BACKBONE_MISMATCH"

    def __init__(self, expected: str, actual: str, what: str = "bundle") -> None:
        super().__init__(
            f"{what} was built for backbone {expected[:16]}… but this backbone is {actual[:16]}…"
            f" (full fingerprints: expected={expected} actual={actual})"
        )
        self.expected = expected
        self.actual = actual


def read_text(path, what: str) -> str:
    """A UTF-8 text file's contents, or an InputError naming `what` and the path."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {what} {path}: {exc}") from None


class ErrorCode(StrEnum):
    """Every code an ERROR message can carry (DESIGN.md §4–5). A StrEnum: it travels as its
    string. `retryable`: the agent re-opens the session (replay) after a back-off instead of
    failing; `ends_session`: the session it names is freed on broker and worker."""

    BAD_MESSAGE = "BAD_MESSAGE"  # a field missing, of the wrong type or out of range
    BAD_VERSION = "BAD_VERSION"  # another protocol version
    UNKNOWN_TYPE = "UNKNOWN_TYPE"  # no such message type
    FORBIDDEN = "FORBIDDEN"  # a type this sender may not send (an agent sending FRAME, …)
    BAD_TENSOR = "BAD_TENSOR"  # tensor spec or frame size wrong
    TOO_LARGE = "TOO_LARGE"  # header, tensor or prompt over its limit
    BAD_POSITION = "BAD_POSITION"  # pos/epoch that do not fit the session's state
    NO_STATE = "NO_STATE"  # REQUEST for hidden states the ring no longer holds
    UNKNOWN_SESSION = "UNKNOWN_SESSION"  # no such session (closed, expired, or a broker restart)
    NOT_OWNER = "NOT_OWNER"  # the session belongs to another key
    DUPLICATE_SESSION = "DUPLICATE_SESSION"  # OPEN of an id that is open already
    BACKBONE_MISMATCH = "BACKBONE_MISMATCH"  # the session wants another backbone
    NO_WORKER = "NO_WORKER"  # no live worker serves the backbone
    BUSY = "BUSY"  # overload: worker, broker queue or per-agent limit full
    WORKER_LOST = "WORKER_LOST"  # the session's worker stopped answering
    BROKER_RESTARTED = "BROKER_RESTARTED"  # the broker restarted and forgot the session
    LEASE_EXPIRED = "LEASE_EXPIRED"  # the agent was silent longer than its lease
    SLOW_AGENT = "SLOW_AGENT"  # the agent does not read what it asked for
    INTERNAL = "INTERNAL"  # the worker failed on this session (not the message's fault)
    TIMEOUT = "TIMEOUT"  # the agent heard nothing for its silence timeout
    REVOKED = "REVOKED"  # the sender's key was removed from the broker's allow-list

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE

    @property
    def ends_session(self) -> bool:
        """False where ending it would let a stranger close someone else's session, or where
        there is nothing to end."""
        return self not in (ErrorCode.NOT_OWNER, ErrorCode.DUPLICATE_SESSION,
                            ErrorCode.UNKNOWN_SESSION)

    @classmethod
    def of(cls, code: str) -> ErrorCode | None:
        try:
            return cls(code)
        except ValueError:
            return None


# Transient: the same request may succeed later (the agent replays, a load tester tries again).
RETRYABLE = frozenset({
    ErrorCode.NO_WORKER, ErrorCode.BUSY, ErrorCode.WORKER_LOST, ErrorCode.BROKER_RESTARTED,
    ErrorCode.UNKNOWN_SESSION, ErrorCode.LEASE_EXPIRED, ErrorCode.SLOW_AGENT, ErrorCode.INTERNAL,
    ErrorCode.TIMEOUT,
})
