#!/usr/bin/env bash
# Forty-eighth session (~7 min on an H200): issue 16's acceptance figures in one process per model on one machine
# with today's code: the README's five models x bs 1 / 16 / 64 (128 / 128), then the three borderline cells again
# (Qwen3-30B-A3B bs 1 >= 400, DeepSeek-V2-Lite bs 64 >= 6,800, OLMoE bs 64 >= 15,000) in fresh processes.
# Exits 3 at once on any GPU but an H200 (the targets are H200 figures).
# Usage (device tool, repo root): bash scripts/gpu/pending_h200_s48.sh
set -u
. scripts/gpu/h200_only.sh
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 150 python3 bench.py --model $m $C --bs 1 16 64 --json $R/bench_${m}.json > $R/bench_${m}.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
for i in 2 3; do
  for mb in "qwen3 1" "deepseek-v2-lite 64" "olmoe 64"; do
    set -- $mb
    timeout 60 python3 bench.py --model $1 $C --bs $2 --json $R/again_${1}_bs${2}_$i.json > $R/again_${1}_bs${2}_$i.txt 2>&1
    echo "--- again $1 bs $2 #$i rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/again_${1}_bs${2}_$i.txt | tr -s ' '
    tar czf $OUT/r.tgz -C $OUT r
    [ $SECONDS -gt 540 ] && exit 0
  done
done
