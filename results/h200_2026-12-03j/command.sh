# the six-member pool: default (16 examples) vs 48 examples, 3 seeds; bo on cores 0-1, cy on 2-3
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES/bo $RES/cy
run() {  # $1 cores $2 pool $3 out dir $4.. extra
  c=$1; p=$2; o=$3; shift 3
  timeout 800 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool $p --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 3 --pool-styles news,letter,captain,brief,cheer,radio "$@" \
    --json $o/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $o/blend_quality.log; echo EXIT $? >> $o/blend_quality.log
}
run 0,1 /root/spa/pool-six-a $RES/bo --users bo --variant ex48:max_examples=48 &
run 2,3 /root/spa/pool-six-b $RES/cy --users cy --variant ex48:max_examples=48 &
wait
