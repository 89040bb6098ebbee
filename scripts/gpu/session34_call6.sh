#!/usr/bin/env bash
# Session 34, call 6 on nvidia-h200 (~5 min): the final defaults (fused_moe_small.GEMM2_AFTER_GEMM1_END on): bench.py
# Qwen3-30B-A3B bs 1 (twice), OLMoE bs 1, then the `-m gpu` graph tests (graphed == eager on every tiny family, the
# attention's graph replays) and the boundary test.
# Usage (device tool, repo root): bash scripts/gpu/session34_call6.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 PYTHONPATH=$PWD
R=$OUT/r; mkdir -p $R
nvidia-smi --query-gpu=name,clocks.max.sm,clocks.max.mem --format=csv > $R/run_info.txt 2>&1
C="--fused --warmup 1 --iters 3 --input-len 128 --output-len 128"
for mb in "qwen3 1 a" "olmoe 1 a" "qwen3 1 b"; do
  set -- $mb
  timeout 100 python3 bench.py --model $1 $C --bs $2 --json $R/bench_$1_bs$2_$3.json > $R/bench_$1_bs$2_$3.txt 2>&1
  echo "--- $1 bs$2 $3 rc $? t=$SECONDS: $(grep -h 'minimoe bs' $R/bench_$1_bs$2_$3.txt | tr -s ' ')"
done
timeout $((560 - SECONDS)) python3 -m pytest -q -m gpu tests/test_gpu.py tests/test_decode_attention.py \
  tests/test_moe_boundary_gpu.py -k "graph or after_gemm1" > $R/pytest_gpu.txt 2>&1
echo "--- pytest -m gpu (graphs) rc $? t=$SECONDS"; tail -3 $R/pytest_gpu.txt
tar czf $OUT/r.tgz -C $OUT r
