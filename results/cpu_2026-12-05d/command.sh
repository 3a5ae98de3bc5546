# stop 37 (2026-12-05), the 2-core CPU machine; a 400-record pool built here (the device rounds' size):
HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/spa pool build --out /tmp/b19/pool400 --records 400 --quiet   # 886 s
# per-token trace of bo's blended answers, spa and full (the tree before the copy rule; copy 0):
HF_HUB_OFFLINE=1 POOL=/tmp/b19/pool400 .venv/bin/python results/cpu_2026-12-05d/trace.py bo 64 copy=0 fire_rate=0.4 > results/cpu_2026-12-05d/trace_bo.txt
# the copy rule 0/1/2/3 on one blend per user (seed 0, 64 held-out prompts):
HF_HUB_OFFLINE=1 POOL=/tmp/b19/pool400 .venv/bin/python results/cpu_2026-12-05d/copy_rule.py results/cpu_2026-12-05d/copy_rule.json 64 bo,cy,ada 0
HF_HUB_OFFLINE=1 POOL=/tmp/b19/pool400 .venv/bin/python results/cpu_2026-12-05d/copy_fires.py bo 64 > results/cpu_2026-12-05d/copy_fires_bo.txt   # where the REQUESTs go
# the new default against copy 1 at fire rate 0.35 and the recipe before, 3 users × seeds 0-2:
HF_HUB_OFFLINE=1 POOL=/tmp/b19/pool400 .venv/bin/python results/cpu_2026-12-05d/copy_rate.py results/cpu_2026-12-05d/copy_rate.json 64 bo,cy,ada 0,1,2
.venv/bin/python results/cpu_2026-12-05d/copy_rate_summary.py results/cpu_2026-12-05d/copy_rate.json > results/cpu_2026-12-05d/copy_rate.md
# the per-token path before (7611dc1, git worktree /tmp/wt/before37) and after, alternated:
.venv/bin/python benchmarks/stack_efficiency.py --stages engine,agents --modes spa --sessions 16 --tokens 32   # in each tree -> stack_before_after.txt
.venv/bin/python results/cpu_2026-12-05d/frame_cost.py /tmp/wt/before37; .venv/bin/python results/cpu_2026-12-05d/frame_cost.py .   # twice each -> frame_cost.txt
