#!/usr/bin/env bash
# The whole stack on a GPU machine with SmolLM2-135M (issue 10): broker, a worker on cuda and
# several `spa loadtest` processes (CURVE on), at rising user counts. Two device calls, because a
# call carries at most 64 MiB and the GGUF is 98 MB:
#   bash benchmarks/gpu_stack.sh stage1   # carry runs/spa_gpu/p1 runs/gpu_stack/whl runs/spa_gpu/tok
#                                         #       runs/spa_gpu/data runs/gpu_stack/src
#   bash benchmarks/gpu_stack.sh stage2   # carry runs/spa_gpu/p2: join, dequantize, a quick spa
#                                         # bundle, then benchmarks/loadtest_scaling.py on cuda
# Prepare: runs/spa_gpu as in RESULTS.md §1; runs/gpu_stack/whl = pyzmq, msgpack, prometheus_client,
# uvloop, gguf wheels for cp312; runs/gpu_stack/src = `git archive HEAD broker edge_agent cloud_worker routing spa monitoring benchmarks`.
set -uo pipefail
W=/root/gs
case "${1:-}" in
stage1)
  mkdir -p $W && cp runs/spa_gpu/p1/part_aa $W/ && cp -r runs/gpu_stack/whl runs/spa_gpu/tok runs/spa_gpu/data runs/gpu_stack/src $W/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $W/whl/*.whl
  PYTHONPATH=/root/site:$W/src python3 -c "import zmq, msgpack, gguf, torch; print(zmq.zmq_version(), zmq.has('curve'), torch.cuda.get_device_name())" ;;
stage2)
  export PYTHONPATH=/root/site:$W/src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  cat $W/part_aa runs/spa_gpu/p2/part_ab > $W/model.gguf
  [ -d /root/smollm2 ] || python3 $W/src/benchmarks/spa_gguf_to_hf.py $W/model.gguf /root/smollm2 --tokenizer $W/tok
  cd $W/src
  [ -f $W/bundle/bundle.json ] || python3 -m spa train --backbone /root/smollm2 --data $W/data/xsum_1000.jsonl \
    --split :800 --mode spa --epochs ${EPOCHS:-3} --device cuda --out $W/bundle --quiet --target-m 0.47 --gen-batch 256
  timeout ${LT_TIMEOUT:-420} python3 benchmarks/loadtest_scaling.py --backbone /root/smollm2 --bundle $W/bundle \
    --device cuda --prompts $W/data/xsum_1000.jsonl --users ${USERS:-1,16,64,256} --processes ${PROCS:-8} \
    --agent-threads 1 --sessions-per-user ${PER_USER:-2} --tokens 32 2>&1 | tee "${OUT:-/tmp}/gpu_stack.log" ;;
*) echo "usage: $0 stage1|stage2"; exit 2 ;;
esac
