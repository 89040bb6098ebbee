#!/usr/bin/env bash
# Session 15, call 4 on nvidia-h200 (~5 min, the session's last device minutes):
#  1. scripts/biased_crossover.py: one Mixtral int4 layer at 16-4096 tokens, biased "asm" on every tile vs "off"
#     (call 3: TTFT at bs 64 2.43 s with the biased path on the 128-row prefill tiles);
#  2. bench.py Mixtral int4 bs 64 and 16 with fused_moe_quant.BIASED_MAX_M = 64 (prefill tiles off the biased path).
# Usage (device tool, repo root): bash scripts/gpu/session15_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 150 python3 scripts/biased_crossover.py --tokens 16 64 256 1024 4096 --json $R/crossover.json \
  > $R/crossover.txt 2>&1
echo "--- crossover rc $?"; cat $R/crossover.txt | tail -8
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for bs in 64 16; do
  timeout 70 python3 bench.py --model mixtral $W --bs $bs --quant int4 --json $R/mixtral${bs}_int4.json \
    > $R/mixtral${bs}_int4.txt 2>&1
  echo "mixtral bs$bs int4: $(grep -h 'minimoe bs' $R/mixtral${bs}_int4.txt)"
done
tar czf $OUT/r.tgz -C $OUT r
