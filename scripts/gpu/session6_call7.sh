#!/usr/bin/env bash
# Session 6, call 7 on nvidia-h200 (~4 min): every GPU test with the final code (the pair kernels as the int4 / int8
# decode default): tests/test_gpu.py (graphed == eager greedy tokens for every family, kernels at real shapes),
# tests/test_quant_gpu.py, tests/test_speculative.py -m gpu.
# Usage (device tool, repo root): bash scripts/gpu/session6_call7.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 420 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_quant_gpu.py \
  tests/test_speculative.py > $R/gpu_tests.log 2>&1; echo "rc=$?" >> $R/gpu_tests.log
tail -8 $R/gpu_tests.log
