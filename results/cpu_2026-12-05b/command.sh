# stop 35 (2026-12-05), the 2-core CPU machine, local 120-record pool at /tmp/b19/pool (`spa pool build --records 120`, §10.4)
# (follow.py and trace_bo.py ran as /tmp drafts with the same logic; the scripts here are those, ruff-clean)
export HF_HUB_OFFLINE=1
.venv/bin/python results/cpu_2026-12-05b/follow.py 48 bo,cy,ada results/cpu_2026-12-05b/follow_s0.json 0 > results/cpu_2026-12-05b/follow_s0.txt
.venv/bin/python results/cpu_2026-12-05b/trace_bo.py bo 24 follow=0 > results/cpu_2026-12-05b/trace_bo_follow0.txt
.venv/bin/python results/cpu_2026-12-05b/trace_bo.py bo 24 follow=1 > results/cpu_2026-12-05b/trace_bo_follow1.txt
.venv/bin/python results/cpu_2026-12-05b/blend_time.py 3 > results/cpu_2026-12-05b/blend_time.txt   # on a quiet machine (after CI)
.venv/bin/python results/cpu_2026-12-05b/follow.py 48 bo,cy,ada results/cpu_2026-12-05b/follow_s12.json 1,2 > results/cpu_2026-12-05b/follow_s12.txt   # seeds 1, 2
.venv/bin/python results/cpu_2026-12-05b/follow_summary.py > results/cpu_2026-12-05b/follow_summary.md
.venv/bin/python results/cpu_2026-12-05b/fastfit.py bo > results/cpu_2026-12-05b/fastfit.txt   # a measurement of a faster coefficient fit (not landed)
