# issue 19, stop 37: copy 1 with fire rate 0.3 and 0.2 (M back down), 3 seeds each
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES
lscpu | grep -i "thread\|core\|socket\|model name" > $RES/lscpu.txt 2>&1
run() {  # $1 cores $2 user $3 tag $4.. extra
  c=$1; u=$2; t=$3; shift 3; mkdir -p $RES/$t/$u
  timeout 560 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool /root/spa/pool-$t-$u --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 3 --users $u "$@" \
    --json $RES/$t/$u/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $RES/$t/$u/blend_quality.log; echo EXIT $? >> $RES/$t/$u/blend_quality.log
}
A="--variant c1f30:copy=1,fire_rate=0.3"
B="--variant c1f20:copy=1,fire_rate=0.2"
run 2,3 ada a $A & run 4,5 ada b $B & run 6,7 bo a $A & run 8,9 bo b $B & run 10,11 cy a $A & run 12,13 cy b $B &
wait
