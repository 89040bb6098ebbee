#!/usr/bin/env bash
# Session 35, call 7 on nvidia-h200 (~3 min): the final code (GEMM kernels moved to fused_moe_gemms.py, the TMA guards,
# the tests asserting the descriptors were built): the fused-MoE and shared-fusion GPU tests, then bench.py
# DeepSeek-V2-Lite and OLMoE bs 64 once each.
# Usage (device tool, repo root): bash scripts/gpu/session35_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 200 python3 -m pytest -q tests/test_fused_moe.py tests/test_shared_fusion.py > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $? t=$SECONDS: $(tail -1 $R/pytest_gpu.txt)"
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for m in deepseek-v2-lite olmoe; do
  [ $SECONDS -gt 300 ] && { echo "$m: skipped (time)"; continue; }
  timeout 60 python3 bench.py --model $m $C --bs 64 --json $R/bench_$m.json > $R/bench_$m.txt 2>&1
  echo "--- $m rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_$m.txt | tr -s ' ')"
done
tar czf $OUT/r.tgz -C $OUT r
