# the six-member pool: default vs the tuning keeping the blend's distribution at copied positions; 3 seeds; one user per 2 cores
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES/ada $RES/bo $RES/cy
run() {  # $1 cores $2 user $3.. extra
  c=$1; u=$2; shift 2
  timeout 500 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool /root/spa/pool-six-$u --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 3 --pool-styles news,letter,captain,brief,cheer,radio --users $u "$@" \
    --json $RES/$u/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $RES/$u/blend_quality.log; echo EXIT $? >> $RES/$u/blend_quality.log
}
V="--variant keep20:tune_copies=keep,tune_steps=20"
run 0,1 ada $V & run 2,3 bo $V & run 4,5 cy $V &
wait
