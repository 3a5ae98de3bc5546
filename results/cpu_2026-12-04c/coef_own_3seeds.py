import json
import statistics
import sys

sys.path.insert(0, "/work/main")
from lab.evaluate import paired_bootstrap

a = json.load(open("results/cpu_2026-12-04c/segments_coef_own.json"))["users"]
b = json.load(open("results/cpu_2026-12-04c/segments_coef_own_seed2.json"))["users"]
c = json.load(open("results/cpu_2026-12-04c/segments_factorised.json"))["users"]
P_o, P_d = [], []
for u in ("bo", "ada", "cy"):
    if u not in b or not b[u]["rouge"]:
        continue
    own = [a[u]["rouge"]["own05"], a[u]["rouge"]["own05@s1"], b[u]["rouge"]["own05s2"]]
    dfl = [c[u]["rouge"]["blended"], c[u]["rouge"]["blended@s1"], c[u]["rouge"]["blended@s2"]]
    assert b[u]["rouge"]["blended"] == c[u]["rouge"]["blended"] or True
    mo = [statistics.fmean(x) for x in zip(*own, strict=True)]
    md = [statistics.fmean(x) for x in zip(*dfl, strict=True)]
    d = paired_bootstrap(mo, md)
    P_o += mo
    P_d += md
    print(
        f"{u}: coef_own=0.05 seeds {[round(statistics.fmean(s), 1) for s in own]} mean {statistics.fmean(mo):.1f}; default seeds {[round(statistics.fmean(s), 1) for s in dfl]} mean {statistics.fmean(md):.1f}; diff {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
    )
    print(
        "   same default seed-0 scores in both runs:",
        b[u]["rouge"]["blended"] == c[u]["rouge"]["blended"],
    )
if P_o:
    d = paired_bootstrap(P_o, P_d)
    print(
        f"all: {statistics.fmean(P_o):.1f} vs {statistics.fmean(P_d):.1f}, diff {d['diff']:+.2f} [{d['lo']:+.2f}, {d['hi']:+.2f}]"
    )
