"""The five decoding modes of DESIGN.md §2, as one table: a new mode is one row plus its tests.

| mode   | combine | gate       | paper row           | M   |
|--------|---------|------------|---------------------|-----|
| base   | none    | never      | one-shot backbone   | 0   |
| lst    | replace | always     | LLaMA + LST (S3)    | 1   |
| full   | add     | always     | S1 full integration | 1   |
| choice | replace | classifier | S2                  | < 1 |
| spa    | add     | classifier | SPA                 | < 1 |

*combine* says how the side network's output meets the backbone's final state (and so which
trained head a mode needs); *gate* says when the side network is used and so what M counts:
`never` → nothing; `always` → lockstep, every token waits for the edge's TOKEN (M = 1);
`classifier` → each REQUEST and each CORRECT (M < 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from routing.errors import InputError


class Combine(StrEnum):
    NONE = "none"  # backbone only
    ADD = "add"  # lm_head(z + Δ): the side network corrects the backbone
    REPLACE = "replace"  # lm_head(W_out·x): the side state alone (LST)


class Gate(StrEnum):
    NEVER = "never"
    ALWAYS = "always"  # lockstep: the worker waits for every TOKEN
    CLASSIFIER = "classifier"  # the edge's classifier decides per token


@dataclass(frozen=True)
class ModeSpec:
    combine: Combine
    gate: Gate
    paper_row: str


class Mode(StrEnum):
    BASE = "base"
    LST = "lst"
    FULL = "full"
    CHOICE = "choice"
    SPA = "spa"

    @property
    def spec(self) -> ModeSpec:
        return TABLE[self]

    @property
    def combine(self) -> Combine:
        return TABLE[self].combine

    @property
    def gate(self) -> Gate:
        return TABLE[self].gate

    @property
    def uses_side(self) -> bool:
        """The mode needs a side network (and the wire layers' hidden states)."""
        return self.combine is not Combine.NONE

    @property
    def lockstep(self) -> bool:
        """Every token waits for the edge: the worker must not decode ahead."""
        return self.gate is Gate.ALWAYS

    @property
    def gated(self) -> bool:
        """The edge's classifier decides per token (M < 1)."""
        return self.gate is Gate.CLASSIFIER

    @classmethod
    def parse(cls, value: str | Mode) -> Mode:
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InputError(f"unknown mode {value!r}: expected one of {names}") from None


TABLE: dict[Mode, ModeSpec] = {
    Mode.BASE: ModeSpec(Combine.NONE, Gate.NEVER, "one-shot backbone"),
    Mode.LST: ModeSpec(Combine.REPLACE, Gate.ALWAYS, "LLaMA + LST (S3)"),
    Mode.FULL: ModeSpec(Combine.ADD, Gate.ALWAYS, "S1 full integration"),
    Mode.CHOICE: ModeSpec(Combine.REPLACE, Gate.CLASSIFIER, "S2"),
    Mode.SPA: ModeSpec(Combine.ADD, Gate.CLASSIFIER, "SPA"),
}
assert set(TABLE) == set(Mode), "every mode has one row"

TRAIN_ALL = "all"  # `spa train --mode all`: every head any mode needs


def training_heads(name: str) -> list[Combine]:
    """The side-network heads a training run for mode `name` (or 'all') produces."""
    if name == TRAIN_ALL:
        return sorted({m.combine for m in Mode if m.uses_side})
    mode = Mode.parse(name)
    if not mode.uses_side:
        raise InputError(f"mode {name!r} uses no side network: nothing to train")
    return [mode.combine]


def training_choices() -> list[str]:
    """What `spa train --mode` accepts."""
    return [TRAIN_ALL] + [m.value for m in Mode if m.uses_side]


def parse_modes(text: str) -> list[Mode]:
    """Parse a comma-separated list such as 'base,lst,spa'."""
    modes = [Mode.parse(part.strip()) for part in text.split(",") if part.strip()]
    if not modes:
        raise InputError(f"no modes given in {text!r}")
    return modes
