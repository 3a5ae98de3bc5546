"""routing.config: one declaration per tunable gives its flag, default, range check and help."""

import argparse
from dataclasses import dataclass

import pytest

from routing.config import Tunables, tunable
from routing.errors import InputError


@dataclass
class Example(Tunables):
    rate: float = tunable(0.5, 0.01, 60, "beats per second")
    slots: int = tunable(64, 1, 4096, "open sessions at most")
    fast: bool = tunable(True, help="take the fast path")
    engine: str = tunable("auto", help="which engine", choices=("auto", "paged"))
    hidden: int = tunable(3, 0, 9, flag=False)


def parse(argv, **kw):
    p = argparse.ArgumentParser()
    Example.add_arguments(p, **kw)
    return p, p.parse_args(argv)


def test_flags_defaults_and_round_trip():
    p, args = parse([])
    assert Example.from_args(args) == Example()
    _, args = parse(["--rate", "2", "--slots", "8", "--fast", "off", "--engine", "paged"])
    cfg = Example.from_args(args)
    assert (cfg.rate, cfg.slots, cfg.fast, cfg.engine) == (2.0, 8, False, "paged")
    assert "sane range 1–4096" in p.format_help() and "--hidden" not in p.format_help()


def test_ranges_types_and_choices_refused():
    for bad in ({"rate": 0.0}, {"slots": 5000}, {"slots": 2.5}, {"slots": True},
                {"fast": "yes"}, {"engine": "hf"}):
        with pytest.raises(InputError, match=next(iter(bad))):
            Example(**bad)
    with pytest.raises(SystemExit):
        parse(["--engine", "hf"])


def test_replace_validates_and_keeps_the_original():
    cfg = Example()
    assert cfg.replace(slots=8).slots == 8 and cfg.slots == 64
    with pytest.raises(InputError):
        cfg.replace(slots=0)


def test_command_defaults_and_skip():
    p, args = parse([], defaults={"slots": 4}, skip=("engine",))
    assert args.slots == 4 and not hasattr(args, "engine")
    assert Example.from_args(args).engine == "auto"
