#!/usr/bin/env bash
# The issue-11 XSum run on a device machine where only ~64 MiB travel per call: the GGUF backbone
# comes in two parts over two calls (carry runs/spa_gpu/p1, then runs/spa_gpu/p2), wheels for
# gguf / rouge-score / nltk, the tokenizer files and the data come with the first.
#   bash benchmarks/spa_gpu.sh stage1      # carry: runs/spa_gpu/{p1,whl,tok,data,src}
#   bash benchmarks/spa_gpu.sh stage2 fg   # carry: runs/spa_gpu/p2 — joins, converts, runs train +
#                                          # eval in this call (about 3-4 min on an H200)
#   bash benchmarks/spa_gpu.sh stage2      # the same, in the background (SPA_ARGS=--select: with
#                                          # the dev-split selection first, about 12 min), then:
#   bash benchmarks/spa_gpu.sh wait [S]    # polls the log(s) for up to S seconds (default 560)
#   bash benchmarks/spa_gpu.sh issue17     # carry runs/spa_gpu/p2: issue 17's runs (see there), then wait
#   RUNS="t0:sums:--seed 0|t1:sums:--seed 1|c0:compare:--seed 0" bash benchmarks/spa_gpu.sh issue17
#   bash benchmarks/spa_gpu.sh table       # carry runs/spa_gpu/p2: issue 17's whole table in THIS call
#                                          # (≤ 8 min): XSum, sums, compare × seeds 0-2, the persona
#                                          # check with its fix, every run waited for; tables printed
#   (table's knobs: RUNS, TRAIN_ARGS, WIRE_ARGS for the runs named in WIRE_RUNS (default x1), PERSONA_ARGS,
#    DEADLINE, EXTRA: one more shell command run beside them from /root/repo with $OUT set, waited for;
#    TABLE_CPUS: taskset the runs and the persona check to these cores, e.g. 2-15 when EXTRA takes 0,1)
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
issue17)  # carry runs/spa_gpu/p2: joins, converts, then (issue 17) four XSum runs side by side in
  # the background (training seeds 0, 1, 2 with the M-budget curve; seed 0 with the z+stats MLP
  # gate), and the persona check (ada, bo; 3 training seeds) in this call; then `wait`
  cat $W/part_aa runs/spa_gpu/p2/part_ab > $W/model.gguf && md5sum $W/model.gguf
  export PYTHONPATH=/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=3
  [ -d /root/smollm2 ] || python3 benchmarks/spa_gguf_to_hf.py $W/model.gguf /root/smollm2 --tokenizer $W/tok
  rm -rf /root/repo && mkdir /root/repo && cp -r . /root/repo/ 2>/dev/null; cd /root/repo && rm -rf runs
  mkdir -p "${OUT:-/tmp/out}"
  # RUNS: "name:data:train args" each, data = xsum or a lab/tasks.py task (generated here, 1000
  # records: train :800, evaluate 800:); `issue17 persona` runs the persona check alone,
  # `issue17 runs` the runs alone. XSUM_ARGS: more spa_xsum.py flags for every run (issue 22:
  # XSUM_ARGS="--wire-dtypes fp16,int8,int4" adds wire.json, each run's bundle under each grid).
  RUNS=${RUNS:-"s0:xsum:--seed 0|s1:xsum:--seed 1|s2:xsum:--seed 2|g0:xsum:--seed 0 --clf-features z+stats --clf-hidden 64"}
  [ "${2:-}" = persona ] && RUNS=""
  IFS='|' read -ra runs <<< "$RUNS"
  for run in "${runs[@]}"; do
    name=${run%%:*}; rest=${run#*:}; data=${rest%%:*}; targs=${rest#*:}; mkdir -p $W/run_$name
    if [ "$data" = xsum ]; then file=$W/data/xsum_1000.jsonl; budgets="--budgets 0.2,0.35,0.5"
    else file=$W/data/$data.jsonl; budgets=""; [ -f $file ] || python3 -m lab.tasks $data --out $file; fi
    setsid nohup bash -c "python3 benchmarks/spa_xsum.py --backbone /root/smollm2 --data $file \
      --out $W/run_$name --device cuda $budgets ${XSUM_ARGS:-} --train-args '$targs' > $W/run_$name/log 2>&1; \
      echo EXIT \$? >> $W/run_$name/log" > /dev/null 2>&1 < /dev/null &
  done
  [ "${2:-}" = runs ] || timeout ${FG_TIMEOUT:-420} python3 benchmarks/persona_quality.py --backbone /root/smollm2 --device cuda \
    --json "${OUT:-/tmp/out}/persona.json" ${PERSONA_ARGS:-} 2>&1 | grep -v Warning | tee $W/persona.log
  cp $W/persona.log "${OUT:-/tmp/out}/"; for f in $W/run_*/log; do echo "== $f"; tail -c 1500 $f; done ;;
table)  # carry runs/spa_gpu/p2 (after stage1): every run of issue 17's table at once, in the
  # background (XSum, sums, compare × training seeds 0-2; the M-budget curve on XSum seed 0), the
  # persona check in the foreground, then waits for the runs until DEADLINE s after the start
  # (default 540: one call's 10 minutes, less the transfers) and reports what has finished; the
  # runs themselves may go on for RUN_TIMEOUT s (default 900: the nine took 587 s, §7.8), and a
  # following `spa_gpu.sh wait` call brings back the rest. TRAIN_ARGS go to every run.
  start=$SECONDS; deadline=${DEADLINE:-540}
  cat $W/part_aa runs/spa_gpu/p2/part_ab > $W/model.gguf && md5sum $W/model.gguf
  export PYTHONPATH=/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
  [ -d /root/smollm2 ] || python3 benchmarks/spa_gguf_to_hf.py $W/model.gguf /root/smollm2 --tokenizer $W/tok
  rm -rf /root/repo && mkdir /root/repo && cp -r . /root/repo/ 2>/dev/null; cd /root/repo && rm -rf runs
  O="${OUT:-/tmp/out}"; mkdir -p "$O"
  # LST is r = d by default (§7.7); the nine runs took 9 min 47 s side by side (§7.8)
  RUNS=${RUNS:-"x0:xsum:--seed 0|x1:xsum:--seed 1|x2:xsum:--seed 2|t0:sums:--seed 0|t1:sums:--seed 1|t2:sums:--seed 2|c0:compare:--seed 0|c1:compare:--seed 1|c2:compare:--seed 2"}
  IFS='|' read -ra runs <<< "$RUNS"
  left=${RUN_TIMEOUT:-900}; ngpu=$(nvidia-smi -L 2>/dev/null | wc -l); i=0
  for run in "${runs[@]}"; do  # spread over the GPUs there are (one on nvidia-h200)
    export CUDA_VISIBLE_DEVICES=$((i % (ngpu > 0 ? ngpu : 1))); i=$((i + 1))
    name=${run%%:*}; rest=${run#*:}; data=${rest%%:*}; targs="${rest#*:} ${TRAIN_ARGS:-}"
    mkdir -p $W/run_$name; budgets=""; eargs=""
    if [ "$data" = xsum ]; then file=$W/data/xsum_1000.jsonl; [ "$name" = x0 ] && budgets="--budgets 0.2,0.35,0.5"
      [[ " ${WIRE_RUNS:-x1} " == *" $name "* ]] && budgets="$budgets ${WIRE_ARGS:-}"  # e.g. --wire-dtypes fp16,int8,int4 (issue 22)
    else file=$W/data/$data.jsonl; eargs="--sweep-limit 100"; [ -f $file ] || python3 -m lab.tasks $data --out $file; fi
    setsid nohup bash -c "timeout $left ${TABLE_CPUS:+taskset -c $TABLE_CPUS} python3 benchmarks/spa_xsum.py --backbone /root/smollm2 --data $file \
      --out $W/run_$name --device cuda $budgets --train-args '$targs' --eval-args '$eargs' \
      > $W/run_$name/log 2>&1; echo EXIT \$? >> $W/run_$name/log" > /dev/null 2>&1 < /dev/null &
  done
  export CUDA_VISIBLE_DEVICES=$((i % (ngpu > 0 ? ngpu : 1)))
  if [ -n "${EXTRA:-}" ]; then  # one more job beside the runs (e.g. issue 19's blend table), from /root/repo
    printf '%s\n' "$EXTRA" > $W/extra.sh
    setsid nohup bash -c "OUT=$O timeout $left bash $W/extra.sh > $W/extra.log 2>&1; echo EXIT \$? >> $W/extra.log" \
      > /dev/null 2>&1 < /dev/null &
  fi
  timeout $((deadline - (SECONDS - start) - 30)) ${TABLE_CPUS:+taskset -c $TABLE_CPUS} python3 benchmarks/persona_quality.py --backbone /root/smollm2 \
    --device cuda --json "$O/persona.json" ${PERSONA_ARGS:---target-m 0.7 --calib-prompts 0 --rollout-prompts 32} \
    2>&1 | grep -v Warning > $W/persona.log; cp $W/persona.log "$O/"
  for f in $W/run_*/log ${EXTRA:+$W/extra.log}; do
    while [ $((SECONDS - start)) -lt $((deadline - 15)) ] && ! grep -q "^EXIT" $f; do sleep 3; done
  done
  for d in $W/run_*; do cp $d/bundle/bundle.json $d/bundle_record.json 2>/dev/null; echo "== $d"; tail -c 600 $d/log; done
  [ -n "${EXTRA:-}" ] && cp $W/extra.log "$O/" && echo "== extra" && tail -c 3000 $W/extra.log
  (cd $W && tar czf "$O/runs.tgz" run_*/*.json run_*/*.png run_*/log persona.log 2>/dev/null)
  for t in xsum:x sums:t compare:c; do
    ds=$(for d in $W/run_${t#*:}?; do [ -f $d/eval.json ] && echo $d; done)
    [ -n "$ds" ] && python3 benchmarks/seed_table.py $ds --title "${t%%:*}, SmolLM2-135M-Instruct" 2>&1
  done
  [ -f $W/run_r1/eval.json ] && python3 benchmarks/seed_table.py $W/run_r1 --title "XSum seed 0, LST at r = 1" 2>&1 | head -12
  [ -f $W/run_x0/budget.json ] && python3 benchmarks/seed_table.py $W/run_x0 --title "XSum seed 0 with the M budget" 2>&1 | tail -12
  grep -A4 "^ada: mean\|^bo: mean" $W/persona.log; echo "table: $((SECONDS - start)) s"; true ;;
wait)  # polls every run's log for up to S seconds (default 560), then brings back what there is
  end=$((SECONDS + ${2:-560}))
  for f in $W/run_*/log $W/log; do
    [ -f $f ] || continue
    while [ $SECONDS -lt $end ] && ! grep -q "^EXIT" $f; do sleep 5; done
  done
  mkdir -p "${OUT:-/tmp/out}"
  for d in $W/run_*; do  # one tarball: every run's JSON results, logs and bundle record
    tail -c 2500 $d/log; cp $d/bundle/bundle.json $d/bundle_record.json 2>/dev/null
  done
  [ -f $W/log ] && tail -c 9000 $W/log && cp $W/run/*.json $W/run/*.png $W/log "${OUT:-/tmp/out}/" 2>/dev/null
  (cd $W && tar czf "${OUT:-/tmp/out}/runs.tgz" run_*/*.json run_*/*.png run_*/log 2>/dev/null); true ;;
*) echo "usage: $0 stage1|stage2|issue17|table|wait [seconds]"; exit 2 ;;
esac
