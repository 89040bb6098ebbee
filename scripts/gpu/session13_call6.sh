#!/usr/bin/env bash
# Session 13, call 6 on nvidia-h200 (~5 min): Mixtral's int8 MoE at bs 16 ran 2x slower than int4 in call 5 (44.2 vs
# 26.5 ms a step): tiles for the int8 tensor-core path (scripts/tune_fused_moe_quant.py --formats int8, written as
# int8_w8a16 tables), then bench.py Mixtral bs 16 int8 again with them.
# Usage (device tool, repo root): bash scripts/gpu/session13_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 230 python3 scripts/tune_fused_moe_quant.py --formats int8 --presets mixtral --buckets 16 64 --workers 12 \
  --write --out $R/tune > $R/tune.txt 2>&1
echo "--- tune rc $?"; grep -E "^# (best|precompiled|[0-9]+ rows)|^#   " $R/tune.txt | cut -c1-200
W="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
timeout 120 python3 bench.py --model mixtral $W --bs 16 --quant int8 --json $R/mixtral16_int8.json > $R/mixtral16_int8.txt 2>&1
echo "mixtral16_int8: $(grep -h 'minimoe bs' $R/mixtral16_int8.txt)"
cp minimoe/kernels/configs/*int8_w8a16* $R/tune/ 2>/dev/null
tar czf $OUT/r.tgz -C $OUT r
