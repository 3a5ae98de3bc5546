# issue 19, stop 32, round 3: the gate on both labels as the default (routing with it), beside the mixture gate and lower fire rates; 3 seeds
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES
run() {  # $1 cores $2 user $3 tag $4.. extra
  c=$1; u=$2; t=$3; shift 3; mkdir -p $RES/$t/$u
  timeout 540 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool /root/spa/pool-$t-$u --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 3 --users $u "$@" \
    --json $RES/$t/$u/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $RES/$t/$u/blend_quality.log; echo EXIT $? >> $RES/$t/$u/blend_quality.log
}
A="--variant mix:gate_labels=mixture"
B="--variant r3:fire_rate=0.3 --variant r2:fire_rate=0.2"
run 2,3 ada main $A & run 4,5 bo main $A & run 6,7 cy main $A &
run 8,9 ada explore $B & run 10,11 bo explore $B & run 12,13 cy explore $B &
wait
