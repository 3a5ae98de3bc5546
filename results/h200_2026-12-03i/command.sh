# A: the six-member pool, default vs the tuning's loss focused on the backbone's misses; B: the
# pool with `frames`, focused (with and without the capped coefficient loss); 3 seeds each
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES/six $RES/frames
run() {  # $1 cores $2 pool $3 out dir $4.. extra
  c=$1; p=$2; o=$3; shift 3
  timeout 800 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool $p --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --deadline 700 --seeds 3 "$@" \
    --json $o/blend_quality.json 2>&1 | grep -v Warn > $o/blend_quality.log; echo EXIT $? >> $o/blend_quality.log
  cp $p/pool.json $o/ 2>/dev/null; true
}
run 0,1 /root/spa/pool-six $RES/six --pool-styles news,letter,captain,brief,cheer,radio \
  --variant focus4:tune_focus=4 --variant ex48:max_examples=48 &
run 2,3 /root/spa/pool-frames $RES/frames --variant ex48:max_examples=48 --variant ex48cap:max_examples=48,coef_cap=1.0 &
wait
