#!/usr/bin/env bash
# Session 26, call 5 on nvidia-h200 (~2 min; ~4 device minutes were left): the review's fixes on the GPU (one
# dequantize of wkv_b a step, tall_split leaving no share empty, w_uv / lse checks): the touched test files in bf16.
# Usage (device tool, repo root): bash scripts/gpu/session26_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_skinny_gemm.py tests/test_mla_absorb.py \
  -k "tall or absorb or merge_uv" > $R/pytest.txt 2>&1
echo "--- pytest rc $?"; tail -1 $R/pytest.txt; grep -E "^(FAILED|E )" $R/pytest.txt | head
tar czf $OUT/r.tgz -C $OUT r
