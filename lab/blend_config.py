"""The settings of `spa pool build` and `spa blend` (issue 19), apart from the code that uses
them so that building the command line imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from routing.config import Tunables, tunable


@dataclass
class PoolConfig(Tunables):
    records: int = tunable(40, 8, 2000, "records per member (the last tenth is its dev split)")
    base_epochs: int = tunable(3, 1, 20, "epochs of the shared start θ0 on the union")
    epochs: int = tunable(4, 1, 40, "epochs of each member from θ0 (early stopping on dev NLL)")
    max_prompt_tokens: int = tunable(128, 32, 1024, "prompt tokens kept (XSum documents are cut)")
    every: int = tunable(1, 1, 6, "every k-th backbone layer travels (the members' wire layers)")
    seed: int = tunable(0, 0, 2**31 - 1, "of the sentence shuffle and of training")


@dataclass
class BlendConfig(Tunables):
    max_examples: int = tunable(16, 2, 64, "the user's examples used (the first ones)")
    steps: int = tunable(60, 0, 1000, "Adam steps on the K coefficients (at most, with coef_keep "
                         "'turn' and its patience)")
    lr: float = tunable(0.15, 1e-4, 2.0, "Adam's step size on the coefficients")
    l2: float = tunable(0.01, 0.0, 10.0, "pull of the coefficients towards θ0 (w = 0)")
    coef_cap: float = tunable(0.0, 0.0, 20.0, "soft cap (nats) on each position's NLL in the "
                              "coefficient fit, c·tanh(nll/c): a member wrong on a few tokens "
                              "(another signature) is not vetoed by them (0: plain mean)")
    coef_on: str = tunable("copies", help="the positions the coefficient fit sees: all, or only "
                           "those copied from the prompt (the skill the pool holds; the user's "
                           "own words are the tuning's; all when none is copied)",
                           choices=("all", "copies"))
    coef_own: float = tunable(0.0, 0.0, 1.0, "with coef_on 'copies': weight of the user's own words' "
                              "mean NLL beside the copied positions' (a tie-breaker along a flat "
                              "valley of the copies' loss; 0: copies only)")
    coef_keep: str = tunable("turn", help="the coefficients kept: the last step's, or (with coef_on "
                             "'copies') the step's with the lowest NLL at the first token of each "
                             "copied run — the turn from the user's own words into the message, "
                             "which a flat valley of the copies' mean leaves undecided (the "
                             "default since RESULTS §10.11; 'last' with steps 15, l2 1e-3 before)",
                             choices=("last", "turn"))
    coef_patience: int = tunable(8, 0, 1000, "with coef_keep 'turn': the fit stops once the turn's "
                                 "NLL has not improved for this many steps (0: all `steps`)")
    candidates: int = tunable(32, 2, 4096, "top tokens per position and network in the softmax")
    max_positions: int = tunable(1024, 16, 65536, "answer positions the coefficients see")
    max_prompt_tokens: int = tunable(128, 16, 1024, "prompt tokens kept, as in the pool")
    tune_steps: int = tunable(20, 0, 200, "Adam steps on all side-network weights after the blend (0: none)")
    tune_lr: float = tunable(1e-3, 1e-5, 1e-1, "their step size")
    tune_params: str = tunable("all", help="which side-network weights the tuning steps move: all, "
                               "or only the output projection W_out", choices=("all", "out"))
    tune_dropout: bool = tunable(True, help="the side network's dropout on during the tuning steps")
    tune_anchor: float = tunable(0.0, 0.0, 10.0, "L2 pull of the tuned weights towards the blend's")
    tune_copies: str = tunable("keep", help="the tuning at positions copied from the prompt: fit "
                               "their tokens, or keep the blend's distribution there",
                               choices=("fit", "keep"))
    tune_no_stop: bool = tunable(True, help="with 'keep': the end-of-answer token pushed down "
                                 "inside a copied run (the answer goes on)")
    tune_holdout: float = tunable(0.0, 0.0, 0.5, "share of the examples held back to pick the step (0: last)")
    lead: str = tunable("none", help="the answer's first tokens that always consult the side "
                        "network: none (the gate decides), or 'turn' — the opening the examples "
                        "share, and the word after it where the side network is right there more "
                        "often than the backbone (lab.blend_gate.lead_tokens)",
                        choices=("none", "turn"))
    follow: int = tunable(1, 0, 4, "after a token where the side network's differed from the "
                          "backbone's, this many next tokens consult it whatever the gate says "
                          "(the rest of a phrase the user owns: \"Arr, | Captain Bo.\"; 0: the "
                          "gate alone; RESULTS §10.10)")
    copy: int = tunable(1, 0, 8, "a copy of the prompt under way (the answer's last `copy` tokens "
                        "occur in the prompt) whose next token the backbone would not continue "
                        "consults the side network whatever the gate says: the backbone on its "
                        "own drifts from the message into its own words (0: off; "
                        "edge_agent/decoding.py; RESULTS §10.12)")
    clf_epochs: int = tunable(6, 0, 40, "epochs of the classifier on the examples' positions")
    clf_features: str = tunable("z+stats", help="the gate's input", choices=("z", "z+stats"))
    clf_hidden: int = tunable(64, 0, 256, "the gate's hidden width (0 = linear)")
    gate_labels: str = tunable("both", help="the gate's training labels (lab/blend_gate.py): "
                               "the mixture likelihood, the side's measured gain, or both",
                               choices=("mixture", "gain", "both"))
    tau_rule: str = tunable("rate", help="τ: at a fire rate, or at a recall of the side's gain",
                            choices=("rate", "gain"))
    fire_rate: float = tunable(0.4, 0.0, 1.0, "τ 'rate': the gate fires on this share of the examples' positions")
    gain_recall: float = tunable(0.9, 0.5, 1.0, "τ 'gain': it fires on this share of the positions the side helps")
    threads: int = tunable(2, 1, 64, "torch threads (the device's cores)")
    seed: int = tunable(0, 0, 2**31 - 1, "of the tuning's dropout and the classifier's batches")
