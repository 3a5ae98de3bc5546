#!/usr/bin/env bash
# The results of RESULTS.md §1: pretrain a backbone on corpus_en.txt, train the edge bundle on
# the first 800 XSum records, evaluate all five modes on the last 200.
#   DATA=../shared/data DEVICE=cuda PRESET=small bash benchmarks/xsum_results.sh runs/xsum
set -euo pipefail
OUT=${1:-runs/xsum}
DATA=${DATA:-../shared/data}
DEVICE=${DEVICE:-cpu}
PRESET=${PRESET:-tiny}
STEPS=${STEPS:-}
SPA=${SPA:-spa}
mkdir -p "$OUT"
$SPA pretrain --corpus "$DATA/corpus_en.txt" --out "$OUT/backbone" --preset "$PRESET" \
  ${STEPS:+--steps $STEPS} --device "$DEVICE" --quiet
$SPA train --backbone "$OUT/backbone" --data "$DATA/xsum_1000.jsonl" --split :800 \
  --out "$OUT/bundle" --target-m 0.62 --device "$DEVICE" --quiet
$SPA eval --backbone "$OUT/backbone" --bundle "$OUT/bundle" --data "$DATA/xsum_1000.jsonl" \
  --split 800: --modes base,lst,full,choice,spa --json "$OUT/eval.json" --sweep-limit ${SWEEP:-40} \
  --device "$DEVICE" --quiet
