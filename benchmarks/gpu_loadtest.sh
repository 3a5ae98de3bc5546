#!/usr/bin/env bash
# Load test against a worker on a GPU (what compose's cloud-worker-gpu runs): pretrain the
# `small` backbone, train an spa bundle on XSum, then benchmarks/loadtest_scaling.py with the
# worker on cuda and several load-test processes on the host's CPUs.
#   DATA=../shared/data bash benchmarks/gpu_loadtest.sh runs/gpu-load
set -euo pipefail
OUT=${1:-runs/gpu-load}
DATA=${DATA:-../shared/data}
SPA=${SPA:-spa}
PY=${PY:-python}
mkdir -p "$OUT"
[ -f "$OUT/backbone/config.json" ] || $SPA pretrain --corpus "$DATA/corpus_en.txt" \
  --out "$OUT/backbone" --preset small --steps ${STEPS:-300} --device cuda --quiet
[ -f "$OUT/bundle/bundle.json" ] || $SPA train --backbone "$OUT/backbone" \
  --data "$DATA/xsum_1000.jsonl" --split :800 --mode spa --epochs ${EPOCHS:-4} \
  --out "$OUT/bundle" --device cuda --quiet
$PY benchmarks/loadtest_scaling.py --backbone "$OUT/backbone" --bundle "$OUT/bundle" \
  --device cuda --prompts "$DATA/xsum_1000.jsonl" --users ${USERS:-1,8,32,128} \
  --processes ${PROCS:-8} --agent-threads 1 --sessions-per-user ${PER_USER:-3} --tokens 32
