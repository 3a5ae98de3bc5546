# the 2-core CPU machine, 2026-12-04 (stop 33; no device machine lent this session)
# a 7-member pool: the six defaults + the opt-in `frames` member, 120 records each (588 s wall)
HF_HUB_OFFLINE=1 .venv/bin/spa pool build --out /tmp/s33/pool7 --records 120 --styles news,letter,captain,brief,cheer,radio,frames --xsum runs/spa_gpu/data/xsum_1000.jsonl --quiet
# the default recipe on it, 3 seeds, 48 prompts generated per user, 96 teacher-forced (segments_frames_pool.*)
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/s33/pool7 --users bo,ada,cy --seeds 3 --eval 96 --rouge 48 --trained --json segments_frames_pool.json
# compared per record with ../cpu_2026-12-04/segments_confirm.json's `copies` rows (the same recipe on the six-member pool /tmp/b19/pool)
# the factorised blend against the tree before it (2efc087, a git worktree at /tmp/s33/old), interleaved
# processes old, new, old, new, each `blend_time.py --reps 1 --variant mix:gate_labels=mixture`
# (blend_time_ab.{log,txt}, time_{old,new}_{0,1}.json):
for rep in 0 1; do for R in /tmp/s33/old /work/main; do HF_HUB_OFFLINE=1 .venv/bin/python $R/benchmarks/blend_time.py --pool /tmp/b19/pool --xsum runs/spa_gpu/data/xsum_1000.jsonl --corpus runs/spa_gpu/data/corpus_en.txt --reps 1 --variant mix:gate_labels=mixture --json time_$(basename $R)_$rep.json; done; done
# the default recipe after the change (quality unchanged: the same Rouge-L per seed as ../cpu_2026-12-04/segments_confirm.json's copies rows; segments_factorised.*)
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 3 --eval 96 --rouge 48 --trained --json segments_factorised.json
# coef_own, 2 seeds, 48 prompts (segments_coef_own.*)
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 2 --eval 96 --rouge 48 --variant own02:coef_own=0.02 --variant own05:coef_own=0.05 --json segments_coef_own.json
# coef_own=0.05's third seed (segments_coef_own_seed2.*), then the three seeds against the default's three (coef_own_3seeds.{py,txt})
HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/blend_segments.py --pool /tmp/b19/pool --users bo,ada,cy --seeds 1 --eval 48 --rouge 48 --variant own05s2:coef_own=0.05,seed=2 --json segments_coef_own_seed2.json
.venv/bin/python results/cpu_2026-12-04c/coef_own_3seeds.py
# the frames pool against the six-member pool, per record (the RESULTS §10.7 table)
.venv/bin/python results/cpu_2026-12-04c/compare.py "six=results/cpu_2026-12-04/segments_confirm.json:copies" "seven=results/cpu_2026-12-04c/segments_frames_pool.json:blended"
# members.py: bo's segment NLLs under the backbone, θ0, each member alone, the pure blend and the default
HF_HUB_OFFLINE=1 .venv/bin/python results/cpu_2026-12-04c/members.py /tmp/b19/pool bo
