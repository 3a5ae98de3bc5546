#!/usr/bin/env bash
# The whole stack on a GPU machine with SmolLM2-135M (issues 10, 15, 16): broker, a worker on cuda
# and `spa loadtest` processes (CURVE on). Two device calls, because a call carries at most 64 MiB
# and the GGUF is 98 MB:
#   bash benchmarks/gpu_stack.sh prepare      # HERE, once: runs/gpu_stack/{whl,src} (below)
#   bash benchmarks/gpu_stack.sh stage1       # device call 1, carry: runs/spa_gpu/p1 runs/gpu_stack/whl
#                                             #   runs/spa_gpu/tok runs/spa_gpu/data runs/gpu_stack/src
#   bash benchmarks/gpu_stack.sh efficiency   # device call 2, carry: runs/spa_gpu/p2 — join, dequantize,
#                                             #   a quick spa bundle, benchmarks/stack_efficiency.py (~6 min)
#   bash benchmarks/gpu_stack.sh stage2       # (instead of efficiency) benchmarks/loadtest_scaling.py
#   bash benchmarks/gpu_stack.sh sweep        # (instead of efficiency) benchmarks/rate_sweep.py: goodput
#                                             #   against offered rate, RATES, NUM (requests a rate), MODES
# What comes back: $OUT/gpu_efficiency.log and .json (or $OUT/gpu_stack.log).
# Settings: SESSIONS (1,64,256,1024), STAGES (engine,worker,broker,agents), EDGE_DEVICE (cpu|cuda:
#   where the simulated devices compute), TOKENS (32), PROCS (load-test processes, 12), EFF_TIMEOUT (480 s),
#   PROFILE (py-spy seconds at the largest level, 8), EPOCHS (3), WORKERS (worker processes
#   sharing the GPU in the broker and agents stages, 1), MODES (base,spa; the sweep's: base).
# runs/spa_gpu (p1, p2, tok, data) as in RESULTS.md §1.
set -uo pipefail
W=/root/gs
case "${1:-}" in
prepare)  # here: wheels the device lacks (cp312, x86-64) and a committed snapshot of the code
  mkdir -p runs/gpu_stack/whl
  for p in pyzmq==27.3.0 gguf==0.19.0 py-spy==0.4.3; do  # the image has msgpack, psutil, uvloop, …
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
      --platform manylinux1_x86_64 -d runs/gpu_stack/whl "$p" \
      || echo "prepare: could not fetch $p"
  done
  rm -rf runs/gpu_stack/src && mkdir -p runs/gpu_stack/src
  git archive HEAD broker edge_agent cloud_worker routing spa monitoring benchmarks lab loadgen \
    | tar -x -C runs/gpu_stack/src
  du -sh runs/gpu_stack/* ;;
stage1)
  mkdir -p $W && cp runs/spa_gpu/p1/part_aa $W/ && cp -r runs/gpu_stack/whl runs/spa_gpu/tok runs/spa_gpu/data runs/gpu_stack/src $W/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $W/whl/*.whl
  PYTHONPATH=/root/site:$W/src python3 -c "import zmq, msgpack, gguf, torch, psutil; print(zmq.zmq_version(), zmq.has('curve'), torch.cuda.get_device_name())" ;;
stage2|efficiency|sweep)
  export PYTHONPATH=/root/site:$W/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PATH=/root/site/bin:$PATH
  cat $W/part_aa runs/spa_gpu/p2/part_ab > $W/model.gguf
  [ -d /root/smollm2 ] || python3 $W/src/benchmarks/spa_gguf_to_hf.py $W/model.gguf /root/smollm2 --tokenizer $W/tok
  cd $W/src
  [ -f $W/bundle/bundle.json ] || python3 -m spa train --backbone /root/smollm2 --data $W/data/xsum_1000.jsonl \
    --split :800 --mode spa --epochs ${EPOCHS:-3} --device cuda --out $W/bundle --quiet --target-m 0.47 --gen-batch 256
  if [ "$1" = sweep ]; then
    timeout ${SWEEP_TIMEOUT:-500} python3 benchmarks/rate_sweep.py --backbone /root/smollm2 --bundle $W/bundle \
      --device cuda --prompts $W/data/xsum_1000.jsonl --rates ${RATES:-64,128,256,512,1024,inf} \
      --num-prompts ${NUM:-2048} --modes ${MODES:-base} --tokens ${TOKENS:-32} --procs ${PROCS:-12} \
      --compute-device ${EDGE_DEVICE:-cpu} --max-sessions ${MAX_SESSIONS:-1024} --plot "${OUT:-/tmp}/sweep" \
      --json "${OUT:-/tmp}/gpu_sweep.json" 2>&1 | tee "${OUT:-/tmp}/gpu_sweep.log"
  elif [ "$1" = efficiency ]; then
    timeout ${EFF_TIMEOUT:-480} python3 benchmarks/stack_efficiency.py --backbone /root/smollm2 --bundle $W/bundle \
      --device cuda --secure --prompts $W/data/xsum_1000.jsonl --sessions ${SESSIONS:-1,64,256,1024} --modes ${MODES:-base,spa} --stages ${STAGES:-engine,worker,broker,agents} --prompt-tokens ${PROMPT_TOKENS:-128} --chunk-tokens ${CHUNK:-0} \
      --tokens ${TOKENS:-32} --workers ${WORKERS:-1} --agent-procs ${PROCS:-12} --compute-device ${EDGE_DEVICE:-cpu} --profile ${PROFILE:-8} \
      --json "${OUT:-/tmp}/gpu_efficiency.json" 2>&1 | tee "${OUT:-/tmp}/gpu_efficiency.log"
  else
    timeout ${LT_TIMEOUT:-420} python3 benchmarks/loadtest_scaling.py --backbone /root/smollm2 --bundle $W/bundle \
      --device cuda --prompts $W/data/xsum_1000.jsonl --users ${USERS:-1,16,64,256} --processes ${PROCS:-8} \
      --agent-threads 1 --sessions-per-user ${PER_USER:-2} --tokens 32 2>&1 | tee "${OUT:-/tmp}/gpu_stack.log"
  fi ;;
*) echo "usage: $0 prepare|stage1|efficiency|stage2|sweep"; exit 2 ;;
esac
