"""Stop 36: the blend of one source tree, per user × seed × recipe — its time, coefficients, kept
step, τ, and the full and spa answers (token ids) and Rouge-L on held-out prompts — so that two
trees (before/after a change that should only make the blend faster) can be compared answer for
answer by same_blend_compare.py (local 120-record pool of §10.4, 16 examples, 2 CPU threads).

    python results/cpu_2026-12-05c/same_blend.py TREE OUT.json N USERS SEEDS [RECIPES]
    (TREE: the repository root whose lab/ is imported, e.g. a `git worktree` of the old commit;
    RECIPES: name:key=value,key=value;name2:… instead of the default and the turn rule)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

TREE = Path(sys.argv[1]).resolve()
sys.path[:0] = [str(TREE), str(TREE / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

from lab.blend import blend  # noqa: E402
from lab.evaluate import Evaluator, rouge_scores  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402
from routing.modes import Mode  # noqa: E402
from routing.transmissions import Transmissions  # noqa: E402

RECIPES = {"default": {}, "turn": {"steps": 60, "l2": 0.01, "coef_keep": "turn"}}


def answers(ev: Evaluator, mode: Mode, test: list) -> dict:
    """The mode's answers (token ids), Rouge-L per record and M on the held-out records."""
    gens = ev.gen.generate([ev.prompt(ex) for ex in test], ev.max_new_tokens, mode, desc=mode.value)
    scores = rouge_scores(ev.scorer, ev.tok, [ex.answer for ex in test], [g.tokens for g in gens])
    stats = Transmissions()
    for g in gens:
        stats += g.stats
    return {"rouge_l": statistics.fmean(scores), "m": stats.m, "scores": scores,
            "tokens": [list(g.tokens) for g in gens]}


def parse(default: object, text: str) -> object:
    """A recipe value of the default's type."""
    return text.lower() in ("1", "true") if isinstance(default, bool) else type(default)(text)


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    out_path, n = Path(sys.argv[2]), int(sys.argv[3])
    users, seeds = sys.argv[4].split(","), [int(s) for s in sys.argv[5].split(",")]
    recipes = RECIPES if len(sys.argv) < 7 else {
        name: {k: parse(getattr(cfg, k), v) for k, v in (kv.split("=") for kv in over.split(",") if kv)}
        for name, over in (r.split(":", 1) for r in sys.argv[6].split(";"))}
    out = {"tree": str(TREE), "runs": {}}
    for u in users:
        recs = style_records(STYLES[u], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens,
                             corpus_file())
        train, test = recs[:300], recs[300 : 300 + n]
        for s in seeds:
            for name, over in recipes.items():
                edge, rec = blend(bb, pool, train, cfg.replace(seed=s, **over))
                b, head = rec["blend"], edge.heads["add"]
                ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
                rows = {m.value: answers(ev, m, test) for m in (Mode.FULL, Mode.SPA)}
                out["runs"][f"{u} s{s} {name}"] = {
                    "seconds": b["seconds"], "cpu_seconds": b["cpu_seconds"], "coefficients": b["coefficients"],
                    "kept_step": b["kept_step"], "tau": head.threshold, "lead": head.lead, "follow": head.follow,
                    **rows}
                print(u, s, name, b["seconds"], " ".join(f"{k} {r['rouge_l']:.2f} M {r['m']:.3f}"
                                                          for k, r in rows.items()), flush=True)
                out_path.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
