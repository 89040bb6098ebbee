#!/usr/bin/env bash
# Session 13, call 7 on nvidia-h200 (~6 min, the session's last device minutes): int8 and int4 tiles for Mixtral's
# tensor-core MoE path at 8-64 tokens (scripts/tune_fused_moe_quant.py), then bench.py Mixtral bs 16 int4 / int8 with
# the tables (call 5 without them: int4 26.49 ms, int8 44.16 ms a step; bf16 22.09).
# Usage (device tool, repo root): bash scripts/gpu/session13_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 scripts/tune_fused_moe_quant.py --formats int4 int8 --presets mixtral --buckets 8 16 32 64 \
  --workers 12 --write --out $R/tune > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|precompiled|[0-9]+ rows)" $R/tune.txt | cut -c1-150
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for q in int4 int8; do
  [ $SECONDS -gt 300 ] && { echo "mixtral $q: skipped (time)"; continue; }
  timeout 90 python3 bench.py --model mixtral $W --bs 16 --quant $q --json $R/mixtral16_$q.json > $R/mixtral16_$q.txt 2>&1
  echo "mixtral16_$q: $(grep -h 'minimoe bs' $R/mixtral16_$q.txt)"
done
tar czf $OUT/r.tgz -C $OUT r
