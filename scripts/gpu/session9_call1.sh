#!/usr/bin/env bash
# Session 9, call 1 on nvidia-h200 (~7 min): register prefetch in the pair decode kernels (the loads of step k + 1
# or k + 2 issued before step k's arithmetic; config key "prefetch").
#  1. scripts/pair_tiles.py --bits 4 8 --tokens 1: each GEMM alone, every tile checked against the loop oracle
#     first, today's default tiles timed in the same run (Mixtral / Qwen3-30B-A3B / OLMoE, and the dense D x D);
#  2. scripts/profile_step.py Mixtral-8x7B int4 bs 1: the graphed step's kernels (where the non-expert time goes).
# Usage (device tool, repo root): bash scripts/gpu/session9_call1.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
timeout 400 python3 scripts/pair_tiles.py --bits 4 8 --tokens 1 --out $R/tiles > $R/tiles.log 2>&1
echo "--- tiles rc $?"
timeout 120 python3 scripts/profile_step.py --model mixtral --bs 1 --steps 10 --quant int4 --json $R/prof_mixtral_int4.json > $R/prof_mixtral_int4.txt 2>&1
echo "--- profile rc $?"
tar czf $OUT/r.tgz -C $OUT r
sed -n '/^# best tile/,$p' $R/tiles.log
grep -E "ERROR|FAIL" $R/tiles.log | head -5
head -30 $R/prof_mixtral_int4.txt | cut -c1-120
