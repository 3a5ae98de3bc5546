"""The five decoding modes of DESIGN.md §2: two settings, *combine* and *gate*.

| mode   | combine | gate       | paper row           | M   |
|--------|---------|------------|---------------------|-----|
| base   | —       | never      | one-shot backbone   | 0   |
| lst    | replace | always     | LLaMA + LST (S3)    | 1   |
| full   | add     | always     | S1 full integration | 1   |
| choice | replace | classifier | S2                  | < 1 |
| spa    | add     | classifier | SPA                 | < 1 |
"""

from __future__ import annotations

from enum import StrEnum

from routing.errors import InputError


class Mode(StrEnum):
    BASE = "base"
    LST = "lst"
    FULL = "full"
    CHOICE = "choice"
    SPA = "spa"

    @property
    def combine(self) -> str:
        """'add' (z + Δ), 'replace' (side state alone) or 'none' (backbone only)."""
        return {"base": "none", "lst": "replace", "full": "add", "choice": "replace", "spa": "add"}[
            self.value
        ]

    @property
    def gate(self) -> str:
        """'never', 'always' (lockstep, M = 1) or 'classifier' (M < 1)."""
        return {"base": "never", "lst": "always", "full": "always"}.get(self.value, "classifier")

    @property
    def lockstep(self) -> bool:
        """Every token waits for the edge: the worker must not decode ahead."""
        return self.gate == "always"

    @classmethod
    def parse(cls, value: str | Mode) -> Mode:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InputError(f"unknown mode {value!r}: expected one of {names}") from None


ALL_MODES: tuple[Mode, ...] = tuple(Mode)


def parse_modes(text: str) -> list[Mode]:
    """Parse a comma-separated list such as 'base,lst,spa'."""
    modes = [Mode.parse(part.strip()) for part in text.split(",") if part.strip()]
    if not modes:
        raise InputError(f"no modes given in {text!r}")
    return modes
