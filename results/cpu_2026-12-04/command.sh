# the 2-core CPU machine, 2026-12-04 (no device time left this session); the pool built once:
HF_HUB_OFFLINE=1 .venv/bin/spa pool build --out /tmp/b19/pool --records 120 --quiet   # 574 s wall, 706 CPU s
# four recipes, 2 seeds, 32 prompts generated per user (segments_4recipes.*):
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 2 --rouge 32 --trained --variant copies:coef_on=copies --variant split:tune_copies=split --variant csplit:coef_on=copies,tune_copies=split --json segments_4recipes.json
# (split, csplit: the tune_copies option "split" of commit 482496f, removed after this run)
# the confirmation, 3 seeds, 48 prompts, 96 teacher-forced records (segments_confirm.*):
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 3 --eval 96 --rouge 48 --trained --variant copies:coef_on=copies --json segments_confirm.json
# segments_4recipes.pooled.txt: every user pooled (blend_segments.py prints these "all:" lines itself since)
# the tuning's step count with the new default (segments_steps.*):
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 2 --rouge 32 --variant t10:tune_steps=10 --variant t30:tune_steps=30 --json segments_steps.json
