"""Errors that carry state.

`SpaError` is what a user sees: the CLI prints its message and exits with status 2, never a
traceback. Each error names what was wrong (Petals style: `f"... session={s} pos={p}"`).
"""

from __future__ import annotations


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
