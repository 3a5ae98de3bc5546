# issue 19, stop 32, round 5: coefficient-fit knobs for bo (20 steps; 30 steps with l2 0.01; 64 candidates), 1 seed (the default seeds agree within 0.07)
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES
run() {  # $1 cores $2 user $3 tag $4.. extra
  c=$1; u=$2; t=$3; shift 3; mkdir -p $RES/$t/$u
  timeout 540 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool /root/spa/pool-$t-$u --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 1 --users $u "$@" \
    --json $RES/$t/$u/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $RES/$t/$u/blend_quality.log; echo EXIT $? >> $RES/$t/$u/blend_quality.log
}
A="--variant c20:steps=20 --variant c30l2:steps=30,l2=0.01 --variant cand64:candidates=64"
B="--variant cap:coef_cap=1.0 --variant c30:steps=30"
run 2,3 ada main $A & run 4,5 bo main $A & run 6,7 cy main $A &

wait
