"""routing.modes: the table of DESIGN.md §2, one row per mode, and what follows from each row."""

import pytest

from routing.errors import InputError
from routing.modes import Combine, Gate, Mode, parse_modes, training_choices, training_heads

# DESIGN.md §2's table, written out independently of the code's.
DESIGN = {"base": ("none", "never"), "lst": ("replace", "always"), "full": ("add", "always"),
          "choice": ("replace", "classifier"), "spa": ("add", "classifier")}


def test_every_mode_has_its_design_row():
    assert {m.value for m in Mode} == set(DESIGN)
    for m in Mode:
        assert (m.combine.value, m.gate.value) == DESIGN[m.value]


def test_derived_properties():
    for m in Mode:
        assert m.uses_side == (m.combine is not Combine.NONE)
        assert m.lockstep == (m.gate is Gate.ALWAYS)
        assert m.gated == (m.gate is Gate.CLASSIFIER)
    assert [m for m in Mode if not m.uses_side] == [Mode.BASE]


def test_training_heads():
    assert training_heads("spa") == training_heads("full") == [Combine.ADD]
    assert training_heads("lst") == training_heads("choice") == [Combine.REPLACE]
    assert set(training_heads("all")) == {Combine.ADD, Combine.REPLACE}
    assert "base" not in training_choices() and "all" in training_choices()
    with pytest.raises(InputError):
        training_heads("base")


def test_parse():
    assert parse_modes(" spa, base ") == [Mode.SPA, Mode.BASE]
    for bad in ("", "spa,nope"):
        with pytest.raises(InputError):
            parse_modes(bad)
