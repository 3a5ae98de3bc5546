"""The load test's tunables, declared once (`routing.config.Tunables`): `spa loadtest`'s flags are
generated from these fields, and the service-level objectives of `--goodput` are parsed here.

Two ways to offer load:
- closed loop (no `--request-rate`): `--concurrency` users, each runs one generation after the
  other (with `--think` between), as many sessions in flight as users;
- open loop (`--request-rate R`): requests arrive at R per second whatever the system answers
  (Poisson, or gamma with `--burstiness`; `inf` sends them all at once), at most
  `--max-concurrency` in flight (0 = no cap). A comma list of rates is a sweep, one row per rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from routing.config import Tunables, tunable
from routing.errors import InputError
from routing.modes import Mode, parse_modes
from routing.quant import WireDtype, parse_wire_dtypes

SLO_METRICS = ("ttft", "tpot", "e2el")  # vLLM's names; `e2e` is accepted for `e2el`


def parse_rates(text: str) -> list[float]:
    """'1,2,4,inf' → [1.0, 2.0, 4.0, inf]; '' → [] (closed loop)."""
    rates = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            r = float(part)
        except ValueError:
            raise InputError(f"--request-rate: {part!r} is not a number or 'inf'") from None
        if math.isnan(r) or r <= 0:
            raise InputError(f"--request-rate: {part!r} must be > 0 (or 'inf')")
        rates.append(r)
    return rates


def parse_goodput(text: str) -> dict[str, float]:
    """'ttft:200 tpot:50 e2e:3000' (milliseconds; spaces or commas) → {'ttft': 0.2, 'tpot': 0.05,
    'e2el': 3.0} in seconds. A request is *good* when it meets every SLO given."""
    slos: dict[str, float] = {}
    for part in text.replace(",", " ").split():
        name, sep, value = part.partition(":")
        name = "e2el" if name == "e2e" else name
        if not sep or name not in SLO_METRICS:
            raise InputError(f"--goodput: {part!r}: expected NAME:MS with NAME one of ttft, tpot, e2e")
        try:
            ms = float(value)
        except ValueError:
            raise InputError(f"--goodput: {part!r}: {value!r} is not a number of milliseconds") from None
        if not 0 < ms < math.inf:
            raise InputError(f"--goodput: {part!r}: the bound must be > 0 ms")
        slos[name] = ms / 1000
    return slos


@dataclass
class LoadConfig(Tunables):
    broker: str = tunable("tcp://127.0.0.1:5555", help="the broker's agent address")
    broker_metrics: str = tunable("", help="the broker's /metrics URL: OPENs it placed and their "
                                  "mean wait in its admission queue, per run")
    modes: str = tunable("spa", help="comma list of modes, taken in turn (e.g. spa,full,base)")
    wire_dtype: str = tunable("fp16", help="how the cloud sends z and hidden states: fp16, int8 or "
                              "int4 (the edge kit's grid); a comma list such as fp16,int8 gives "
                              "the simulated devices these in turn (request i: the "
                              "(i // number of modes)-th, so every mode runs with each)")
    compute_device: str = tunable("cpu", help="where the simulated devices' gate, side network and "
                                  "lm_head run, batched across this process's sessions: cpu, or cuda "
                                  "beside a GPU stack (enough simulated devices to load it)",
                                  choices=("cpu", "cuda"))
    concurrency: int = tunable(8, 1, 4096, "closed loop: simulated users, each one session at a time")
    request_rate: str = tunable("", help="open loop: requests per second arriving (Poisson unless "
                                "--burstiness; 'inf' = all at once); a comma list such as "
                                "1,2,4,8,inf is a sweep; empty = closed loop")
    burstiness: float = tunable(1.0, 0.01, 100.0, "open loop: shape of the gamma inter-arrival "
                                "times (1 = Poisson, < 1 burstier, > 1 more regular)")
    max_concurrency: int = tunable(0, 0, 100_000, "open loop: sessions in flight at most, later "
                                   "arrivals wait for a slot (0 = no cap)")
    num_prompts: int = tunable(0, 0, 10_000_000, "requests per run (per rate of a sweep), "
                               "warm-up not included (0 = until --duration)")
    duration: float = tunable(0.0, 0.0, 1e6, "seconds per run (per rate of a sweep); 0 = until "
                              "--num-prompts")
    warmup: int = tunable(0, 0, 100_000, "requests run first and left out of the figures")
    max_new_tokens: int = tunable(32, 1, 8192, "tokens per generation at most")
    max_prompt_tokens: int = tunable(384, 1, 100_000, "longer prompts are cut")
    window: int = tunable(8, 1, 64, "tokens a worker may decode past the last ACK")
    think: float = tunable(0.0, 0.0, 3600.0, "closed loop: seconds between a user's generations")
    ramp: float = tunable(0.0, 0.0, 3600.0, "closed loop: seconds over which users start")
    backoff: float = tunable(1.0, 0.01, 60.0, "seconds before a refused request (BUSY, NO_WORKER) "
                             "is tried again, jittered by up to half")
    session_timeout: float = tunable(120.0, 0.1, 86_400.0, "a generation still running after "
                                     "this long is abandoned and counted as TIMEOUT")
    temperature: float = tunable(0.0, 0.0, 10.0, "sampling temperature (0 = greedy)")
    top_k: int = tunable(0, 0, 1_000_000, "sampling top-k (0 = off)")
    seed: int = tunable(0, 0, 2**31 - 1, "seed of sampling and arrivals")
    report: float = tunable(5.0, 0.0, 3600.0, "a progress line every N s when not on a terminal "
                            "(0 = none; a terminal gets a progress bar)")
    sample: float = tunable(0.5, 0.05, 60.0, "seconds between samples of tok/s and M over time")
    goodput: str = tunable("", help="SLOs in ms, e.g. 'ttft:200 tpot:50 e2e:3000'", flag=False)

    def validate(self):
        super().validate()
        parse_modes(self.modes)
        parse_wire_dtypes(self.wire_dtype)
        parse_rates(self.request_rate)
        parse_goodput(self.goodput)
        if not self.request_rate and self.max_concurrency:
            raise InputError("--max-concurrency caps an open loop: give --request-rate too "
                             "(a closed loop has --concurrency)")
        if math.inf in self.rates and not self.num_prompts:
            raise InputError("--request-rate inf sends every request at once: give --num-prompts")
        if len(self.rates) > 1 and not (self.num_prompts or self.duration):
            raise InputError("a --request-rate sweep needs --num-prompts or --duration per rate")
        return self

    @property
    def mode_list(self) -> list[Mode]:
        return [Mode.parse(m) for m in parse_modes(self.modes)]

    @property
    def wire_list(self) -> list[WireDtype]:
        return parse_wire_dtypes(self.wire_dtype)

    @property
    def rates(self) -> list[float]:
        return parse_rates(self.request_rate)

    @property
    def slos(self) -> dict[str, float]:
        return parse_goodput(self.goodput)
