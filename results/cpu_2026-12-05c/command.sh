# stop 36 (2026-12-05), the 2-core CPU machine, local 120-record pool at /tmp/b19/pool (`spa pool build --records 120`, §10.4)
# Trees as git worktrees beside a link to ../shared (lab/pool.py reads ../shared/data):
#   git worktree add /tmp/wt/old 0a5d059   (before: five full-vocabulary passes, the functional_call fit)
#   git worktree add /tmp/wt/new ed71403   (after: backbone logits once, lab/blend_basis.py)
#   git worktree add /tmp/wt/cur 89ae580   (+ gate_labels 'differs', opt-in); ln -s /work/shared /tmp/wt/shared
export HF_HUB_OFFLINE=1
.venv/bin/python results/cpu_2026-12-05c/same_blend.py /tmp/wt/old results/cpu_2026-12-05c/sb_old.json 48 bo,ada,cy 0,1,2
.venv/bin/python results/cpu_2026-12-05c/same_blend.py /tmp/wt/new results/cpu_2026-12-05c/sb_new.json 48 bo,ada,cy 0,1,2
.venv/bin/python results/cpu_2026-12-05c/same_blend_compare.py results/cpu_2026-12-05c/sb_old.json results/cpu_2026-12-05c/sb_new.json > results/cpu_2026-12-05c/same_blend.md
.venv/bin/python results/cpu_2026-12-05c/blend_time.py /tmp/wt/old /tmp/wt/new 4 > results/cpu_2026-12-05c/blend_time.txt   # quiet machine, alternated processes
.venv/bin/python results/cpu_2026-12-05c/same_blend.py /tmp/wt/cur results/cpu_2026-12-05c/sb_differs.json 48 bo,ada,cy 0,1,2 "differs:gate_labels=differs;mixdiff:gate_labels=mixture+differs"
.venv/bin/python results/cpu_2026-12-05c/recipe_summary.py results/cpu_2026-12-05c/sb_new.json:default results/cpu_2026-12-05c/sb_new.json:turn > results/cpu_2026-12-05c/turn_summary.md
.venv/bin/python results/cpu_2026-12-05c/recipe_summary.py results/cpu_2026-12-05c/sb_new.json:default results/cpu_2026-12-05c/sb_differs.json:differs results/cpu_2026-12-05c/sb_differs.json:mixdiff > results/cpu_2026-12-05c/differs_summary.md
