# stop 34 (2026-12-05), the 2-core CPU machine, local 120-record pool at /tmp/b19/pool (`spa pool build --records 120`, §10.4)
# (the runs used /tmp drafts of lead.py and trace.py with the same logic; the scripts here are those, ruff-clean)
export HF_HUB_OFFLINE=1
.venv/bin/python results/cpu_2026-12-05/lead.py 48 cy,ada,bo results/cpu_2026-12-05/lead_seed0.json > results/cpu_2026-12-05/lead_seed0.txt   # default + turn rule, seed 0
.venv/bin/python results/cpu_2026-12-05/lead.py 48 cy,bo,ada results/cpu_2026-12-05/lead_seeds12.json 1,2 > results/cpu_2026-12-05/lead_seeds12.txt   # default, seeds 1, 2
.venv/bin/python results/cpu_2026-12-05/summary.py > results/cpu_2026-12-05/summary.md
.venv/bin/python results/cpu_2026-12-05/trace.py cy 1,29,12 > results/cpu_2026-12-05/trace_cy.txt
# after the turn joined the lead only where the side helps there (lab.blend_gate.lead_tokens): the default's three seeds again
.venv/bin/python results/cpu_2026-12-05/lead.py 48 bo,cy,ada results/cpu_2026-12-05/lead_gain.json 0,1,2 > results/cpu_2026-12-05/lead_gain.txt
