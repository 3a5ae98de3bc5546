# two blend_quality runs side by side: the pool with the `frames` member (cores 0-1) and the old
# six-member pool (cores 2-3); each blends the default and the capped recipe with 3 seeds
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES/old
run() {  # $1 cores $2 pool $3 out dir $4.. extra
  c=$1; p=$2; o=$3; shift 3
  timeout 800 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool $p --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --deadline 700 --seeds 3 --variant cap:coef_cap=1.0 "$@" \
    --json $o/blend_quality.json 2>&1 | grep -v Warn > $o/blend_quality.log; echo EXIT $? >> $o/blend_quality.log
  cp $p/pool.json $o/ 2>/dev/null; true
}
run 0,1 /root/spa/pool-frames $RES &
run 2,3 /root/spa/pool-six $RES/old --pool-styles news,letter,captain,brief,cheer,radio &
wait
