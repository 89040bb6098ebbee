#!/usr/bin/env bash
# Session 12, call 10 on nvidia-h200 (~3 min): the GPU tests on the session's final engine code (fp8 decodes through
# the pair kernels with its own GEMM1 tile; nothing else changed since the eleventh session).
# Usage (device tool, repo root): bash scripts/gpu/session12_call10.sh
set -u
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_quant_gpu.py > $R/pytest_quant_gpu.txt 2>&1
echo "--- quant gpu rc $?"; tail -2 $R/pytest_quant_gpu.txt
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py -k "pdl" > $R/pytest_gpu_pdl.txt 2>&1
echo "--- gpu pdl rc $?"; tail -2 $R/pytest_gpu_pdl.txt
tar czf $OUT/r.tgz -C $OUT r
