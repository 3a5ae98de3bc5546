"""`TrainConfig`: every knob of `spa train` (lab/training.py) with its default and sane range,
declared once (`spa train`'s flags read their defaults from these fields: spa/lab_commands.py);
per-combine overrides (`parse_overrides`); the dev split. Importing it loads no torch, so the
CLI's parser can.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from routing.errors import InputError
from routing.modes import training_choices

if TYPE_CHECKING:
    from edge_agent.side_network import SideConfig
    from lab.data import Example

LST_REPLACE = {"side_kind": "lst", "width_div": 1, "dropout": 0.1, "lr": 3e-3}
CLF_OBJECTIVES = ("onpolicy", "mixture", "both")


@dataclass
class TrainConfig:
    mode: str = "all"  # spa|full|lst|choice|all: which side networks to train
    target_m: float = 0.62  # sane range 0.05–1.0
    lam: float = 0.05  # λ of the mixture objective, price of using the side; sane range 0–1
    epochs: int = 10  # at most; early stopping on dev NLL; sane range 3–40
    patience: int = 3  # epochs without a better dev NLL before stopping; sane range 1–10
    clf_epochs: int = 6
    lr: float = 1e-3  # peak learning rate; sane range 3e-4–5e-3
    schedule: str = "onecycle"  # onecycle | cosine | constant
    weight_decay: float = 0.3  # AdamW; sane range 0–0.5
    dropout: float = 0.3  # on the side state; sane range 0–0.5
    batch: int = 256  # positions per step
    dev_fraction: float = 0.1
    max_prompt_tokens: int = 384
    max_answer_tokens: int = 64
    width: int = 0  # side width r; 0 = d / width_div
    width_div: int = 8  # r = d / width_div when width is 0; sane range 2–16
    every: int = 1  # every k-th backbone layer travels; sane range 1–6
    layers: list[int] = field(default_factory=list)  # explicit layers (overrides every)
    gates: bool = False
    side_kind: str = "spa"  # 'spa' (edge_agent/side_network.py) or 'lst' (LST's ladder network)
    warm_start: bool = True
    # The gate: z plus the backbone distribution's entropy / top-1 / margin (from the edge's own
    # lm_head copy), a 64-wide hidden layer — dev AUC 0.797 → 0.897 on XSum (RESULTS.md §7.1)
    clf_features: str = "z+stats"  # z | z+stats (the backbone distribution's confidence)
    clf_hidden: int = 64  # 0 = linear; sane range 0–256
    clf_objective: str = "both"  # onpolicy | mixture | both
    rollout_prompts: int = 0  # prompts for on-policy classifier data; 0 = all
    rollout_tokens: int = 48  # tokens per rollout and per calibration generation
    calib_prompts: int = 0  # dev prompts for τ; 0 = all dev records
    calib_steps: int = 8  # bisection steps on the firing rate; sane range 4–12
    # How τ is chosen on the dev prompts (issue 17 item 2): "m" — the highest firing rate whose
    # measured M stays within target_m; "quality" — the lowest whose dev Rouge-L (greedy, against
    # the dev references) reaches tau_quality × the side-always run's (target_m is then unused)
    tau_by: str = "m"
    tau_quality: float = 0.97  # sane range 0.8–1.0
    # the answer's first lead_tokens always consult the side network (a persona's opening);
    # calibration measures M with them; sane range 0–16
    lead_tokens: int = 0
    gen_batch: int = 64  # sequences per backbone forward in rollouts; 8–1024
    feature_tokens: int = 16384  # padded tokens per feature-extraction forward; 2k–256k
    seed: int = 0
    # fp16 | int8 | int4: the wire the heads are trained for (issue 22): the side network, the
    # classifier and τ see z and the hidden states through this grid, as served (backbone frozen)
    wire_dtype: str = "fp16"
    # Per combine, fields that differ for its head. The defaults above were chosen on the XSum
    # dev split with SmolLM2-135M (benchmarks/spa_select.py, RESULTS.md §1). The replacing head
    # (lst/choice) is LST as Sung et al. build it (edge_agent/ladder.py: a ladder from every
    # layer, gated, started from the backbone's principal directions) without reduction (r = d:
    # any r < d bounds its output into lm_head — a rank-288 reading of z costs 1 nat, and r = 2
    # was 2.6 Rouge-L below base on XSum; r = 1 is 1.5–2.0 above it, paired intervals excluding
    # zero on three seeds, RESULTS.md §7.7), at LST's higher learning rate; the older network:
    # {"width_div": 4, "dropout": 0.1} (issue 17 item 1).
    overrides: dict = field(default_factory=lambda: {"replace": LST_REPLACE})

    def __post_init__(self) -> None:
        if self.mode not in training_choices():
            raise InputError(f"unknown training mode {self.mode!r}: expected {training_choices()}")
        if not 0.0 <= self.target_m <= 1.0:
            raise InputError(f"target M must be in [0, 1], got {self.target_m}")
        if self.lam < 0:
            raise InputError(f"lambda must be >= 0, got {self.lam}")
        if self.epochs < 1 or self.clf_epochs < 0:
            raise InputError("epochs must be >= 1 and classifier epochs >= 0")
        if not 0.0 < self.dev_fraction < 1.0:
            raise InputError(f"dev fraction must be in (0, 1), got {self.dev_fraction}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise InputError(f"unknown schedule {self.schedule!r}: onecycle, cosine or constant")
        if self.clf_objective not in CLF_OBJECTIVES:
            raise InputError(f"unknown classifier objective {self.clf_objective!r}: {CLF_OBJECTIVES}")
        if not 0 <= self.lead_tokens <= 16:
            raise InputError(f"lead_tokens must be in [0, 16], got {self.lead_tokens}")
        if self.tau_by not in ("m", "quality"):
            raise InputError(f"unknown tau_by {self.tau_by!r}: expected m or quality")
        if not 0.5 <= self.tau_quality <= 1.0:
            raise InputError(f"tau_quality must be in [0.5, 1], got {self.tau_quality}")
        if not 0.0 <= self.dropout < 1.0 or self.weight_decay < 0:
            raise InputError("dropout must be in [0, 1) and weight decay >= 0")

    def for_combine(self, combine: str) -> TrainConfig:
        return dataclasses.replace(self, **self.overrides.get(combine, {}), overrides={})

    def side_config(self, d_model: int, n_layers: int) -> SideConfig:
        from edge_agent.side_network import SideConfig  # torch: not at import (the CLI's flags)

        width = self.width or max(8, d_model // self.width_div)
        return SideConfig(d_model, n_layers, width=width, layers=list(self.layers),
                          every=self.every, gates=self.gates, dropout=self.dropout,
                          kind=self.side_kind)


def parse_overrides(text: str) -> dict:
    """'replace:width=144,dropout=0.1;add:every=2' -> {"replace": {"width": 144, …}, …}."""
    import json

    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"mode", "overrides"}
    out: dict = {}
    for part in filter(None, (x.strip() for x in text.split(";"))):
        combine, _, kvs = part.partition(":")
        if combine not in ("add", "replace") or not kvs:
            raise InputError(f"bad override {part!r}: expected add:KEY=VALUE,… or replace:KEY=VALUE,…")
        for kv in kvs.split(","):
            k, _, v = kv.partition("=")
            if k not in fields or not v:
                raise InputError(f"bad override {kv!r} in {part!r}: keys are {sorted(fields)}")
            try:
                value = json.loads(v)
            except json.JSONDecodeError:
                value = v
            out.setdefault(combine, {})[k] = value
    return out


def split_dev(examples: list[Example], cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    n_dev = max(1, int(round(len(examples) * cfg.dev_fraction)))
    return examples[:-n_dev], examples[-n_dev:]
