#!/usr/bin/env bash
# Session 28, call 5 on nvidia-h200 (~7 min): the final code on the GPU.
#  1. the changed kernels' test files on the GPU (decode attention with BIG_GRID_STAGES and its rewritten rule test; the
#     alignment and the router fold after their files were split);
#  2. every `-m gpu` test (graphed == eager greedy tokens on every tiny family, among others).
# Usage (device tool, repo root): bash scripts/gpu/session28_call5.sh
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD TQDM_DISABLE=1
R=$OUT/r; mkdir -p $R
timeout 170 python3 -m pytest -q -p no:cacheprovider tests/test_decode_attention.py tests/test_moe_align.py \
  tests/test_gate_splitk.py tests/test_pdl_knob.py > $R/pytest_changed.txt 2>&1
echo "--- pytest changed rc $?"; tail -1 $R/pytest_changed.txt; grep -E "^(FAILED|E  )" $R/pytest_changed.txt | head
timeout 290 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/ > $R/pytest_gpu.txt 2>&1
echo "--- pytest gpu rc $?"; tail -1 $R/pytest_gpu.txt; grep -E "^FAILED" $R/pytest_gpu.txt | head
tar czf $OUT/r.tgz -C $OUT r
