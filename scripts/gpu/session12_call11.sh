#!/usr/bin/env bash
# Session 12, call 11 on nvidia-h200 (~2 min): the quantized GPU tests on the session's final engine code (after the
# review's fallbacks and the shared PTX epilogue string).
# Usage (device tool, repo root): bash scripts/gpu/session12_call11.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py > $R/pytest_quant_gpu.txt 2>&1
echo "--- quant gpu rc $?"; tail -2 $R/pytest_quant_gpu.txt
