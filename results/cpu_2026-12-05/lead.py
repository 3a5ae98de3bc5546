"""Stop 34: blended spa with the lead through the turn (BlendConfig.lead 'turn',
lab.blend_tune.opening_lead) against none, the same blend (the classifier and τ do not depend on
the lead), local 120-record pool, 2 CPU threads; per user and recipe, paired per record.

    python results/cpu_2026-12-05/lead.py N USERS OUT.json [SEEDS]   # see command.sh
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from blend_quality import cpu_setup  # noqa: E402

from lab.blend import blend  # noqa: E402
from lab.evaluate import Evaluator, paired_bootstrap  # noqa: E402
from lab.pool import STYLES, corpus_file, style_records, xsum_file  # noqa: E402
from routing.modes import Mode  # noqa: E402


def main() -> None:
    args = argparse.Namespace(backbone="smollm2-135m", pool="/tmp/b19/pool", threads=2, examples=16, smoke=False)
    bb, pool, cfg = cpu_setup(args)
    n, users, path = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3]
    seeds = [int(s) for s in sys.argv[4].split(",")] if len(sys.argv) > 4 else [0]
    recipes = {f"default@s{s}": cfg.replace(seed=s) for s in seeds}
    if seeds == [0]:
        recipes["turn"] = cfg.replace(steps=60, l2=0.01, coef_keep="turn", coef_patience=15)
    out = {}
    for u in users:
        recs = style_records(STYLES[u], 300 + n, bb.tokenizer, 0, 0, xsum_file(), cfg.max_prompt_tokens,
                             corpus_file())
        train, test = recs[:300], recs[300 : 300 + n]
        for name, c in recipes.items():
            edge, rec = blend(bb, pool, train, c.replace(lead="turn"))
            head = edge.heads["add"]
            lead = head.lead
            ev = Evaluator(bb, edge, cfg.max_prompt_tokens, 48, 48, progress=False)
            rows = {"full": ev.run_mode(Mode.FULL, test), "spa lead": ev.run_mode(Mode.SPA, test)}
            head.lead = 0
            rows["spa"] = ev.run_mode(Mode.SPA, test)
            d = paired_bootstrap(rows["spa lead"].scores, rows["spa"].scores)
            line = " | ".join(f"{k} {r.rouge_l:.1f} M {r.stats.m:.3f} tok {r.stats.tokens}" for k, r in rows.items())
            print(f"{u} {name} lead {lead} blend {rec['blend']['seconds']['total']:.1f}s: {line} | "
                  f"lead−none {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]", flush=True)
            out[f"{u} {name}"] = {"lead": lead, **{k: {"rouge_l": r.rouge_l, "m": r.stats.m, "tokens": r.stats.tokens,
                                                       "scores": r.scores} for k, r in rows.items()}}
    Path(path).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
