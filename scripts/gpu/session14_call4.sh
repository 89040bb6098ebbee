#!/usr/bin/env bash
# Session 14, call 4 on nvidia-h200 (warm, ~25 s): the byte-tile GPU tests that call 3's 100 s timeout cut short
# (kernel compiles), run to the end.
# Usage (device tool, repo root): bash scripts/gpu/session14_call4.sh
export PYTHONPATH=$PWD; mkdir -p $OUT/r
timeout 250 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py tests/test_quant_kernels.py -k "byte" \
  > $OUT/r/pytest_gpu_call4.txt 2>&1; echo "rc $?"; tail -3 $OUT/r/pytest_gpu_call4.txt
