"""Issue 19's tables from benchmarks/blend_quality.py's per-user records: quality (base /
blended / trained, full and spa, gap closed), blending time, routing by need; pooled over users.

    gap closed = (blended − base) / (trained − base) of the mean Rouge-L, with a paired
                 bootstrap interval over records (the same records in all three rows)
    routing    = a mixed stream (the user's held-out prompts + as many generic ones), spa for
                 all against routed (prompts the need router scores 'not customised' as base)
"""

from __future__ import annotations

import statistics

import torch

from lab.evaluate import bootstrap_ci, paired_bootstrap

ROWS = ("base", "blended full", "blended spa", "trained full", "trained spa")


def gap_interval(base: list[float], blended: list[float], trained: list[float], n: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(blended − base)/(trained − base) of the means, and its paired-bootstrap 95% interval."""
    b, x, t = (torch.tensor(v, dtype=torch.float64) for v in (base, blended, trained))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(b), (n, len(b)), generator=g)
    num, den = (x[idx] - b[idx]).mean(1), (t[idx] - b[idx]).mean(1)
    ratio = num / den.where(den.abs() > 1e-9, torch.full_like(den, float("nan")))
    ratio = ratio[torch.isfinite(ratio)]
    point = float((x - b).mean() / (t - b).mean()) if float((t - b).mean()) else float("nan")
    if len(ratio) == 0:
        return point, float("nan"), float("nan")
    return point, float(torch.quantile(ratio, 0.025)), float(torch.quantile(ratio, 0.975))


def routing_row(cust: list[bool], gen_c: list[bool], spa_c, base_c, spa_g, base_g) -> dict:
    """The mixed stream: `cust`/`gen_c` the router's verdicts on the customised/generic prompts;
    the ModeResults of spa and base on each half (sessions in the same order)."""

    def stream(route_c, route_g):
        blocking, tokens, scores = 0.0, 0, []
        for i, keep in enumerate(route_c):
            r = spa_c if keep else base_c
            t, m = r.sessions[i]
            blocking, tokens = blocking + t * m, tokens + t
            scores.append(r.scores[i])
        for i, keep in enumerate(route_g):
            t, m = (spa_g if keep else base_g).sessions[i]
            blocking, tokens = blocking + t * m, tokens + t
        return blocking, tokens, scores

    b_all, t_all, s_all = stream([True] * len(cust), [True] * len(gen_c))
    b_r, t_r, s_r = stream(cust, gen_c)
    m_all, m_r = b_all / max(1, t_all), b_r / max(1, t_r)
    return {"customised_kept": sum(cust) / len(cust), "generic_sent_as_spa": sum(gen_c) / len(gen_c),
            "m_spa_for_all": m_all, "m_routed": m_r, "m_fall": 1 - m_r / m_all if m_all else float("nan"),
            "blocking_tokens": [b_all, t_all, b_r, t_r],
            "rouge_customised_spa_for_all": statistics.fmean(s_all),
            "rouge_customised_routed": statistics.fmean(s_r),
            "scores_spa_for_all": s_all, "scores_routed": s_r,
            "paired_routed_minus_all": paired_bootstrap(s_r, s_all)}


def _ci(scores: list[float]) -> str:
    lo, hi = bootstrap_ci(scores)
    return f"{statistics.fmean(scores):.1f} [{lo:.1f}, {hi:.1f}]"


def _gap(g: dict) -> str:
    return f"{g['point']:.2f} [{g['lo']:.2f}, {g['hi']:.2f}]"


def variants_table(users: dict[str, dict], pooled: bool = False) -> list[str]:
    """The A/B rows (benchmarks/blend_quality.py --variant) beside the default recipe's."""
    names = [n for n in users if users[n].get("variants")]
    if not names:
        return []
    lines = ["", "Variants (--variant: the same records, comparator and prompts; 'blended' is the "
             "default recipe); gap closed against trained full / the trained spa with the variant's "
             "gate", "", "| user | variant | full | spa | M spa | gap closed full | gap closed spa | "
             "blend wall s | CPU s |", "|---" * 9 + "|"]
    groups = {n: users[n]["variants"] for n in names}
    for n in names:
        groups[n] = {"blended": {"trained_spa_row": "trained spa", "blend": users[n]["blend"]},
                     **groups[n]}
    vnames = list(groups[names[0]])
    keys = list(groups) + (["all"] if pooled and len(names) > 1 else [])
    for n in keys:
        for v in vnames:
            us = names if n == "all" else [n]
            if any(v not in groups[x] for x in us):
                continue
            sc = {k: [s for x in us for s in users[x]["rows"][r]["scores"]] for k, r in
                  (("base", "base"), ("full", f"{v} full"), ("spa", f"{v} spa"),
                   ("tf", "trained full"), ("ts", groups[us[0]][v]["trained_spa_row"]))}
            gaps = [_gap(dict(zip(("point", "lo", "hi"), gap_interval(sc["base"], sc[m], sc[t]),
                                  strict=True))) for m, t in (("full", "tf"), ("spa", "ts"))]
            m = (f"{users[n]['rows'][f'{v} spa']['m']:.3f}" if n != "all" else "")
            b = groups[n][v]["blend"] if n != "all" else None
            secs = (f"{b['seconds']['total']:.2f} | {b['cpu_seconds']['total']:.2f}" if b else " | ")
            lines.append(f"| {n} | {v} | {statistics.fmean(sc['full']):.1f} | "
                         f"{statistics.fmean(sc['spa']):.1f} | {m} | {gaps[0]} | {gaps[1]} | {secs} |")
    return lines


SEED = "@s"  # a recipe blended again with another seed: 'NAME@sK' (blend_quality.py --seeds)


def seed_table(users: dict[str, dict], pooled: bool = False) -> list[str]:
    """Each recipe over its seeds (the default 'blended' and every variant, each blended again
    with seeds 1..K−1 as 'NAME@sK'): full-mode gap closed of each record's mean over the seeds,
    paired bootstrap over records, and the seeds' own points (their spread)."""
    names = [n for n in users if any(SEED in v for v in users[n].get("variants", {}))]
    if not names:
        return []
    lines = ["", "Over the blend's seeds (each record's Rouge-L averaged over the seeds, then the "
             "paired bootstrap over records; 'per seed' the seeds' own points)", "",
             "| user | recipe | seeds | full, seed mean | gap closed full, seed mean [95 %] | "
             "gap closed per seed |", "|---" * 6 + "|"]
    recipes = ["blended"] + sorted({v.split(SEED)[0] for n in names for v in users[n]["variants"]
                                    if SEED not in v})
    for key in names + (["all"] if pooled and len(names) > 1 else []):
        us = names if key == "all" else [key]
        for rec in recipes:
            seeds = [rec] + sorted({v for v in users[us[0]]["variants"] if v.startswith(rec + SEED)})
            if len(seeds) < 2 or any(f"{v} full" not in users[x]["rows"] for x in us for v in seeds):
                continue
            col = {k: [s for x in us for s in users[x]["rows"][r]["scores"]]
                   for k, r in (("base", "base"), ("trained", "trained full"))}
            per = [[s for x in us for s in users[x]["rows"][f"{v} full"]["scores"]] for v in seeds]
            mean = [statistics.fmean(r) for r in zip(*per, strict=True)]
            p, lo, hi = gap_interval(col["base"], mean, col["trained"])
            points = ", ".join(f"{gap_interval(col['base'], x, col['trained'], n=1)[0]:.2f}" for x in per)
            lines.append(f"| {key} | {rec} | {len(seeds)} | {statistics.fmean(mean):.1f} | "
                         f"{p:.2f} [{lo:.2f}, {hi:.2f}] | {points} |")
    return lines


def markdown(users: dict[str, dict], pooled: bool = False) -> str:
    """The three tables (with an 'all' row pooling the users' records when `pooled`)."""
    names = list(users)
    scores = {n: {k: users[n]["rows"][k]["scores"] for k in ROWS} for n in names}
    if pooled and len(names) > 1:
        scores["all"] = {k: [s for n in names for s in scores[n][k]] for k in ROWS}
    lines = ["Rouge-L [95% CI] per held-out user; gap closed = (blended − base)/(trained − base), "
             "paired 95% CI", "",
             "| user | n | " + " | ".join(ROWS) + " | gap closed full | gap closed spa | M blended spa "
             "| M trained spa |", "|---" * 11 + "|"]
    for n, sc in scores.items():
        gaps = []
        for mode in ("full", "spa"):
            p, lo, hi = gap_interval(sc["base"], sc[f"blended {mode}"], sc[f"trained {mode}"])
            gaps.append(_gap({"point": p, "lo": lo, "hi": hi}))
        ms = ([f"{users[n]['rows'][k]['m']:.3f}" for k in ("blended spa", "trained spa")]
              if n in users else ["", ""])
        lines.append(f"| {n} | {len(sc['base'])} | " + " | ".join(_ci(sc[k]) for k in ROWS)
                     + f" | {gaps[0]} | {gaps[1]} | {ms[0]} | {ms[1]} |")
    lines += ["", "Blending (on the CPU) and the trained comparator (on the run's device)", "",
              "| user | examples | positions | wall s | CPU s | features wall s | cores / threads | "
              "coefficients | trained: records, s |", "|---" * 9 + "|"]
    for n in names:
        b, t = users[n]["blend"], users[n]["trained"]
        w = ", ".join(f"{k} {v:+.2f}" for k, v in b["coefficients"].items())
        lines.append(f"| {n} | {b['examples']} | {b['positions']} | {b['seconds']['total']:.2f} | "
                     f"{b['cpu_seconds']['total']:.2f} | {b['seconds']['features']:.2f} | "
                     f"{b.get('cores', '?')} / {b['threads']} | {w} | {t['records']}, {t['seconds']:.1f} |")
    lines += variants_table(users, pooled)
    lines += seed_table(users, pooled)
    lines += ["", "Routing by need on a mixed stream (held-out + as many generic prompts): spa for all "
              "vs routed; Rouge-L of the customised half, paired", "",
              "| user | customised kept | generic as spa | M spa-for-all | M routed | M fall | "
              "Rouge-L cust. spa-for-all | routed | Δ [95% CI] | decision ms |", "|---" * 10 + "|"]
    rr = {n: users[n]["routing"] for n in names}
    if pooled and len(names) > 1:
        tot = [sum(r["blocking_tokens"][i] for r in rr.values()) for i in range(4)]
        s_all = [s for r in rr.values() for s in r["scores_spa_for_all"]]
        s_r = [s for r in rr.values() for s in r["scores_routed"]]
        m_all, m_r = tot[0] / max(1, tot[1]), tot[2] / max(1, tot[3])
        rr["all"] = {"customised_kept": statistics.fmean(r["customised_kept"] for r in rr.values()),
                     "generic_sent_as_spa": statistics.fmean(r["generic_sent_as_spa"] for r in rr.values()),
                     "m_spa_for_all": m_all, "m_routed": m_r,
                     "m_fall": 1 - m_r / m_all if m_all else float("nan"),
                     "rouge_customised_spa_for_all": statistics.fmean(s_all),
                     "rouge_customised_routed": statistics.fmean(s_r),
                     "paired_routed_minus_all": paired_bootstrap(s_r, s_all), "decision_ms": float("nan")}
    for n, r in rr.items():
        p = r["paired_routed_minus_all"]
        lines.append(f"| {n} | {r['customised_kept']:.2f} | {r['generic_sent_as_spa']:.2f} | "
                     f"{r['m_spa_for_all']:.3f} | {r['m_routed']:.3f} | {r['m_fall']:+.1%} | "
                     f"{r['rouge_customised_spa_for_all']:.1f} | {r['rouge_customised_routed']:.1f} | "
                     f"{p['diff']:+.2f} [{p['lo']:+.2f}, {p['hi']:+.2f}] | {r.get('decision_ms', 0):.2f} |")
    return "\n".join(lines)
