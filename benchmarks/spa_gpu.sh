#!/usr/bin/env bash
# The issue-11 XSum run on a device machine where only ~64 MiB travel per call: the GGUF backbone
# comes in two parts over two calls (carry runs/spa_gpu/p1, then runs/spa_gpu/p2), wheels for
# gguf / rouge-score / nltk, the tokenizer files and the data come with the first.
#   bash benchmarks/spa_gpu.sh stage1      # carry: runs/spa_gpu/{p1,whl,tok,data,src}
#   bash benchmarks/spa_gpu.sh stage2 fg   # carry: runs/spa_gpu/p2 — joins, converts, runs train +
#                                          # eval in this call (about 3-4 min on an H200)
#   bash benchmarks/spa_gpu.sh stage2      # the same, in the background (SPA_ARGS=--select: with
#                                          # the dev-split selection first, about 12 min), then:
#   bash benchmarks/spa_gpu.sh wait [S]    # polls the log for up to S seconds (default 560)
# Prepare here: split -b 50000000 SmolLM2-135M-Instruct.Q4_1.gguf part_ (see RESULTS.md §1), and
# runs/spa_gpu/src = `git archive HEAD edge_agent cloud_worker routing spa monitoring benchmarks`
# (a committed snapshot, not a working tree others are editing).
set -uo pipefail
W=/root/spa
case "${1:-}" in
stage1)
  mkdir -p $W && cp runs/spa_gpu/p1/part_aa $W/ && cp -r runs/spa_gpu/whl runs/spa_gpu/tok runs/spa_gpu/data runs/spa_gpu/src $W/
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /root/site $W/whl/*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  PYTHONPATH=/root/site python3 -c "import torch, transformers, gguf, rouge_score; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
  ls -la $W ;;
stage2)
  cat $W/part_aa runs/spa_gpu/p2/part_ab > $W/model.gguf && md5sum $W/model.gguf
  export PYTHONPATH=/root/site HF_HUB_OFFLINE=1
  [ -d /root/smollm2 ] || python3 benchmarks/spa_gguf_to_hf.py $W/model.gguf /root/smollm2 --tokenizer $W/tok
  rm -rf /root/repo && cp -r $W/src /root/repo && cd /root/repo
  if [ "${2:-}" = fg ]; then  # in this call: no third call needed (the machine may be gone by then)
    mkdir -p "${OUT:-/tmp/out}"
    PYTHONUNBUFFERED=1 timeout ${FG_TIMEOUT:-540} python3 benchmarks/spa_xsum.py --backbone /root/smollm2 \
      --data $W/data/xsum_1000.jsonl --out /root/spa/run --device cuda ${SPA_ARGS:-} 2>&1 | tee $W/log
    cp $W/run/*.json $W/run/*.png $W/run/bundle/bundle.json "${OUT:-/tmp/out}/" 2>/dev/null
    exit 0
  fi
  setsid nohup bash -c "PYTHONUNBUFFERED=1 python3 benchmarks/spa_xsum.py --backbone /root/smollm2 \
    --data $W/data/xsum_1000.jsonl --out /root/spa/run --device cuda ${SPA_ARGS:-} > $W/log 2>&1; echo EXIT \$? >> $W/log" \
    > /dev/null 2>&1 < /dev/null &
  sleep 5; cat $W/log ;;
wait)
  end=$((SECONDS + ${2:-560}))
  while [ $SECONDS -lt $end ] && ! grep -q "^EXIT" $W/log; do sleep 5; done
  tail -c 9000 $W/log
  mkdir -p "${OUT:-/tmp/out}" && cp $W/run/*.json $W/run/*.png $W/log "${OUT:-/tmp/out}/" 2>/dev/null; true ;;
*) echo "usage: $0 stage1|stage2|wait [seconds]"; exit 2 ;;
esac
