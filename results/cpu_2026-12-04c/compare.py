"""Compare recipes across two blend_segments JSONs (e.g. two pools): per user and pooled,
seed-mean per record, gap closed with each run's own base/trained, paired diff."""

import json
import statistics
import sys

sys.path.insert(0, "/work/main")
from lab.blend_report import gap_interval
from lab.evaluate import paired_bootstrap

spec = [a.split("=", 1) for a in sys.argv[1:]]  # label=path:recipe
rows = {}
for label, pr in spec:
    path, recipe = pr.split(":")
    d = json.load(open(path))
    for u, v in d["users"].items():
        if not v["rouge"]:
            continue
        runs = [k for k in v["rouge"] if k == recipe or k.startswith(recipe + "@s")]
        mean = [statistics.fmean(x) for x in zip(*(v["rouge"][r] for r in runs), strict=True)]
        rows.setdefault(u, {})[label] = (
            mean,
            v["rouge"]["base"],
            v["rouge"]["trained"],
            [round(statistics.fmean(v["rouge"][r]), 1) for r in runs],
        )
labels = [lab for lab, _ in spec]
users = [u for u in rows if all(lab in rows[u] for lab in labels)]


def line(u, get):
    out = []
    ref = None
    for lab in labels:
        mean, base, tr, seeds = get(lab)
        p, lo, hi = gap_interval(base, mean, tr)
        s = f"{lab}: {statistics.fmean(mean):.1f} seeds {seeds} gap {p:.2f} [{lo:.2f},{hi:.2f}] (base {statistics.fmean(base):.1f} tr {statistics.fmean(tr):.1f})"
        if ref is None:
            ref = mean
        else:
            d = paired_bootstrap(mean, ref)
            s += f" − {labels[0]} {d['diff']:+.2f} [{d['lo']:+.2f},{d['hi']:+.2f}]"
        out.append(s)
    print(u, "\n   " + "\n   ".join(out))


for u in users:
    line(u, lambda lab, u=u: rows[u][lab])
if len(users) > 1:

    def pooled(lab):
        m, b, t = [], [], []
        for u in users:
            x = rows[u][lab]
            m += x[0]
            b += x[1]
            t += x[2]
        return m, b, t, "-"

    line("all", pooled)
