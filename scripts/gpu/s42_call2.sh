#!/usr/bin/env bash
# Forty-second session, call 2 (~7 min): cuBLAS split-K by hand for the dense projections (scripts/bench_splitk_cublas.py:
# is there time to win at bs 64?), then the README's five models x bs 1 / 16 / 64 with the current code (issue 16 item 4;
# the code is the forty-first session's, 0d2871c's kernels).
# Usage (device tool, repo root, nvidia-h200): bash scripts/gpu/s42_call2.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 90 python3 scripts/bench_splitk_cublas.py --json $R/splitk.json > $R/splitk.txt 2>&1
echo "--- splitk rc $? t=$SECONDS"; cat $R/splitk.txt
tar czf $OUT/r.tgz -C $OUT r
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 1 16 64"
for m in olmoe qwen3 deepseek-v2-lite qwen1.5-moe mixtral; do
  timeout 150 python3 bench.py --model $m $C --json $R/bench_${m}.json > $R/bench_${m}.txt 2>&1
  echo "--- $m rc $? t=$SECONDS"; grep -h 'minimoe bs' $R/bench_${m}.txt | tr -s ' '
  tar czf $OUT/r.tgz -C $OUT r
done
