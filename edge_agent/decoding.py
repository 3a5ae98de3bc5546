"""The per-token state machine of DESIGN.md §4, written once.

The edge agent's `Stream` (over sockets), the single-process reference generator and the
batched generator all drive one `Decoder` per sequence; none of them repeats its logic:

    frame(pos, epoch, base token, gate decision) ──▶ EMIT    accept the backbone token
                                                 ──▶ REQUEST ask for HIDDEN(pos, epoch), then side()
                                                 ──▶ SIDE    lockstep: the frame carries the states
    side(side token)                             ──▶ EMIT    with send = None | CORRECT | TOKEN

The decoder owns the position, the epoch, the tokens and their paths, and the transmission
counts (M). It computes nothing itself: the gate decision and the side token come from
`EdgeModel`, one sequence at a time or batched, so the arithmetic stays with its callers.

M counts each exchange once: a session re-opened after a failure (`reopen`, Petals-style
replay) re-fires the same position, and its REQUEST is sent again but not counted again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from edge_agent.budget import BudgetConfig, BudgetGate
from routing.errors import InputError
from routing.modes import Mode
from routing.protocol import MsgType
from routing.transmissions import Transmissions

if TYPE_CHECKING:
    from edge_agent.edge_model import EdgeModel


class Act(StrEnum):
    EMIT = "emit"  # a token is out; `send` names the message that goes with it
    REQUEST = "request"  # send REQUEST(pos, epoch), await HIDDEN, then call side()
    SIDE = "side"  # lockstep: the frame carried the states; compute and call side()


@dataclass(frozen=True)
class Step:
    act: Act
    pos: int
    epoch: int
    token: int = -1  # EMIT: the token accepted at `pos`
    path: str = "base"  # EMIT: 'base' or 'side'
    send: MsgType | None = None  # EMIT: None, CORRECT (rollback) or TOKEN (lockstep)
    counted: bool = False  # REQUEST: counted in M (False for a replay's repeat)
    done: bool = False  # EMIT: the sequence ended (EOS or max_new_tokens)


def check_request(prompt_ids: list[int], max_new_tokens: int) -> None:
    if not prompt_ids:
        raise InputError("empty prompt: give at least one token")
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")


@dataclass
class Decoder:
    """One sequence's decoding state. `pos` is the position the next token takes."""

    mode: Mode
    max_new: int
    eos: int | None  # None: run to max_new
    pos: int  # = len(prompt) at the start
    stats: Transmissions = field(default_factory=Transmissions)
    epoch: int = 0
    tokens: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # 'base' or 'side' per token
    corrected: list[bool] = field(default_factory=list)  # a CORRECT was sent for the token
    gates: list[float] = field(default_factory=list)  # classifier probability g_t per token
    differs: list[bool] = field(default_factory=list)  # side consulted and disagreed (any mode)
    finished_by: str = ""  # '' while running, then 'eos' or 'length'
    budget: BudgetGate | None = None  # a per-session M budget: it decides instead of τ and the rules
    lead: int = 0  # the first `lead` tokens consult the side network whatever the gate says
    follow: int = 0  # … and the `follow` tokens after one where the side's token differed
    copy: int = 0  # … and a token whose backbone choice breaks a copy of the prompt (copy_next)
    copy_next: dict[tuple[int, ...], frozenset[int]] = field(default_factory=dict)
    _base: int = -1  # the backbone token of the frame in hand
    _gate: float = 0.0
    _pending: Act | None = None  # REQUEST or SIDE awaiting side()
    _requested: set[int] = field(default_factory=set)  # positions whose REQUEST was counted

    @classmethod
    def start(cls, mode: Mode, max_new: int, eos: int | None, prompt: Sequence[int],
              edge: EdgeModel | None = None, budget: BudgetConfig | None = None,
              stats: Transmissions | None = None) -> Decoder:
        """A sequence's decoder as the agent, the reference and the batched generator all make
        it: the bundle's lead, follow and copy rules and the session's budget gate (None: the
        fixed τ); it starts at position len(prompt)."""
        head = edge.head_for(mode) if edge is not None and mode.gated else None
        k = head.copy if head else 0
        return cls(mode, max_new, eos, len(prompt), stats if stats is not None else Transmissions(),
                   budget=BudgetGate.of(budget, edge, mode), lead=head.lead if head else 0,
                   follow=head.follow if head else 0, copy=k, copy_next=copy_index(prompt, k))

    @property
    def done(self) -> bool:
        return bool(self.finished_by)

    def current(self, pos: int, epoch: int) -> bool:
        """Is a frame for (pos, epoch) the one this decoder waits for? Others are stale."""
        return not self.done and self._pending is None and pos == self.pos and epoch == self.epoch

    def frame(self, base_token: int, fire: bool, g: float = 0.0) -> Step:
        """The backbone's token for `pos` and the gate's decision on its z_t."""
        if self.done or self._pending is not None:
            raise RuntimeError(f"decoder not ready for a frame: pos={self.pos} done={self.done} "
                               f"pending={self._pending}")
        self._base, self._gate = base_token, g
        if len(self.tokens) < self.lead:  # the answer's opening is the side network's
            fire = True
        if self.follow and any(self.differs[-self.follow:]):  # a phrase the side began goes on
            fire = True
        if self.copy and self.breaks_copy(base_token):  # the backbone leaves the prompt's words
            fire = True
        if self.budget is not None:  # the budget's own τ, adapted to the running M
            fire = self.budget.decide(self.pos, g, self.stats)
        if not fire or not self.mode.uses_side:
            return self._emit(base_token, "base", None)
        if self.mode.lockstep:
            self._pending = Act.SIDE
            return Step(Act.SIDE, self.pos, self.epoch)
        self._pending = Act.REQUEST
        counted = self.pos not in self._requested
        if counted:
            self._requested.add(self.pos)
            self.stats.requests += 1  # REQUEST → HIDDEN
        return Step(Act.REQUEST, self.pos, self.epoch, counted=counted)

    def breaks_copy(self, base_token: int) -> bool:
        """The answer's last `copy` tokens occur in the prompt, and `base_token` continues none
        of those occurrences: the backbone would leave a copy under way (a message the answer
        passes on, a quote), where on its own it drifts into its own words."""
        if len(self.tokens) < self.copy:
            return False
        nxt = self.copy_next.get(tuple(self.tokens[-self.copy:]))
        return nxt is not None and base_token not in nxt

    def side(self, side_token: int) -> Step:
        """The side-augmented token for the position in hand."""
        if self._pending is None:
            raise RuntimeError(f"side token without a pending request: pos={self.pos}")
        lockstep, self._pending = self._pending is Act.SIDE, None
        if lockstep:
            self.stats.lockstep += 1  # the worker waits for every TOKEN
            return self._emit(side_token, "side", MsgType.TOKEN)
        if side_token != self._base:
            self.stats.corrections += 1  # CORRECT → rollback, a new epoch
            step = self._emit(side_token, "side", MsgType.CORRECT)
            self.epoch += 1
            return step
        return self._emit(side_token, "side", None)

    def reopen(self) -> None:
        """The session was re-opened with prompt + accepted tokens: a new worker, epoch 0, and
        the position in hand (if any) comes again."""
        self.epoch, self._pending = 0, None

    def _emit(self, token: int, path: str, send: MsgType | None) -> Step:
        step_epoch = self.epoch
        self.tokens.append(token)
        self.paths.append(path)
        self.corrected.append(send is MsgType.CORRECT)
        self.gates.append(self._gate)
        self.differs.append(path == "side" and token != self._base)
        self.stats.tokens += 1
        self.stats.side_used += path == "side"
        pos, self.pos = self.pos, self.pos + 1
        if self.eos is not None and token == self.eos:
            self.finished_by = "eos"
        elif len(self.tokens) >= self.max_new:
            self.finished_by = "length"
        return Step(Act.EMIT, pos, step_epoch, token, path, send, done=self.done)


def copy_index(prompt: Sequence[int], k: int) -> dict[tuple[int, ...], frozenset[int]]:
    """Each run of `k` prompt tokens -> the tokens that follow it in the prompt (k = 0: {}).
    One entry per prompt position at most: bounded by the prompt, which the session bounds."""
    if k <= 0:
        return {}
    nxt: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(prompt) - k):
        nxt.setdefault(tuple(prompt[i : i + k]), set()).add(int(prompt[i + k]))
    return {key: frozenset(v) for key, v in nxt.items()}
