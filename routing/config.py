"""Tunables declared once: each config field carries its default, sane range and help.

A process's config is a frozen-by-convention dataclass whose fields are made with `tunable()`:

    @dataclass
    class BrokerConfig(Tunables):
        heartbeat_s: float = tunable(0.5, 0.01, 60, "beat to workers")

`BrokerConfig.add_arguments(parser)` makes `--heartbeat-s` with that default, type and help;
`BrokerConfig.from_args(args)` builds the config back; construction validates every field
against its range and raises an InputError naming the field. Nobody mutates a config it was
handed: derive a new one with `dataclasses.replace(cfg, field=value)` (which validates again).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_type_hints

from routing.errors import InputError


def tunable(default: Any, lo: float | None = None, hi: float | None = None, help: str = "",
            choices: tuple[str, ...] | None = None, flag: bool = True) -> Any:
    """A config field with its sane range [lo, hi] (inclusive), its help text, and, for
    strings, its allowed `choices`. `flag=False` keeps it off the command line."""
    meta = {"lo": lo, "hi": hi, "help": help, "choices": choices, "flag": flag}
    return field(default=default, metadata=meta)


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


@dataclass
class Tunables:
    """Base of every process config: range checks on construction, flags from the fields."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self):
        name = type(self).__name__
        hints = get_type_hints(type(self))
        for f in fields(self):
            v = getattr(self, f.name)
            lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
            kind = hints.get(f.name)
            if kind is bool:
                if not isinstance(v, bool):
                    raise InputError(f"{name}.{f.name}={v!r}: expected true or false")
                continue
            if kind in (int, float) and (isinstance(v, bool) or not isinstance(v, int | float)
                                         or (kind is int and not isinstance(v, int))):
                raise InputError(f"{name}.{f.name}={v!r}: expected {kind.__name__}")
            if lo is not None and hi is not None and not lo <= v <= hi:
                raise InputError(f"{name}.{f.name}={v!r} outside its sane range {lo}–{hi}")
            if choices is not None and v not in choices:
                raise InputError(f"{name}.{f.name}={v!r}: expected one of {', '.join(choices)}")
        return self

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple[str, ...] = (),
                      defaults: dict[str, Any] | None = None) -> None:
        """A flag per field (`max_sessions` → `--max-sessions`), help from the declaration.
        `defaults` overrides a default for this command only (e.g. a test-sized load)."""
        hints = get_type_hints(cls)
        for f in fields(cls):
            if f.name in skip or not f.metadata.get("flag", True):
                continue
            default = (defaults or {}).get(f.name, f.default if f.default is not MISSING
                                           else f.default_factory())  # type: ignore[misc]
            lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
            text = f.metadata.get("help", "")
            if lo is not None and hi is not None:
                text += f" (sane range {lo}–{hi}"
                text += f"; default {default})" if default is not None else ")"
            elif default is not None:
                text += f" (default {default})"
            kind = hints[f.name]
            flag = "--" + f.name.replace("_", "-")
            if kind is bool:
                parser.add_argument(flag, type=_bool, default=default, metavar="BOOL", help=text)
            else:
                parser.add_argument(flag, type=kind if kind in (int, float, str) else str,
                                    default=default, choices=choices, help=text)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **given: Any):
        """The config of parsed flags (validated); `given` fills fields that have no flag."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values.update(given)
        return cls(**values)

    def replace(self, **changes: Any):
        """A new, validated config with `changes`; the original stays as it was."""
        return dataclasses.replace(self, **changes)
