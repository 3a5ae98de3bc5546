# issue 19, stop 34, round 9 (cut to fit the session's last ~300 s of device time; a first try with two processes per user and 3 seeds was taken back by the device): the candidate default — 60 coefficient steps, l2 0.01, kept at the turn's best step, stopped 15 steps after it — at seed 0 (round 8's turn60 without patience) and fresh seeds 6, 7; one process per user
cd /root/repo && export PYTHONPATH=/root/repo:/root/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 && RES=/root/res && mkdir -p $RES
run() {  # $1 cores $2 user $3 tag $4.. extra
  c=$1; u=$2; t=$3; shift 3; mkdir -p $RES/$t/$u
  timeout 560 taskset -c $c python3 benchmarks/blend_quality.py --device cuda --backbone /root/smollm2 \
    --xsum /root/spa/data/xsum_1000.jsonl --corpus /root/spa/data/corpus_en.txt --cores 2 \
    --pool /root/spa/pool-$t-$u --pool-records 400 --train-records 300 --eval 128 \
    --max-new 48 --epochs 8 --seeds 1 --users $u "$@" \
    --json $RES/$t/$u/blend_quality.json 2>&1 | grep --line-buffered -v Warn > $RES/$t/$u/blend_quality.log; echo EXIT $? >> $RES/$t/$u/blend_quality.log
}
A="--variant turn:steps=60,l2=0.01,coef_keep=turn,coef_patience=15 --variant turns6:steps=60,l2=0.01,coef_keep=turn,coef_patience=15,seed=6 --variant turns7:steps=60,l2=0.01,coef_keep=turn,coef_patience=15,seed=7"
run 2,3 ada a $A & run 4,5 bo a $A & run 6,7 cy a $A &

wait
