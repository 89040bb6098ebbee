#!/usr/bin/env bash
# s21 call 5 (the budget's last minutes): bench.py bs 64 on OLMoE and DeepSeek-V2-Lite with the combine at 256 x 2 warps.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128 --bs 64"
for m in olmoe deepseek-v2-lite; do
  timeout 100 python3 bench.py --model $m $W --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
  echo "bench $m: $(grep -h 'minimoe bs' $R/bench_$m.txt)"
done
