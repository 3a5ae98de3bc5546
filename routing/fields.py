"""The field kinds of the message contract (`routing/protocol.py`): each checks one decoded
msgpack value — its exact type, its range or length, nested lists and maps item by item — and
returns None or why the value is refused. Pure checks: the contract itself (which message has
which fields) lives in `routing/protocol.py` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_POS = (1 << 31) - 1  # positions, epochs, token ids before the model's own bounds


@dataclass(frozen=True)
class Int:
    lo: int = 0
    hi: int = MAX_POS

    def check(self, v: object) -> str | None:
        if type(v) is not int:
            return f"is {type(v).__name__}, expected int"
        return None if self.lo <= v <= self.hi else f"= {v} outside [{self.lo}, {self.hi}]"


@dataclass(frozen=True)
class Float:
    lo: float
    hi: float

    def check(self, v: object) -> str | None:
        if type(v) not in (int, float):
            return f"is {type(v).__name__}, expected a number"
        return None if math.isfinite(v) and self.lo <= v <= self.hi else f"= {v} outside [{self.lo}, {self.hi}]"


@dataclass(frozen=True)
class Str:
    max_len: int
    choices: tuple[str, ...] = ()

    def check(self, v: object) -> str | None:
        if type(v) is not str:
            return f"is {type(v).__name__}, expected str"
        if len(v) > self.max_len:
            return f"has {len(v)} characters > {self.max_len}"
        return None if not self.choices or v in self.choices else f"= {v[:32]!r}, expected one of {self.choices}"


@dataclass(frozen=True)
class Bytes:
    size: int

    def check(self, v: object) -> str | None:
        if type(v) is not bytes:
            return f"is {type(v).__name__}, expected bytes"
        return None if len(v) == self.size else f"has {len(v)} bytes, expected {self.size}"


@dataclass(frozen=True)
class ListOf:
    """A list of `item`s, its length within [min_len, max_len]."""

    item: object
    min_len: int
    max_len: int
    unique: bool = False

    def check(self, v: object) -> str | None:
        if type(v) is not list:
            return f"is {type(v).__name__}, expected a list"
        if not self.min_len <= len(v) <= self.max_len:
            return f"has {len(v)} items, allowed {self.min_len}–{self.max_len}"
        check = self.item.check
        for i, x in enumerate(v):
            if (why := check(x)) is not None:
                return f"[{i}] {why}"
        if self.unique and len(set(v)) != len(v):
            return "has repeated items"
        return None


@dataclass(frozen=True)
class Map:
    """A nested map with fixed keys (all optional), each of its own kind."""

    fields: dict

    def check(self, v: object) -> str | None:
        if type(v) is not dict:
            return f"is {type(v).__name__}, expected a map"
        for k, x in v.items():
            kind = self.fields.get(k) if type(k) is str else None
            if kind is None:
                return f"has unknown key {k!r:.40}"
            if (why := kind.check(x)) is not None:
                return f".{k} {why}"
        return None


@dataclass(frozen=True)
class Optional:
    kind: object

    def check(self, v: object) -> str | None:
        return None if v is None else self.kind.check(v)
