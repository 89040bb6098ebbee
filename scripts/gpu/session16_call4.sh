#!/usr/bin/env bash
# Session 16, call 4 on nvidia-h200 (~4 min): int4 GEMM2 tiles with chains of four words, wide tiles added to the
# sweep (GEMM1's wide tile won in call 2), and GEMM1 at T = 2 (speculative verification, two-sequence decode).
# Usage (device tool, repo root): bash scripts/gpu/session16_call4.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem,power.limit --format=csv > $R/gpu.txt 2>&1
timeout 200 python3 scripts/pair_tiles.py --shapes mixtral-8x7b qwen3-30b-a3b olmoe --bits 4 --tokens 1 \
  --chains 4 --out $R/t1 > $R/pair_tiles_t1.txt 2>&1
echo "--- tiles T1 rc $?"; grep -A12 "^# best" $R/pair_tiles_t1.txt
timeout 150 python3 scripts/pair_tiles.py --shapes mixtral-8x7b qwen3-30b-a3b --bits 4 --tokens 2 \
  --chains 4 --out $R/t2 > $R/pair_tiles_t2.txt 2>&1
echo "--- tiles T2 rc $?"; grep -A12 "^# best" $R/pair_tiles_t2.txt
tar czf $OUT/r.tgz -C $OUT r
