# the 2-core CPU machine, 2026-12-04 (stop 33; no device machine lent this session)
# a 7-member pool: the six defaults + the opt-in `frames` member, 120 records each (588 s wall)
HF_HUB_OFFLINE=1 .venv/bin/spa pool build --out /tmp/s33/pool7 --records 120 --styles news,letter,captain,brief,cheer,radio,frames --xsum runs/spa_gpu/data/xsum_1000.jsonl --quiet
# the default recipe on it, 3 seeds, 48 prompts generated per user, 96 teacher-forced (segments_frames_pool.*)
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/s33/pool7 --users bo,ada,cy --seeds 3 --eval 96 --rouge 48 --trained --json segments_frames_pool.json
# compared per record with ../cpu_2026-12-04/segments_confirm.json's `copies` rows (the same recipe on the six-member pool /tmp/b19/pool)
