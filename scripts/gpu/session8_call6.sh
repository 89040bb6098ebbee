#!/usr/bin/env bash
# Session 8, call 6 on nvidia-h200 (~4 min): the session's final code after the clean-up (one router kernel with
# NORM / ROUTE switches instead of two, the split-K GEMM2 removed): GPU tests (the fused norm + gate kernel, graphed
# == eager greedy tokens for every family), then bench.py batch 1 (128 / 128) OLMoE base (baseline_s7.tgz) and new,
# DeepSeek-V2-Lite new (its base figure: call 5).
# Usage (device tool, repo root, carry baseline_s7.tgz): bash scripts/gpu/session8_call6.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R; ROOT=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $R/gpu.txt
mkdir -p /tmp/base && tar xzf baseline_s7.tgz -C /tmp/base
timeout 110 python3 -m pytest -q tests/test_gpu.py tests/test_gate_splitk.py -k "gpu or graph or norm_gate or eager" > $R/pytest_gpu.txt 2>&1
echo "--- pytest rc $?"; tail -2 $R/pytest_gpu.txt
C="--fused --bs 1 --warmup 1 --iters 3 --input-len 128 --output-len 128"
run() {  # label dir model
  (cd $2 && PYTHONPATH=$2 timeout 60 python3 bench.py --model $3 $C > $R/$3_$1.txt 2>&1)
  echo "$3 $1 rc $?: $(grep 'minimoe bs' $R/$3_$1.txt)"
}
run base /tmp/base olmoe
run new $ROOT olmoe
run new $ROOT deepseek-v2-lite
